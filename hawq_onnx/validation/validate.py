"""``validate``: is the quantized model fit to ship? Accuracy, latency, size and kernels, side by side.

Works on any float / quantized ONNX pair (ours, ONNX Runtime's, anyone's): everything is read
from the two files and measured under ONNX Runtime. The pieces live in their own modules:
:mod:`hawq_onnx.validation.ort_eval` (accuracy, agreement), :mod:`hawq_onnx.validation.latency` (timing protocol),
:mod:`hawq_onnx.validation.kernel_census` (integer kernels in ONNX Runtime's optimized graph),
:mod:`hawq_onnx.core.onnx_inspect` (sizes, bits), :mod:`hawq_onnx.validation.ort_baseline` (``ort-int8``);
this module runs them in order and holds the result. Writing it out is :mod:`hawq_onnx.validation.report`.

The data spec (input shape, normalisation) comes from ``--model`` when given, else from the
float ONNX file: its input shape (``--input-shape`` where it is symbolic) and the metadata
keys ``hawq_onnx.mean`` / ``hawq_onnx.std`` (JSON lists or comma-separated floats) when present.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from hawq_onnx.core import model_inputs
from hawq_onnx.core.onnx_inspect import Inspection, inspect_onnx, load_onnx
from hawq_onnx.errors import GateFailure, HawqError, OptionError
from hawq_onnx.io.atomic import read_json, write_json
from hawq_onnx.io.sensitivity_report import load_sensitivity
from hawq_onnx.options import BASELINES, RUNTIMES
from hawq_onnx.validation import openvino_runtime
from hawq_onnx.sources.data import load_data
from hawq_onnx.sources.splits import Dataset
from hawq_onnx.validation.data_spec import (
    MEAN_KEY,
    NO_NORMALISATION,
    STD_KEY,
    data_spec,
    default_data,
)
from hawq_onnx.validation.kernel_census import KernelCensus, kernel_census
from hawq_onnx.validation.latency import (
    LatencyResult,
    LatencyStats,
    SpeedupStats,
    measure_latency,
)
from hawq_onnx.validation.layer_reports import (
    LayerReport,
    check_sensitivity_matches,
    layer_reports,
)
from hawq_onnx.validation.ort_baseline import ort_int8
from hawq_onnx.validation.ort_eval import (
    CPU,
    EVAL_BATCH_SIZE,
    Accuracy,
    accuracy,
    agreement,
    check_input_fits,
    logit_error_steps,
    model_io,
    open_session,
    predict_batches,
    resolve_providers,
)
from hawq_onnx.validation.report_json import (
    FLOAT,
    FORMAT,
    QUANTIZED,
    VERSION,
    report_fields,
)
from hawq_onnx.validation.profile_fit import profile_mismatch
from hawq_onnx.validation.slowdown import slowdown_reasons

log = logging.getLogger(__name__)

KERNEL_AGREEMENT_WARNING = 0.995  # issue 5's bar for the file against its fake-quant model
ORT_NAME = "ONNX Runtime"


@dataclass
class ModelResult:
    label: str                      # float | quantized | ort-int8
    path: str | None                # None for a baseline kept only for the run
    file_bytes: int
    bytes_by_type: dict[str, int]   # initializer bytes per storage type (float, int8, int4, int32...)
    accuracy: Accuracy
    census: KernelCensus
    drop_points: float | None = None   # float top-1 minus this top-1, in percentage points
    agreement: float | None = None     # fraction of samples where this model and the float one agree
    size_ratio: float | None = None    # file bytes / float file bytes
    latency: dict[int, LatencyStats] = field(default_factory=dict)
    speedup: dict[int, float] = field(default_factory=dict)   # median per-round float / this, per batch
    speedup_stats: dict[int, SpeedupStats] = field(default_factory=dict)  # its spread over the rounds
    slower_because: dict[int, list[str]] = field(default_factory=dict)   # batches where it is slower than float
    # Top-1 agreement of the deployed session with the same file run with graph optimizations off
    # (every Q/DQ as written, the layers in float): below 1, ONNX Runtime's integer kernels compute
    # something else than the file says (int16 saturation of U8S8 kernels on CPUs without VNNI).
    kernel_agreement: float | None = None

    def to_json(self) -> dict[str, Any]:
        census = self.census.to_json()
        return {"label": self.label, "path": self.path, "file_bytes": self.file_bytes,
                "bytes_by_type": self.bytes_by_type, "size_ratio": self.size_ratio,
                "accuracy": self.accuracy.to_json(), "drop_points": self.drop_points, "agreement": self.agreement,
                "latency": {str(b): s.to_json() for b, s in self.latency.items()},
                "speedup": {str(b): v for b, v in self.speedup.items()},
                "speedup_spread": {str(b): s.to_json() for b, s in self.speedup_stats.items()},
                "slower_than_float_because": {str(b): v for b, v in self.slower_because.items()},
                "kernels": {**{k: census[k] for k in ("optimization_level", "provider", "integer_ops", "integer_kernels",
                                                      "dequantize_nodes", "quantize_nodes", "layers_by_mode",
                                                      "layers", "op_counts")},
                            "agreement_with_unoptimized": self.kernel_agreement}}


@dataclass
class ReferenceAgreement:
    """The quantized file under ONNX Runtime against the PyTorch fake-quant model it was exported from."""

    samples: int
    top1: float          # fraction of samples with the same top class
    p99_steps: float     # 99th percentile |logit error|, in 8-bit steps of the reference's logit range

    def to_json(self) -> dict[str, Any]:
        return vars(self).copy()


@dataclass
class ValidationReport:
    data: str
    samples: int
    num_classes: int
    input_name: str                    # the model's inputs' names, comma-separated where several
    input_shape: model_inputs.InputShape
    normalisation: str                 # where mean/std came from
    models: list[ModelResult]
    layers: list[LayerReport]
    latency: LatencyResult | None
    max_drop: float | None = None
    sensitivity: str | None = None
    fake_quant: ReferenceAgreement | None = None
    runtime: str = ORT_NAME            # the runtime every figure was measured under, as reports name it

    def model(self, label: str) -> ModelResult:
        for m in self.models:
            if m.label == label:
                return m
        raise KeyError(label)

    @property
    def float(self) -> ModelResult:
        return self.model(FLOAT)

    @property
    def quantized(self) -> ModelResult:
        return self.model(QUANTIZED)

    @property
    def gate_passed(self) -> bool | None:
        if self.max_drop is None:
            return None
        return not (self.quantized.drop_points or 0.0) > self.max_drop + 1e-9

    def check_gate(self) -> None:
        """Raise GateFailure (exit 1) when the top-1 drop exceeds ``max_drop`` points."""
        if self.gate_passed is False:
            raise GateFailure(f"top-1 drop {self.quantized.drop_points:.2f} points exceeds {{max_drop}} "
                              f"{self.max_drop:g} ({100 * self.float.accuracy.top1:.2f} % float, "
                              f"{100 * self.quantized.accuracy.top1:.2f} % quantized)", "max_drop")

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION,
                "data": {"source": self.data, "split": "test", "samples": self.samples,
                         "num_classes": self.num_classes, "input_name": self.input_name,
                         "input_shape": model_inputs.shape_json(self.input_shape),
                         "normalisation": self.normalisation},
                "models": {m.label: m.to_json() for m in self.models},
                "latency": None if self.latency is None else {
                    k: v for k, v in self.latency.to_json().items() if k != "models"},
                "layers": [vars(layer) for layer in self.layers],
                "sensitivity": self.sensitivity,
                "fake_quant_agreement": None if self.fake_quant is None else self.fake_quant.to_json(),
                "gate": {"max_drop": self.max_drop, "passed": self.gate_passed}, "runtime": self.runtime}

    def save(self, path: str | Path) -> Path:
        """Write report.json atomically (what ``hawq-onnx validate --json`` writes)."""
        return write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "ValidationReport":
        """Read a report.json written by :meth:`save` or ``hawq-onnx validate``; its ``to_json`` is the file's.

        Raw timings are not in the file: every ``times_ms`` is empty; the figures made from them are
        read. A report.json from before census layers were written loads with none (``layers_by_mode`` 0)."""
        return cls.from_json(read_json(path, "validation report"), f"validation report file {path}")

    @classmethod
    def from_json(cls, obj: Any, where: str = "validation report") -> "ValidationReport":
        """The report ``to_json`` gave ``obj`` (see :meth:`load`); a one-line HawqError for anything else."""
        kw = report_fields(obj, where)
        return cls(**{**kw, "models": [ModelResult(**m) for m in kw["models"]],
                      "layers": [LayerReport(**r) for r in kw["layers"]],
                      "fake_quant": None if kw["fake_quant"] is None else ReferenceAgreement(**kw["fake_quant"])})


# --- the run ------------------------------------------------------------------------------

def _kernel_agreement(path: Path, io, inputs: Callable[[], Iterator[np.ndarray]], total: int, deployed: np.ndarray,
                      threads: int, providers: Sequence[str], progress: bool, label: str, runtime: str = "ort") -> float:
    """Top-1 agreement of ``deployed`` (default session) with ``path`` run by ONNX Runtime without
    graph optimizations: the file's own Q/DQ arithmetic."""
    plain = open_session(path, threads, providers, optimized=False)
    same = agreement(deployed, predict_batches(plain, io, inputs(), total, progress, desc=f"{label} unoptimized"))
    if same < KERNEL_AGREEMENT_WARNING and runtime == "openvino":
        log.warning("%s: OpenVINO agrees with the file's own Q/DQ arithmetic (ONNX Runtime without fusions) on "
                    "%.2f %% of the samples: its integer kernels round elsewhere (ONNX Runtime's own int8 ResNet20 "
                    "file: 99.05 %%); compare the top-1 figures", label, 100 * same)
    elif same < KERNEL_AGREEMENT_WARNING:
        log.warning("%s: ONNX Runtime's optimized session agrees with the same file run unoptimized on only %.2f %% "
                    "of the samples: its integer kernels do not compute what the file's Q/DQ says (on x86 CPUs "
                    "without VNNI, U8S8 kernels saturate int16 sums of 8-bit products)", label, 100 * same)
    return same


