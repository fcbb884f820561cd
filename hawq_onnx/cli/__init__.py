"""The ``hawq-onnx`` command line: a click group; each command lives in its own module.

Commands stay thin: parse, call one library function, print. Every module in this package
that defines ``command`` (a click.Command) is a subcommand.
"""

from __future__ import annotations

import importlib
import pkgutil
import signal
import sys
import traceback

import click

from hawq_onnx.cli._options import example, flags_given, with_common_options
from hawq_onnx.errors import EXIT_INPUT, HawqError, OptionError

INTERNAL_ERROR = 3
# Library parameter -> flag, where the flag is not the parameter with dashes (batch_size -> --batch-size).
FLAGS = {"model": "--model", "pins": "--pin", "ties": "--tie", "pin_ends": "--no-pin-ends",
         "quantized": "--quantized-pt", "bops": "--bops", "eval_data": "--data", "model_ref": "--model",
         "as_zip": "--zip"}
# Where a command names a parameter otherwise. quantize's batch_size is left out: its analysis
# and fine-tuning checks both name one, and only the analysis's is --analysis-batch-size.
COMMAND_FLAGS = {"quantize": {"batches": "--analysis-batches"}}


def flag(param: str, command: str | None = None) -> str:
    """The command-line flag of a library parameter (in ``command``, where it differs)."""
    own = COMMAND_FLAGS.get(command or "", {})
    return own.get(param) or FLAGS.get(param, "--" + param.replace("_", "-"))


def message(exc: HawqError, command: str | None = None) -> str:
    """The error as the command line says it: parameters named by their flags."""
    return exc.render(lambda p: flag(p, command)) if isinstance(exc, OptionError) else str(exc)


class HawqGroup(click.Group):
    """Turns every failure into one line on stderr and an exit status; --debug shows tracebacks."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HawqError as exc:
            if "debug" in flags_given(ctx):
                traceback.print_exc()
            click.echo(f"error: {message(exc, ctx.invoked_subcommand)}", err=True)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:
            # The reader went away (`hawq-onnx inspect m.onnx | head`): not an error of ours.
            sys.stderr.close()
            ctx.exit(0)
        except KeyboardInterrupt:
            click.echo("error: interrupted; no partial output was kept", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except SystemExit as exc:  # click ends through ctx.exit: a SystemExit here comes from user code
            click.echo(f"error: the model's code called sys.exit({exc.code!r}) during the run; nothing more was "
                       "written", err=True)
            ctx.exit(EXIT_INPUT)
        except MemoryError:
            click.echo("error: out of memory; use a smaller --batch-size or fewer batches", err=True)
            ctx.exit(EXIT_INPUT)
        except Exception as exc:  # a bug in hawq-onnx, still one line unless --debug
            if "debug" in flags_given(ctx):
                traceback.print_exc()
            first = str(exc).splitlines()[0] if str(exc) else ""
            click.echo(f"error: internal error {exc.__class__.__name__}: {first} (rerun with --debug "
                       "for the traceback and report it)", err=True)
            ctx.exit(INTERNAL_ERROR)


@click.group(cls=HawqGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=example("hawq-onnx quantize --out runs/demo")
             + "\n\n-q, -v and --debug also work after the command's name (hawq-onnx quantize -q ...).")
@click.version_option(package_name="hawq-onnx")
def cli() -> None:
    """Hessian-aware mixed-precision quantization from PyTorch to ONNX (HAWQ).

    model -> analyze -> allocate -> finetune -> export -> validate -> package, or all of it
    with `quantize`.
    """


with_common_options(cli)


def _register() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        command = getattr(module, "command", None)
        if isinstance(command, click.Command):
            cli.add_command(with_common_options(command))


_register()


def _terminate(signum, frame) -> None:
    # Unwind like Ctrl-C so that atomic writes remove their temporary files.
    raise KeyboardInterrupt()


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    cli(prog_name="hawq-onnx")
