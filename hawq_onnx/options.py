"""The options of each stage: frozen dataclasses, and the choice lists the command line shows.

One dataclass per stage, each field with the default the ``hawq-onnx`` command of that stage
uses. The Python API takes them whole (``options=AnalyzeOptions(batches=2)``) or field by field
as keyword arguments (``hq.analyze(model, data, batches=2)``); the CLI builds them from its flags,
so the two cannot drift apart. Values are checked where they are used, with errors that name
the field.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeVar

from hawq_onnx.errors import HawqError, OptionError

# Choice lists (the CLI's click.Choice reads these).
DEVICES = ("cpu", "cuda")
METRICS = ("trace", "eigenvalue")
SCALE_METHODS = ("maxabs", "mse")
WEIGHT_RANGES = ("narrow", "full")
ORDERS = ("hawq", "single", "ptq")
OPTIMIZERS = ("adam", "sgd")
# Export targets; what each writes is hawq_onnx.passes.target_profiles (ort-cpu: the ONNX Runtime
# profile for the exporting CPU).
TARGETS = ("ort-cpu", "ort-vnni", "ort-avx2", "openvino", "compact")
BASELINES = ("ort-int8",)
RUNTIMES = ("ort", "openvino")   # validate: ONNX Runtime, or OpenVINO's CPU plugin (optional extra)
STOPPINGS = ("decision", "precision")
WEIGHT_BITS = (2, 3, 4, 8)
ACTIVATION_BITS = (4, 8)


@dataclass(frozen=True)
class AllocateOptions:
    """Bits per layer under a budget (``hq.allocate``, ``hawq-onnx allocate``)."""

    w_bits: tuple[int, ...] = (2, 4, 8)
    a_bits: tuple[int, ...] = (4, 8)
    metric: str = "trace"               # Tr(H)/n (HAWQ-V2/V3) or the top eigenvalue (HAWQ)
    scale_method: str = "maxabs"        # the weight scale whose ||Q(W) - W||^2 prices a choice
    weight_range: str = "narrow"        # 2/3/4-bit weights on the narrow or the full signed range
    bops: str | None = None             # an optional BOPs limit: 0.3G, 40x
    ties: tuple[str, ...] = ()          # "a,b" layers (globs allowed) that share one choice
    pins: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # layer (glob) -> (w_bits, a_bits)
    pin_ends: bool = True               # first and last layer 8/8, as HAWQ does
    keep_float: tuple[str, ...] = ()    # layers kept float (weights and input)
    # A latency limit (0.8x of the float layers' time, 2ms), held at every latency batch size on
    # the export target's runtime (hq.latency_tables measures the layers there); free layers may
    # then stay float where that is faster.
    max_latency: str | None = None
    latency_batch_sizes: tuple[int, ...] = (1, 64)


@dataclass(frozen=True)
class AnalyzeOptions:
    """Hessian sensitivity (``hq.analyze``, ``hawq-onnx analyze``): the loss is averaged over
    ``batches`` seeded random batches of ``batch_size`` training samples.

    ``stopping="decision"`` refines each trace only until more precision cannot change the
    plans at the ``settle_for`` budgets for the allocation ``settle_allocation`` describes
    (``quantize`` settles for its own budget and allocation); ``"precision"`` refines every
    trace until its standard error is ``trace_tol`` of it."""

    batches: int = 1
    batch_size: int = 256
    stopping: str = "decision"
    settle_for: tuple[str, ...] = ("8x", "13x")   # size budgets the plan must be settled for
    settle_allocation: AllocateOptions = AllocateOptions()
    eigenvalues: bool = False  # HAWQ's top eigenvalue (power iteration) besides the traces
    eig_tol: float = 1e-3     # power iteration stops when the eigenvalue changes less than this, relatively
    max_iter: int = 100       # power iterations at most
    trace_tol: float = 1e-2   # precision stopping: the standard error at most this fraction of the trace
    max_probes: int = 200     # Hutchinson probes at most per layer
    sketch: int = 16          # Hutch++ sketch size (0: plain Hutchinson): every layer's under precision
    #                           stopping; under decision stopping, only for layers that need many probes
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class FinetuneOptions:
    """Quantization-aware fine-tuning (``hq.finetune``, ``hawq-onnx finetune``).

    ``epochs`` (or ``steps``) is the whole training budget, all stages together; ``None``: 5
    epochs. ``lr`` ``None``: the optimizer's default (1e-4 Adam, 3e-4 SGD).
    """

    order: str = "hawq"                 # hawq: most sensitive blocks first; single: all at once; ptq: calibrate only
    epochs: float | None = None
    steps: int | None = None
    optimizer: str = "adam"
    lr: float | None = None
    step_lr: float | None = None        # quantized weights' lr in units of their quantization step
    batch_size: int = 128
    distill: bool = True
    distill_weight: float = 0.5
    temperature: float = 2.0
    data_fraction: float = 1.0
    seed: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class ExportOptions:
    """ONNX export (``hq.export``, ``hawq-onnx export``)."""

    # ort-cpu: ONNX Runtime integer kernels, stored for this CPU (ort-vnni or ort-avx2); openvino; compact: plain Q/DQ
    target: str = "ort-cpu"


@dataclass(frozen=True)
class ValidateOptions:
    """Runtime measurements (``hq.validate``, ``hawq-onnx validate``)."""

    threads: int = 2
    batch_sizes: tuple[int, ...] = (1, 64)
    runs: int = 50            # timed runs per model and batch size; 0 skips latency
    warmup: int = 5
    provider: str | None = None
    # "ort" or "openvino"; None: ONNX Runtime, except in quantize, where it is the runtime of the
    # export target (openvino for target "openvino")
    runtime: str | None = None
    baseline: str | None = None   # "ort-int8": ONNX Runtime's own quantize_static beside ours
    limit: int | None = None      # evaluate only the first N samples
    eval_batch_size: int = 256
    max_drop: float | None = None  # recorded; ValidationReport.check_gate raises past it


@dataclass(frozen=True)
class QuantizeOptions:
    """Every stage of ``hq.quantize`` / ``hawq-onnx quantize``. Its defaults are the embedded
    default job's: 4-bit activations inside the network (first and last layer 8-bit)."""

    analyze: AnalyzeOptions = AnalyzeOptions()
    allocate: AllocateOptions = AllocateOptions(a_bits=(4,))
    finetune: FinetuneOptions = FinetuneOptions()
    export: ExportOptions = ExportOptions()
    validate: ValidateOptions = ValidateOptions()


