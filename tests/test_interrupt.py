"""An interrupted run leaves the old file or none: never a partial one, never a temp file.

Two kinds of interruption:

- at an arbitrary moment: a float export signalled after a delay (during torch's export, or
  after it has finished);
- exactly mid-write: the child's ``os.fsync`` is made to stop once the new bytes are in the
  temporary file and not yet renamed, and the child is signalled there: SIGTERM and SIGINT must
  unwind (the temporary file removed, the old output untouched, one error line, exit 130);
  SIGKILL cannot unwind, but must still leave the old output untouched (a hidden temporary file
  may stay). Covered: the quantized export (the float export writes through the same
  ``artifacts.write_bytes``) and `package` (folder and zip).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
from seed_artifacts import copy_artifacts  # noqa: E402

MARK = "PAUSED-MID-WRITE"
# The CLI with os.fsync stopping mid-write: the new bytes are in the temporary file, the target
# is not replaced yet. The child waits there for the signal.
PAUSED_CLI = f"""
import os, signal, sys, time
# A shell without job control starts background jobs with SIGINT ignored, and Python keeps it
# ignored: give the child Ctrl-C's usual meaning however the suite was launched.
signal.signal(signal.SIGINT, signal.default_int_handler)
def paused_fsync(fd):
    sys.stderr.write("{MARK}\\n")
    sys.stderr.flush()
    time.sleep(120)
os.fsync = paused_fsync
from hawq_onnx.cli import main
main()
"""
OLD = b"old contents"


def _start(out):
    return subprocess.Popen([sys.executable, "-c", "from hawq_onnx.cli import main; main()", "export",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig,delay", [(signal.SIGTERM, 0.5), (signal.SIGINT, 3.0)])
def test_interrupted_export(tmp_path, sig, delay):
    out = tmp_path / "model.onnx"
    out.write_bytes(OLD)
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
        assert data == OLD
        assert "Traceback" not in err and err.strip().count("\n") == 0


# --- exactly mid-write ------------------------------------------------------------------------

@dataclass
class Scenario:
    args: list[str]     # {a}: the artefacts folder, {d}: the scenario's own folder
    target: str         # the output, in {d}, that exists before (an older version) and must survive
    sig: int
    proc: subprocess.Popen | None = None
    paused: threading.Event = field(default_factory=threading.Event)
    stderr: list[str] = field(default_factory=list)
    before: dict[str, bytes] = field(default_factory=dict)


SCENARIOS = {
    "quantized-export-sigterm": Scenario(["export", "--quantized-pt", "{a}/quantized.pt", "--out", "{d}/model.qdq.onnx"],
                                         "model.qdq.onnx", signal.SIGTERM),
    "quantized-export-sigkill": Scenario(["export", "--quantized-pt", "{a}/quantized.pt", "--out", "{d}/model.qdq.onnx"],
                                         "model.qdq.onnx", signal.SIGKILL),
    "package-sigterm": Scenario(["package", "{a}/model.qdq.onnx", "--out", "{d}/bundle"], "bundle", signal.SIGTERM),
    "package-zip-sigint": Scenario(["package", "{a}/model.qdq.onnx", "--out", "{d}/bundle.zip"], "bundle.zip",
                                   signal.SIGINT),
}


def _old_version(path: Path) -> None:
    """What a previous run left: a file, an older bundle folder, or an older bundle archive."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("manifest.json", '{"old": true}')
    elif path.name == "bundle":
        path.mkdir()
        (path / "manifest.json").write_text('{"old": true}')
        (path / "model.onnx").write_bytes(OLD)
    else:
        path.write_bytes(OLD)


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))}


def _read_stderr(s: Scenario) -> None:
    for line in s.proc.stderr:
        s.stderr.append(line)
        if line.strip() == MARK:
            s.paused.set()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """All scenarios run side by side (each child pays torch's import): start, pause, signal."""
    root = tmp_path_factory.mktemp("interrupt")
    art = copy_artifacts(root / "a")
    readers = []
    for name, s in SCENARIOS.items():
        d = root / name
        d.mkdir()
        _old_version(d / s.target)
        s.before = _contents(d)
        args = [a.format(a=art.folder, d=d) for a in s.args]
        s.proc = subprocess.Popen([sys.executable, "-c", PAUSED_CLI, *args], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        readers.append(threading.Thread(target=_read_stderr, args=(s,), daemon=True))
        readers[-1].start()
    for s in SCENARIOS.values():
        if s.paused.wait(timeout=240):
            s.proc.send_signal(s.sig)
        else:
            s.proc.kill()
    for s, reader in zip(SCENARIOS.values(), readers):
        s.proc.wait(timeout=60)
        reader.join(timeout=10)
    return root


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_interrupted_mid_write(interrupted, name):
    s = SCENARIOS[name]
    d = interrupted / name
    assert s.paused.is_set(), "".join(s.stderr)[-1500:]
    after = _contents(d)
    assert {k: v for k, v in after.items() if not k.startswith(".")} == s.before  # the old output, untouched
    stderr = "".join(s.stderr)
    if s.sig == signal.SIGKILL:
        assert s.proc.returncode == -signal.SIGKILL
        # No unwinding after SIGKILL: a hidden temporary file may stay, never a partial output.
        assert all(k.startswith(f".{s.target}.") for k in after if k not in s.before), sorted(after)
    else:
        assert s.proc.returncode == 130, stderr[-1500:]
        assert after == s.before, sorted(after)  # no temporary file or staging folder left
        assert "Traceback" not in stderr
        assert stderr.rstrip().splitlines()[-1] == "error: interrupted; no partial output was kept"
