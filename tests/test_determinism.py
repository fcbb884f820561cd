"""Same inputs and seed, same bytes: plan.json from `allocate`, model.qdq.onnx from `export`.

The second run of each goes through another spelling of its input paths (and, for the export,
another process with another hash seed), so nothing that varies between runs (paths, set or
dict order, timestamps) can leak into the files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hawq_onnx.cli import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
from seed_artifacts import copy_artifacts  # noqa: E402


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return copy_artifacts(tmp_path_factory.mktemp("determinism") / "a")


def _invoke(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output


def test_allocate_gives_the_same_plan_bytes(art, tmp_path):
    moved = tmp_path / "elsewhere" / "s.json"
    moved.parent.mkdir()
    shutil.copyfile(art.sensitivity, moved)
    common = ["--budget", "9x", "--w-bits", "2,3,4,8", "--a-bits", "4,8", "--tie", "block_conv1,block_conv2"]
    _invoke(["allocate", "--sensitivity", str(art.sensitivity), *common, "--out", str(tmp_path / "p1.json")])
    _invoke(["allocate", "--sensitivity", os.path.relpath(moved), *common, "--out", str(tmp_path / "p2.json")])
    first = (tmp_path / "p1.json").read_bytes()
    assert first == (tmp_path / "p2.json").read_bytes()
    # and another budget gives another plan: the comparison can fail
    _invoke(["allocate", "--sensitivity", str(art.sensitivity), *common[2:], "--budget", "12x",
             "--out", str(tmp_path / "p3.json")])
    assert (tmp_path / "p3.json").read_bytes() != first


def test_quantized_export_gives_the_same_model_bytes(art, tmp_path):
    if art.qdq_onnx is None:
        pytest.skip("the quantized exporter (hawq_onnx.onnx_export.qdq) is not there yet")
    moved = tmp_path / "elsewhere" / "q.pt"
    moved.parent.mkdir()
    shutil.copyfile(art.quantized, moved)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    child = subprocess.Popen([sys.executable, "-c", "from hawq_onnx.cli import main; main()", "export",
                              "--quantized-pt", str(moved), "--out", str(tmp_path / "q2.onnx")],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _invoke(["export", "--quantized-pt", str(art.quantized), "--out", str(tmp_path / "q1.onnx")])
    _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    first = (tmp_path / "q1.onnx").read_bytes()
    assert first == (tmp_path / "q2.onnx").read_bytes()
