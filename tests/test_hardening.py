"""Runs that end or collide: user code cannot end a run silently, bad arguments fail before any
work, two runs cannot mix their results in one folder, killed runs leave nothing behind that a
later run keeps, and equal inputs give equal bytes."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from hawq_onnx.errors import HawqError
from hawq_onnx.io.atomic import write_text
from hawq_onnx.io.folder_lock import LOCK_NAME, locked_folder

CLI = [sys.executable, "-c", "from hawq_onnx.cli import main; main()"]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def one_line_error(r: subprocess.CompletedProcess, code: int = 2) -> str:
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    return lines[0]


USER_CODE = textwrap.dedent("""
    import sys
    import torch.nn as nn

    sys_exit_at_import = {at_import}
    if sys_exit_at_import:
        sys.exit(0)


    class ExitsInForward(nn.Module):
        input_shape = (1, 8, 8)

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            sys.exit(0)


    def exits_in_factory():
        sys.exit(3)


    def exits_in_forward():
        return ExitsInForward()
""")


@pytest.mark.parametrize("at_import, factory, says", [
    (True, "exits_in_factory", "called sys.exit(0)"),       # at import
    (False, "exits_in_factory", "called sys.exit(3)"),      # in the factory
    (False, "exits_in_forward", "called sys.exit(0)"),      # in forward, during the run
])
def test_user_code_cannot_end_the_run_silently(tmp_path, at_import, factory, says):
    (tmp_path / "m.py").write_text(USER_CODE.format(at_import=at_import))
    r = run_cli("export", "--model", f"{tmp_path / 'm.py'}:{factory}", "--out", str(tmp_path / "m.onnx"))
    assert says in one_line_error(r)
    assert not (tmp_path / "m.onnx").exists()


def test_an_overflowing_input_shape_is_bad_input(tmp_path):
    r = run_cli("export", "--input-shape", "1,99999999999,99999999999", "--out", str(tmp_path / "m.onnx"))
    assert "one sample would hold" in one_line_error(r)


def test_a_plain_pickle_checkpoint_gives_one_line(tmp_path):
    """torch warns (two lines) about a pickle protocol it did not write before refusing it."""
    import pickle

    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"w": [1, 2]}, protocol=4))
    r = run_cli("export", "--weights", str(raw), "--out", str(tmp_path / "m.onnx"))
    assert "not a readable torch checkpoint" in one_line_error(r)
    assert r.stderr.count("\n") == 1  # not even a warning before it


def test_bad_arguments_fail_before_any_work(tmp_path):
    out = tmp_path / "q"
    start = time.perf_counter()
    r = run_cli("quantize", "--budget", "banana", "--out", str(out))
    assert "budget 'banana'" in one_line_error(r)
    assert not out.exists() and time.perf_counter() - start < 60
    r = run_cli("quantize", "--lr", "-1", "--out", str(out))
    assert "--lr and --batch-size must be positive" in one_line_error(r)
    assert not out.exists()
    import hawq_onnx as hq

    for bad, says in ((hq.AllocateOptions(w_bits=(5,)), "weight bits 5 is not one of"),
                      (hq.AllocateOptions(a_bits=()), "at least one weight bit width and one activation")):
        with pytest.raises(HawqError, match=says):
            hq.quantize(out=out, options=hq.QuantizeOptions(allocate=bad))
        assert not out.exists()


def test_a_second_run_into_a_locked_folder_fails_at_once(tmp_path):
    import hawq_onnx as hq

    tmp_path.mkdir(exist_ok=True)
    with locked_folder(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == str(os.getpid())
        with pytest.raises(HawqError, match="another hawq-onnx run .* is writing to"):
            hq.quantize(out=tmp_path, options=hq.QuantizeOptions(validate=hq.ValidateOptions(runs=0)))
        assert not (tmp_path / "sensitivity.json").exists()
        r = run_cli("quantize", "--out", str(tmp_path), "--runs", "0")
        assert f"pid {os.getpid()}" in one_line_error(r)
    with locked_folder(tmp_path):  # released when the holder's block ends
        pass


def test_the_lock_dies_with_its_holder(tmp_path):
    """A killed run (SIGKILL: no cleanup code runs) never leaves the folder locked."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from hawq_onnx.io.folder_lock import locked_folder
        with locked_folder({str(tmp_path)!r}):
            print("locked", flush=True)
            time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR)
    with pytest.raises(BlockingIOError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.kill()
    holder.wait()
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)