def check_options(*, baseline: str | None, limit: int | None, max_drop: float | None, runs: int,
                  threads: int, batch_sizes: Sequence[int] = (1, 64), runtime: str = "ort",
                  provider: str | None = None) -> None:
    """One-line errors for bad settings, before any work."""
    if runtime not in RUNTIMES:
        raise OptionError(f"unknown {{runtime}} {runtime!r}: use {', '.join(RUNTIMES)}", "runtime")
    if runtime == "openvino":
        if (provider or "cpu").lower() not in ("cpu", CPU.lower()):
            raise OptionError(f"{{provider}} {provider!r} is an ONNX Runtime execution provider; {{runtime}} "
                              "openvino runs on OpenVINO's CPU plugin", "provider", "runtime")
        openvino_runtime.openvino_module()  # installed, or the one-line hint
    if runs > 0 and (not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes)):
        raise OptionError(f"{{batch_sizes}} must be positive integers, got {list(batch_sizes)}", "batch_sizes")
    if baseline is not None and baseline not in BASELINES:
        raise OptionError(f"unknown {{baseline}} {baseline!r}: use {', '.join(BASELINES)}", "baseline")
    if limit is not None and limit < 1:
        raise OptionError(f"{{limit}} must be at least 1, got {limit}", "limit")
    if max_drop is not None and not (math.isfinite(max_drop) and max_drop >= 0):
        raise OptionError(f"{{max_drop}} must be a non-negative number of points, got {max_drop}", "max_drop")
    if runs < 0:
        raise OptionError(f"{{runs}} must be 0 (no latency) or more, got {runs}", "runs")
    if threads < 1:
        raise OptionError(f"{{threads}} must be at least 1, got {threads}", "threads")


