"""README's Python example runs as written (in a fresh folder, as a user would)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path):
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its marked Python example"
    result = subprocess.run([sys.executable, "-c", match.group(1)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and "smaller weights" in lines[0] and "ONNX Runtime top-1" in lines[1]
    for name in ("model.qdq.onnx", "report.md", "model.a8.onnx", "model.a8.plan.json"):
        assert (tmp_path / "runs" / "api-demo" / name).is_file(), name
