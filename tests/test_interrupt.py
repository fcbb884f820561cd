"""An interrupted export leaves the old file or none: never a partial one, never a temp file."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import onnx
import pytest


def _start(out):
    return subprocess.Popen([sys.executable, "-c", "from hawq_onnx.cli import main; main()", "export",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("delay", [0.5, 2.5, 4.5])
def test_interrupted_export(tmp_path, sig, delay):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"old contents")
    proc = _start(out)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["model.onnx"], leftovers  # no temporary file left behind
    data = out.read_bytes()
    if proc.returncode == 0:  # finished before the signal: a complete model
        onnx.checker.check_model(onnx.load_from_string(data))
    else:
        assert data == b"old contents"
        assert "Traceback" not in err and err.strip().count("\n") == 0
