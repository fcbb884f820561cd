"""The ``hawq-onnx`` command line: a click group; each command lives in its own module.

Commands stay thin: parse, call one library function, print. Every module in this package
that defines ``command`` (a click.Command) is a subcommand.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import signal
import sys
import traceback

import click

from hawq_onnx.errors import EXIT_INPUT, HawqError, OptionError

INTERNAL_ERROR = 3
# Library parameter -> flag, where the flag is not the parameter with dashes (batch_size -> --batch-size).
FLAGS = {"model": "--model", "pins": "--pin", "ties": "--tie", "pin_ends": "--no-pin-ends",
         "quantized": "--quantized", "bops": "--bops", "eval_data": "--data", "model_ref": "--model", "as_zip": "--zip"}


def flag(param: str) -> str:
    """The command-line flag of a library parameter."""
    return FLAGS.get(param, "--" + param.replace("_", "-"))


def message(exc: HawqError) -> str:
    """The error as the command line says it: parameters named by their flags."""
    return exc.render(flag) if isinstance(exc, OptionError) else str(exc)


class _OneLineHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"{record.levelname.lower()}: {record.getMessage()}", err=True)


class HawqGroup(click.Group):
    """Turns every failure into one line on stderr and an exit status; --debug shows tracebacks."""

    def invoke(self, ctx: click.Context):
        debug = "--debug" in sys.argv[1:] or bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except HawqError as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {message(exc)}", err=True)
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
            if debug:
                traceback.print_exc()
            first = str(exc).splitlines()[0] if str(exc) else ""
            click.echo(f"error: internal error {exc.__class__.__name__}: {first} (rerun with --debug "
                       "for the traceback and report it)", err=True)
            ctx.exit(INTERNAL_ERROR)


@click.group(cls=HawqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("-v", "--verbose", is_flag=True, help="More messages.")
@click.version_option(package_name="hawq-onnx")
def cli(debug: bool, verbose: bool) -> None:
    """Hessian-aware mixed-precision quantization from PyTorch to ONNX (HAWQ).

    model -> analyze -> allocate -> finetune -> export -> validate -> package, or all of it
    with `quantize`.
    """
    root = logging.getLogger("hawq_onnx")
    root.handlers[:] = [_OneLineHandler()]
    root.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    root.propagate = False


def _register() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        command = getattr(module, "command", None)
        if isinstance(command, click.Command):
            cli.add_command(command)


_register()


def _terminate(signum, frame) -> None:
    # Unwind like Ctrl-C so that atomic writes remove their temporary files.
    raise KeyboardInterrupt()


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    cli(prog_name="hawq-onnx")
