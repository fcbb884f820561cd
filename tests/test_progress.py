"""Progress as a log reads it, and the command line's -q/-v/--debug, renamed flags and examples."""

from __future__ import annotations

import io
import logging

import pytest
from click.testing import CliRunner

from hawq_onnx.cli import cli
from hawq_onnx.core import progress as pg


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Lines:
    def __init__(self, caplog) -> None:
        self.caplog = caplog

    def __len__(self) -> int:
        return len(self.caplog.messages)

    def __getitem__(self, i: int) -> str:
        return self.caplog.messages[i]

    def __iter__(self):
        return iter(self.caplog.messages)


@pytest.fixture
def lines(caplog) -> Lines:
    caplog.set_level(logging.INFO, logger=pg.LOGGER)
    return Lines(caplog)


def _bar(clock: Clock, total: int | None = 100, **kw) -> pg.LogProgress:
    return pg.LogProgress(total=total, desc="hessian", unit="layer", stream=io.StringIO(), clock=clock, **kw)


def test_a_non_terminal_stream_gets_log_lines_not_a_bar(caplog):
    caplog.set_level(logging.INFO, logger=pg.LOGGER)
    stream = io.StringIO()
    bar = pg.progress_bar(range(3), enabled=True, desc="calibrate", unit="batch", stream=stream)
    assert isinstance(bar, pg.LogProgress)
    assert list(bar) == [0, 1, 2]
    assert caplog.messages[0] == "calibrate: 0/3 batches"
    assert caplog.messages[-1].startswith("calibrate: 3/3 batches in 0 s")
    assert len(caplog.messages) == 2 and stream.getvalue() == ""


def test_disabled_is_silent(caplog):
    caplog.set_level(logging.DEBUG)
    bar = pg.progress_bar(range(2), enabled=False, desc="x")
    with bar:
        assert list(bar) == [0, 1]
        bar.update(5)
        bar.set_postfix(a=1)
    assert caplog.messages == []


def test_interim_lines_need_ten_percent_and_thirty_seconds(lines):
    clock = Clock()
    bar = _bar(clock)
    for _ in range(100):  # fast: every 10 % passes, never 30 s
        clock.t += 0.1
        bar.update(1)
    assert len(lines) == 1
    bar = _bar(clock)
    for _ in range(20):  # slow but small steps: 30 s pass often, 10 % only every 10 updates
        clock.t += 31
        bar.update(1)
    assert len(lines) == 4
    bar.close()
    assert lines[1] == "hessian: 0/100 layers"
    assert lines[2] == "hessian: 10/100 layers, 31 s/layer, eta 46 min 30 s"
    assert lines[3].startswith("hessian: 20/100 layers, ")
    assert lines[4].startswith("hessian: 20/100 layers in 10 min 20 s")


def test_rate_eta_and_postfix_read_as_a_sentence(lines):
    clock = Clock()
    with _bar(clock, total=29) as bar:
        clock.t += 40
        bar.update(12)
        bar.set_postfix(products=84)
        clock.t += 40
        bar.update(17)
    assert lines[1] == "hessian: 12/29 layers, 3.33 s/layer, eta 57 s"
    assert lines[2] == "hessian: 29/29 layers in 1 min 20 s, 2.76 s/layer, products=84"
    assert pg.format_rate(13, 10, "layer") == "1.3 layer/s"
    assert pg.format_seconds(3725) == "1 h 02 min"


def test_a_long_loop_logs_a_bounded_number_of_lines(lines):
    clock = Clock()
    bar = _bar(clock, total=10_000)
    for _ in range(10_000):
        clock.t += 1
        bar.update(1)
    bar.close()
    assert 10 <= len(lines) <= 12 and all("\r" not in line for line in lines)


def test_an_error_inside_says_where_it_stopped(lines):
    with pytest.raises(RuntimeError), _bar(Clock(), total=4) as bar:
        bar.update(1)
        raise RuntimeError
    assert lines[-1].startswith("hessian: stopped at 1/4 layers")


def test_unknown_total_and_no_logging_configured_fall_back_to_the_stream(monkeypatch):
    monkeypatch.setattr(pg.log, "hasHandlers", lambda: False)
    stream = io.StringIO()
    bar = pg.progress_bar(iter(range(2)), enabled=True, desc="evaluate", unit="sample", stream=stream)
    list(bar)
    assert stream.getvalue().splitlines() == ["evaluate: started", stream.getvalue().splitlines()[1]]
    assert stream.getvalue().splitlines()[1].startswith("evaluate: 2 samples in ")


# --- the command line ------------------------------------------------------------------------

COMMANDS = ["quantize", "analyze", "allocate", "finetune", "export", "validate", "package", "inspect"]


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_every_help_ends_with_an_example_and_lists_the_verbosity_flags(command):
    res = CliRunner().invoke(cli, [*command, "--help"])
    assert res.exit_code == 0, res.output
    text = res.output.splitlines()
    examples = [i for i, line in enumerate(text) if line.strip() == "Example:"]
    assert examples and text[examples[0] + 1].strip().startswith("hawq-onnx "), res.output
    for flag in ("-q, --quiet", "-v, --verbose", "--debug"):
        assert flag in res.output