def validate(float_path: str | Path, quant_path: str | Path, data: str | Dataset | None = None, *,
             model_ref: str | None = None, input_shape: tuple[int, ...] | None = None,
             threads: int = 2, batch_sizes: Sequence[int] = (1, 64), runs: int = 50, warmup: int = 5,
             provider: str | None = None, baseline: str | None = None, baseline_out: str | Path | None = None,
             sensitivity: str | Path | None = None, limit: int | None = None,
             eval_batch_size: int = EVAL_BATCH_SIZE, max_drop: float | None = None,
             reference: Callable[[np.ndarray], np.ndarray] | None = None,
             progress: bool = False, runtime: str = "ort") -> ValidationReport:
    """Measure ``quant_path`` against ``float_path`` (and an optional baseline) under ONNX Runtime
    (``runtime="ort"``) or OpenVINO's CPU plugin (``"openvino"``).

    ``reference``: the PyTorch fake-quant model's scores for a batch of test inputs; the
    quantized file's agreement with it is reported. ``runs=0`` skips the latency measurement. The gate (``max_drop``) is recorded, not raised:
    call :meth:`ValidationReport.check_gate` after writing the reports.
    """
    check_options(baseline=baseline, limit=limit, max_drop=max_drop, runs=runs, threads=threads,
                  batch_sizes=batch_sizes, runtime=runtime, provider=provider)
    sens = load_sensitivity(sensitivity) if sensitivity is not None else None  # fail before the long part
    float_model = load_onnx(float_path)
    if sens is not None:
        check_sensitivity_matches(sens, inspect_onnx(float_model), float_path)
    mismatch = profile_mismatch(load_onnx(quant_path), runtime)
    if mismatch:
        log.warning("%s: %s", quant_path, mismatch)
    providers = resolve_providers(provider if runtime == "ort" else None)

    def deployed_session(path: str | Path):
        if runtime == "openvino":
            return openvino_runtime.open_session(path, threads)
        return open_session(path, threads, providers)

    if isinstance(data, Dataset):
        dataset, source, normalisation = data, data.name, "as given"
    else:
        if data is None:
            data, model_ref = default_data(float_model, float_path, model_ref, input_shape)
        spec, normalisation = data_spec(float_model, float_path, model_ref, input_shape)
        dataset, source = load_data(data, spec), data
        if normalisation == NO_NORMALISATION:
            log.warning("%s carries no %s/%s metadata and no --model was given: feeding inputs scaled to [0, 1] "
                        "without normalisation (pass --model if the model expects normalised inputs)",
                        float_path, MEAN_KEY, STD_KEY)
    test = dataset.test.take(limit)
    sample_shape = test.sample_shape
    labels: list[np.ndarray] = []

    def inputs(record: bool = False) -> Iterator[model_inputs.Arrays]:
        """The test inputs batch by batch (a streamed split is read again on every pass)."""
        for x, y in test.batches(eval_batch_size):
            if record:  # a copy: a view would keep the whole batch alive (measured: 3 MB a batch)
                labels.append(y.numpy().copy())
            yield model_inputs.as_numpy(x)

    with tempfile.TemporaryDirectory(prefix="hawq-validate-") as tmp:
        paths: dict[str, Path] = {FLOAT: Path(float_path), QUANTIZED: Path(quant_path)}
        float_session = deployed_session(float_path)
        float_io = model_io(float_session, float_path)
        check_input_fits(float_io, sample_shape, float_path)
        if baseline == "ort-int8":
            # Before any global thread pool exists in this process (there is none here: latency
            # runs in a child process), as the quantizer requires.
            target = Path(tmp) / "ort-int8.onnx"
            ort_int8(float_path, dataset.calib, target, float_io)
            paths["ort-int8"] = target

        sessions = {}
        for label, path in paths.items():  # every input and output checked before any evaluation
            session = float_session if label == FLOAT else deployed_session(path)
            io = float_io if label == FLOAT else model_io(session, path)
            check_input_fits(io, sample_shape, path)
            if label != FLOAT and None not in io.output_shape + float_io.output_shape \
                    and io.output_shape != float_io.output_shape:
                raise HawqError(f"{path} outputs shape (N, {', '.join(map(str, io.output_shape))}) but the float "
                                f"model outputs (N, {', '.join(map(str, float_io.output_shape))}): not the same model")
            sessions[label] = (session, io)
        logits: dict[str, np.ndarray] = {}
        kernel_agreement: dict[str, float] = {}
        for label, (session, io) in sessions.items():
            logits[label] = predict_batches(session, io, inputs(record=label == FLOAT), len(test), progress,
                                            desc=f"{label} top-1")
            if logits[label].shape != logits[FLOAT].shape:
                raise HawqError(f"{paths[label]} gives scores of shape {logits[label].shape[1:]} but the float model "
                                f"{logits[FLOAT].shape[1:]}: not the same model")
            if label != FLOAT:
                kernel_agreement[label] = _kernel_agreement(paths[label], io, inputs, len(test), logits[label],
                                                            threads, providers, progress, label, runtime)
        del sessions
        y_test = np.concatenate(labels)

        latency = None
        if runs > 0:
            pool_size = max(batch_sizes)
            pool = model_inputs.concat([model_inputs.as_numpy(x) for x, _ in test.take(pool_size).batches(pool_size)])
            latency = measure_latency({k: str(v) for k, v in paths.items()}, pool, batch_sizes=batch_sizes,
                                      threads=threads, runs=runs, warmup=warmup, providers=providers,
                                      runtime=runtime)

        models: list[ModelResult] = []
        inspections: dict[str, Inspection] = {}
        for label, path in paths.items():
            inspections[label] = inspect_onnx(path)
            acc = accuracy(logits[label], y_test, dataset.num_classes)
            models.append(ModelResult(label=label, path=str(path), file_bytes=os.path.getsize(path),
                                      bytes_by_type=inspections[label].bytes_by_type, accuracy=acc,
                                      census=openvino_runtime.kernel_census(path) if runtime == "openvino"
                                      else kernel_census(path, providers)))
        if baseline_out is not None and "ort-int8" in paths:
            from hawq_onnx.io.atomic import write_bytes

            write_bytes(baseline_out, paths["ort-int8"].read_bytes())

    ref = models[0]
    for m in models:
        if m.label == "ort-int8":
            m.path = str(baseline_out) if baseline_out is not None else None
        m.size_ratio = m.file_bytes / ref.file_bytes
        if m is not ref:
            m.drop_points = 100.0 * (ref.accuracy.correct_top1 - m.accuracy.correct_top1) / ref.accuracy.samples
            m.agreement = agreement(logits[FLOAT], logits[m.label])
            m.kernel_agreement = kernel_agreement.get(m.label)
        if latency is not None:
            m.latency = latency.models[m.label]
            m.speedup_stats = {b: latency.speedup_stats(m.label, FLOAT, b) for b in latency.batch_sizes}
            m.speedup = {b: st.median for b, st in m.speedup_stats.items()}
            if m is not ref:
                m.slower_because = {b: slowdown_reasons(m.census, ref.census, inspections[m.label],
                                                        ref.latency[b].median_ms, b)
                                    for b, v in m.speedup.items() if v < 1.0}

    fake_quant = None
    if reference is not None:
        ref_logits = np.concatenate([reference(x) for x in inputs()])
        if ref_logits.shape != logits[QUANTIZED].shape:
            raise HawqError(f"the PyTorch reference gives scores of shape {ref_logits.shape[1:]} but {quant_path} "
                            f"{logits[QUANTIZED].shape[1:]}: not the same model")
        fake_quant = ReferenceAgreement(len(test), agreement(logits[QUANTIZED], ref_logits),
                                        logit_error_steps(logits[QUANTIZED], ref_logits))

    quant = models[1]
    layers = layer_reports(inspections[QUANTIZED], quant.census, inspections[FLOAT], sens)
    return ValidationReport(data=source, samples=len(test), num_classes=dataset.num_classes,
                            input_name=", ".join(i.name for i in float_io.inputs), input_shape=sample_shape,
                            normalisation=normalisation, models=models, layers=layers, latency=latency,
                            max_drop=max_drop, sensitivity=str(sensitivity) if sensitivity is not None else None,
                            fake_quant=fake_quant,
                            runtime=openvino_runtime.describe() if runtime == "openvino" else ORT_NAME)