def test_temporaries_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from hawq_onnx.io.atomic import _HOST

    stale = tmp_path / f".plan.json.{_HOST}-{dead.pid}.hawq-abc123.tmp"
    live = tmp_path / f".plan.json.{_HOST}-{os.getpid()}.hawq-def456.tmp"
    other_host = tmp_path / f".plan.json.elsewhere{_HOST}-{dead.pid}.hawq-abc123.tmp"  # its pid means nothing here
    foreign = tmp_path / ".notes.tmp"
    for p in (stale, live, other_host, foreign):
        p.write_text("x")
    write_text(tmp_path / "plan.json", "{}")
    assert not stale.exists() and live.exists() and other_host.exists() and foreign.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")].count(live.name) == 1


def test_equal_checkpoints_are_equal_bytes(tmp_path):
    from hawq_onnx.io.plan import Plan
    from hawq_onnx.io.quantized_checkpoint import QuantizedCheckpoint

    ckpt = QuantizedCheckpoint("m", "f" * 16, {"w": torch.arange(6.0)}, Plan("m", "f" * 16, []))
    a, b = ckpt.save(tmp_path / "a.pt"), ckpt.save(tmp_path / "sub" / "b.pt")
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("command", [
    "analyze --data npz:{d}/data.npz --out {d}/data.npz",
    "analyze --model {d}/m.py:make --input-shape 1,8,8 --data digits --out {d}/m.py",
    "analyze --data npz:{d}/data.npz --out {d}/s.json --plot {d}/data.npz",
    "finetune --data npz:{d}/data.npz --plan {d}/plan.json --out {d}/q.pt --plan-out {d}/data.npz",
    "finetune --model {d}/m.py:make --plan {d}/plan.json --out {d}/m.py",
    "export --model {d}/m.py:make --out {d}/m.py",
    "validate --float-onnx {d}/f.onnx --quantized-onnx {d}/q.onnx --data npz:{d}/data.npz --json {d}/data.npz",
    "validate --float-onnx {d}/f.onnx --quantized-onnx {d}/q.onnx --data npz:{d}/data.npz --report {d}/data.npz",
    "analyze --data cifar10:{d}/cifar --out {d}/cifar/train.npz",
    "quantize --model {d}/m.py:make --data npz:{d}/data.npz --out {d}/cifar",
])
def test_no_command_writes_over_or_into_an_input(tmp_path, command):
    """Every file a command reads (data, model source, plans, ONNX files) is safe from every path
    it writes, derived ones (plots, plans beside an output) included."""
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.random((40, 1, 8, 8), dtype=np.float32), y=np.arange(40) % 10)
    (tmp_path / "m.py").write_text("from hawq_onnx.models.digits_cnn import DigitsCNN\n\n\ndef make():\n"
                                   "    return DigitsCNN()\n")
    (tmp_path / "cifar").mkdir()
    np.savez(tmp_path / "cifar" / "train.npz", x=np.zeros((4, 32, 32, 3), np.uint8), y=np.zeros(4, np.int64))
    for name in ("plan.json", "f.onnx", "q.onnx"):
        (tmp_path / name).write_text("{}")
    if command.startswith("quantize"):
        (tmp_path / "cifar" / "model.qdq.onnx").symlink_to(tmp_path / "m.py")  # an artefact name over an input
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    r = run_cli(*command.format(d=tmp_path).split())
    assert r.returncode == 2, r.stderr
    assert "input" in one_line_error(r)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_reruns_give_byte_identical_artefacts(tmp_path):
    """Equal inputs and seed, equal bytes: every artefact but sensitivity.json, whose wall-clock
    seconds are not part of what the plans hash."""
    import json

    import hawq_onnx as hq

    options = hq.QuantizeOptions(analyze=hq.AnalyzeOptions(batch_size=64), finetune=hq.FinetuneOptions(steps=6),
                                 validate=hq.ValidateOptions(runs=0))
    for name in ("a", "b"):
        hq.quantize(out=tmp_path / name, options=options)
    for name in ("plan.json", "quantized.pt", "quantized.plan.json", "model.float.onnx", "model.qdq.onnx",
                 "model.qdq.plan.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    a, b = (json.loads((tmp_path / n / "sensitivity.json").read_text()) for n in ("a", "b"))
    a.pop("seconds"), b.pop("seconds")
    assert [{k: v for k, v in la.items() if k != "seconds"} for la in a.pop("layers")] == \
        [{k: v for k, v in lb.items() if k != "seconds"} for lb in b.pop("layers")]
    assert a == b
