"""Options shared by several commands, declared once."""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import click
from click.core import ParameterSource

from hawq_onnx.errors import HawqError
from hawq_onnx.options import DEVICES, WEIGHT_RANGES

# The flags -q/-v/--debug given before or after the subcommand, gathered on the root context.
VERBOSITY = "hawq_onnx.verbosity"
PROGRESS_LOGGER = "hawq_onnx.progress"  # hawq_onnx.core.progress.LOGGER, named here to keep cli light
log = logging.getLogger("hawq_onnx.cli")


class OneLineHandler(logging.Handler):
    """``warning: ...`` on stderr; progress lines as they are (they are already sentences)."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        click.echo(text if record.name == PROGRESS_LOGGER else f"{record.levelname.lower()}: {text}", err=True)


def batch_sizes_option(ctx, param, value: str) -> tuple[int, ...]:
    """A comma-separated list of positive batch sizes (``1,64``)."""
    try:
        sizes = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers such as 1,64") from None
    if not sizes or any(s < 1 for s in sizes):
        raise click.BadParameter(f"{value!r}: batch sizes must be positive integers such as 1,64")
    return sizes


def _remember(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.find_root().meta.setdefault(VERBOSITY, set()).add(param.name)
    return value


def _verbosity_params() -> list[click.Option]:
    # Eager: --debug is known before any other option's check can fail.
    common = dict(is_flag=True, expose_value=False, is_eager=True, callback=_remember)
    return [click.Option(["-q", "--quiet"], help="Only errors and the result lines: no progress, no messages.",
                         **common),
            click.Option(["-v", "--verbose"], help="Debug-level messages of hawq_onnx.", **common),
            click.Option(["--debug"], help="Show the traceback of an error.", **common)]


def flags_given(ctx: click.Context | None = None) -> set[str]:
    """Which of quiet, verbose, debug were given, before or after the subcommand."""
    ctx = ctx or click.get_current_context(silent=True)
    return set(ctx.find_root().meta.get(VERBOSITY, ())) if ctx is not None else set()


def quiet() -> bool:
    return "quiet" in flags_given()


def show_progress() -> bool:
    """What a command passes as the library's ``progress``."""
    return not quiet()


def say(line: str) -> None:
    """A line about the work under way (stderr), which --quiet leaves out."""
    if not quiet():
        click.echo(line, err=True)


def configure_logging(ctx: click.Context) -> None:
    given = flags_given(ctx)
    if {"quiet", "verbose"} <= given:
        raise click.UsageError("--quiet and --verbose contradict each other; give one", ctx=ctx)
    root = logging.getLogger("hawq_onnx")
    root.handlers[:] = [OneLineHandler()]
    root.propagate = False
    root.setLevel(logging.ERROR if "quiet" in given else logging.DEBUG if "verbose" in given else logging.WARNING)
    # Progress lines are INFO and shown by default; --quiet turns progress off at the source.
    logging.getLogger(PROGRESS_LOGGER).setLevel(logging.NOTSET if "verbose" in given else logging.INFO)


def with_common_options(command: click.Command) -> click.Command:
    """-q/--quiet, -v/--verbose and --debug on ``command``, logging set up before its body runs."""
    command.params.extend(_verbosity_params())
    body = command.callback

    @functools.wraps(body)
    def run(*args: Any, **kwargs: Any) -> Any:
        configure_logging(click.get_current_context())
        return body(*args, **kwargs) if body is not None else None

    command.callback = run
    return command


def renamed(old: str, new: str, dest: str, *, required: bool = False, **attrs: Any) -> Callable:
    """Keep ``old``, the former spelling of ``new``, working for existing scripts: hidden from
    --help, it warns once and passes its value on as ``new``'s. ``required`` is ``new``'s, checked
    here since either spelling satisfies it (declare ``new`` itself not required)."""
    hidden = "deprecated_" + dest

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def command(*args: Any, **kwargs: Any) -> Any:
            value = kwargs.pop(hidden)
            ctx = click.get_current_context()
            if value is not None:
                if ctx.get_parameter_source(dest) not in (None, ParameterSource.DEFAULT):
                    raise click.UsageError(f"{old} is the old spelling of {new}; give {new} only", ctx=ctx)
                log.warning("%s is deprecated; use %s", old, new)
                kwargs[dest] = value
            elif required and kwargs.get(dest) is None:
                raise click.UsageError(f"Missing option '{new}'.", ctx=ctx)
            return f(*args, **kwargs)

        return click.option(old, hidden, default=None, hidden=True, **attrs)(command)

    return decorate