def _allocate(sensitivity, out, *extra: str, before: tuple[str, ...] = ()) -> object:
    return CliRunner().invoke(cli, [*before, "allocate", "--sensitivity", str(sensitivity), "--budget", "8x",
                                    "--out", str(out), *extra])


@pytest.fixture(scope="module")
def sensitivity(tmp_path_factory):
    from hawq_onnx.api import analyze

    path = tmp_path_factory.mktemp("progress") / "s.json"
    analyze("digits-cnn", batch_size=32, max_iter=5, max_probes=8, sketch=0, trace_tol=0.5).save(path)
    return path


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_and_verbose_before_or_after_the_command(sensitivity, tmp_path, where):
    def run(flag):
        extra = (flag,) if where == "after" else ()
        return _allocate(sensitivity, tmp_path / "p.json", *extra, before=() if extra else (flag,))

    quiet = run("-q")
    assert quiet.exit_code == 0 and quiet.stderr == "" and "wrote" in quiet.stdout
    assert logging.getLogger("hawq_onnx").level == logging.ERROR
    assert run("--verbose").exit_code == 0 and logging.getLogger("hawq_onnx").level == logging.DEBUG
    assert run("--quiet").exit_code == 0 and logging.getLogger("hawq_onnx").level == logging.ERROR
    both = _allocate(sensitivity, tmp_path / "p.json", "-v", before=("-q",))
    assert both.exit_code == 2 and "--quiet and --verbose" in both.output


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_before_or_after_the_command(tmp_path, where):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    args = ["inspect", str(bad)]
    res = CliRunner().invoke(cli, ["--debug", *args] if where == "before" else [*args, "--debug"])
    assert res.exit_code == 2 and "Traceback" in res.stderr
    plain = CliRunner().invoke(cli, args)
    assert plain.exit_code == 2 and "Traceback" not in plain.stderr and len(plain.stderr.splitlines()) == 1


def test_quantize_analysis_batch_size_and_its_old_spelling(tmp_path):
    # A bad budget fails before any work, after the flags are parsed.
    new = CliRunner().invoke(cli, ["quantize", "--analysis-batch-size", "0", "--out", str(tmp_path / "o")])
    assert new.exit_code == 2 and "--analysis-batches and --batch-size must be positive" in new.stderr
    old = CliRunner().invoke(cli, ["quantize", "--batch-size", "64", "--budget", "banana", "--out", str(tmp_path / "o")])
    assert old.exit_code == 2, old.output
    assert old.stderr.splitlines()[0] == "warning: --batch-size is deprecated; use --analysis-batch-size"
    assert "budget 'banana'" in old.stderr.splitlines()[-1]
    old = CliRunner().invoke(cli, ["quantize", "--batches", "0", "--out", str(tmp_path / "o")])
    assert "--batches is deprecated" in old.stderr and "--analysis-batches and" in old.stderr
    both = CliRunner().invoke(cli, ["quantize", "--batch-size", "8", "--analysis-batch-size", "8", "--out", "o"])
    assert both.exit_code == 2 and "give --analysis-batch-size only" in both.output


def test_export_quantized_pt_and_its_old_spelling(tmp_path):
    missing = str(tmp_path / "none.pt")
    for flag in ("--quantized-pt", "--quantized"):
        res = CliRunner().invoke(cli, ["export", flag, missing, "--out", str(tmp_path / "q.onnx")])
        assert res.exit_code == 2 and "none.pt" in res.stderr.splitlines()[-1]
        assert ("deprecated" in res.stderr) == (flag == "--quantized")


def test_allocate_and_quantize_defaults_come_from_the_options():
    from hawq_onnx.options import AllocateOptions, QuantizeOptions

    for command, opts in (("allocate", AllocateOptions()), ("quantize", QuantizeOptions().allocate)):
        params = {p.name: p.default for p in cli.commands[command].params}
        assert params["a_bits"] == ",".join(map(str, opts.a_bits))
        assert params["w_bits"] == ",".join(map(str, opts.w_bits))


def test_analyze_redirected_logs_progress_lines_and_quiet_none(tmp_path):
    args = ["analyze", "--batch-size", "16", "--max-iter", "3", "--tol", "0.5", "--max-probes", "8", "--sketch", "0",
            "--trace-tol", "0.5", "--out", str(tmp_path / "s.json")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    progress = [line for line in res.stderr.splitlines() if line.startswith("hessian: ")]
    assert "\r" not in res.stderr and 2 <= len(progress) <= 12, res.stderr
    assert progress[0] == "hessian: 0/6 layers" and progress[-1].startswith("hessian: 6/6 layers in ")
    quiet = CliRunner().invoke(cli, [*args, "-q"])
    assert quiet.exit_code == 0 and quiet.stderr == "" and "analysed 6 layers" in quiet.stdout