O = TypeVar("O")


def with_overrides(options: O | None, cls: type[O], overrides: Mapping[str, Any], function: str) -> O:
    """``options`` (or the defaults) with ``overrides`` applied; an unknown name is a HawqError."""
    base = cls() if options is None else options
    if not isinstance(base, cls):
        raise HawqError(f"{function}: options must be a {cls.__name__}, got {type(base).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise HawqError(f"{function}: unknown option(s) {', '.join(unknown)}; {cls.__name__} has "
                        f"{', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    checked = {name: _checked(function, name, value, hints[name]) for name, value in overrides.items()}
    return dataclasses.replace(base, **checked) if checked else base


def _checked(function: str, name: str, value: Any, hint: Any) -> Any:
    """``value`` as field ``name`` of type ``hint`` holds it, or an OptionError naming the field.

    A list becomes a tuple and a single value a one-element tuple (``w_bits=4``); any integer
    (numpy's too) is a float where a float is asked for; a bool is never a number."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is tuple:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return tuple(_checked(function, name, v, args[0]) for v in items)
    if origin is not None and issubclass(origin, Mapping):
        if not isinstance(value, Mapping):
            raise _wrong(function, name, value, "a mapping of layer names to (w_bits, a_bits)")
        return {str(k): tuple(_checked(function, name, v, int) for v in (bits if isinstance(bits, (list, tuple))
                                                                          else [bits]))
                for k, bits in value.items()}
    if hint in (int, float):
        kind = numbers.Integral if hint is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind):
            raise _wrong(function, name, value, "an int" if hint is int else "a number")
        return hint(value)  # numpy scalars too
    if hint in (str, bool) and not isinstance(value, hint):
        raise _wrong(function, name, value, "a string" if hint is str else "True or False")
    if dataclasses.is_dataclass(hint) and not isinstance(value, hint):
        raise _wrong(function, name, value, f"a {hint.__name__}")
    return value


def _wrong(function: str, name: str, value: Any, want: str) -> OptionError:
    return OptionError(f"{function}: {{{name}}} must be {want}, got {type(value).__name__} {value!r:.60}", name)