def example(*lines: str) -> str:
    """A command's --help epilog: a runnable example (\\b keeps click from rewrapping it)."""
    return "\b\nExample:\n" + "\n".join(f"  {line}" for line in lines)


model_option = click.option("--model", "model_ref", default=None, metavar="M",
                            help="Zoo name (digits-cnn, resnet20-cifar10, ...), FILE.py:factory or package.module:factory. Default: digits-cnn.")
weights_option = click.option("--weights", default=None, metavar="CKPT",
                              help="state_dict checkpoint (plain or {'state_dict': ...}).")
input_shape_option = click.option("--input-shape", default=None, metavar="C,H,W",
                                  help="Input shape without batch, for models that declare none (default: one sample of --data).")
data_option = click.option("--data", default=None, metavar="D",
                           help="digits | cifar10:DIR | npz:FILE | imagefolder:DIR. "
                                "Default: the model's own (digits for digits-cnn, the default model).")
device_option = click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
seed_option = click.option("--seed", type=int, default=0, show_default=True)
weight_range_option = click.option(
    "--weight-range", type=click.Choice(WEIGHT_RANGES), default="narrow", show_default=True,
    help="Integer range of 2/3/4-bit weights: narrow [-(2^(b-1)-1), 2^(b-1)-1] (2 bits: -1, 0, 1) or full, "
         "with the extra negative level (2 bits: -2..1, as LSQ). Recorded in the plan; 8 bits stay narrow.")
step_lr_option = click.option(
    "--step-lr", type=float, default=None, metavar="F",
    help="Train the quantized layers' weights at this peak learning rate in units of their channel's "
         "quantization step (0.01: an Adam update moves a weight by about 1 % of its step); biases and "
         "float layers keep --lr. Adam only. Default: off (--lr for all).")


def model_options(f):
    return model_option(weights_option(input_shape_option(f)))


def fold_image_options(data: str | None, resize: int | None, crop: str | None, mean: str | None,
                       std: str | None) -> str | None:
    """``--data`` with --resize/--crop/--mean/--std written into its ``imagefolder:`` spec.

    The library reads them only from the spec string, so that the data is named by one value
    everywhere (reports, the plan's calibration record, the next stage's default)."""
    flags = {"resize": resize, "crop": crop, "mean": mean, "std": std}
    given = {k: v for k, v in flags.items() if v is not None}
    if not given:
        return data
    if not data or not data.startswith("imagefolder:"):
        got = f"--data {data}" if data else "no --data: the model's own data"
        raise HawqError(f"{', '.join('--' + k for k in given)} {'is' if len(given) == 1 else 'are'} for "
                        f"--data imagefolder:DIR only ({got})")
    keys = {item.partition("=")[0] for item in data.split(",")[1:]}
    for key, value in given.items():
        if key in keys:
            raise HawqError(f"{key} is given both in --data and as --{key}")
        data += f",{key}=" + str(value).replace(",", "/")
    from hawq_onnx.sources.imagefolder import parse_spec

    parse_spec(data.partition(":")[2])  # bad values fail now, before the model is loaded
    return data


def image_options(f):
    """--resize, --crop, --mean, --std: folded into the command's ``data`` before its body runs."""
    @functools.wraps(f)
    def command(*args, resize, crop, mean, std, **kwargs):
        kwargs["data"] = fold_image_options(kwargs.get("data"), resize, crop, mean, std)
        return f(*args, **kwargs)

    options = [
        click.option("--resize", type=int, default=None, metavar="N",
                     help="imagefolder: shorter side to N pixels (bilinear) before the centre crop "
                          "[default: the least scale that covers the crop]."),
        click.option("--crop", default=None, metavar="N|HxW",
                     help="imagefolder: centre crop; must match the model input [default: the model's H, W]."),
        click.option("--mean", default=None, metavar="a,b,c",
                     help="imagefolder: per-channel mean of [0, 1] pixels [default: the model's]."),
        click.option("--std", default=None, metavar="a,b,c",
                     help="imagefolder: per-channel std of [0, 1] pixels [default: the model's]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command
