"""The public Python API: one function per stage, frozen options, typed results.

    import hawq_onnx as hq
    sens = hq.analyze(model, loader)                 # -> Sensitivity     (sensitivity.json)
    plan = hq.allocate(sens, budget="8x")            # -> Plan            (plan.json)
    qmodel = hq.finetune(model, plan, loader)        # -> QuantizedModel  (quantized.pt)
    onnx_q = hq.export(qmodel)                       # -> ExportedModel   (model.qdq.onnx + its plan)
    onnx_f = hq.export(model)                        #    the float model, BatchNorm folded
    report = hq.validate(onnx_f, onnx_q, test_loader, reference=qmodel)   # -> ValidationReport

``model`` is the user's ``nn.Module`` (never modified: the stages work on a copy) or a name the
CLI takes (a zoo name, ``FILE.py:factory``, ``package.module:factory``, ``hf:DIR``,
``torchvision:NAME``, ``timm:NAME`` or a float ``.onnx`` file; with ``weights=``).
``data`` is a DataLoader, a torch Dataset, an iterable of batches, arrays (``x`` or ``(x, y)``)
or a CLI spec string (``digits``, ``cifar10:DIR``, ``npz:FILE``); see
:mod:`hawq_onnx.sources.user_data` for batches. Without labels the float model's own top-1
stands in for them, and every report says so. Options are the frozen dataclasses of
:mod:`hawq_onnx.options`, given whole (``options=``) or field by field as keyword arguments.
Functions log through ``logging`` (logger ``hawq_onnx``) and show progress bars only with
``progress=True``; failures are :class:`hawq_onnx.errors.HawqError` naming the parameter.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.nn as nn

from hawq_onnx.allocation.settling import unsettled_warning
from hawq_onnx.allocation.solve import allocate as _allocate
from hawq_onnx.core import model_inputs
from hawq_onnx.core.bn_fold import fold_copy
from hawq_onnx.core.onnx_inspect import Inspection, inspect_onnx
from hawq_onnx.deploy.bundle import Bundle, is_bundle, read_bundle
from hawq_onnx.deploy.package import PackageResult, build_bundle
from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.io.latency_table import LatencyTable
from hawq_onnx.io.plan import Plan
from hawq_onnx.io.sensitivity_report import Sensitivity, content_sha256
from hawq_onnx.onnx_export.float_onnx import float_onnx, save_onnx
from hawq_onnx.onnx_export.qdq import quantize_onnx
from hawq_onnx.options import (
    STOPPINGS,
    AllocateOptions,
    AnalyzeOptions,
    ExportOptions,
    FinetuneOptions,
    ValidateOptions,
    with_overrides,
)
from hawq_onnx.preparation import (
    PathLike,
    labeler,
    num_classes,
    prepare_data,
    prepare_model,
    reiterable,
)
from hawq_onnx.qat.finetune import check_options as _check_finetune
from hawq_onnx.qat.finetune import finetune as _finetune
from hawq_onnx.qat.finetune import predict_scores
from hawq_onnx.qat.region_grids import reference_model
from hawq_onnx.qat.schedule import LossFn
from hawq_onnx.results import ExportedModel, QuantizedModel
from hawq_onnx.sensitivity.hessian import analyze_batches, analyze_model, check_settings
from hawq_onnx.sources import user_data
from hawq_onnx.sources.model import model_fingerprint
from hawq_onnx.sources.splits import Dataset, Split
from hawq_onnx.validation.validate import ValidationReport
from hawq_onnx.validation.validate import validate as _validate

log = logging.getLogger(__name__)

OnnxLike = PathLike | onnx.ModelProto | ExportedModel


def check_allocation(budgets: Sequence[str], opts: AllocateOptions, where: str) -> None:
    """The syntax of budgets and of an allocation's candidates, BOPs and latency limits, before
    the model's size and speed are known (they are weighed against the model at allocation)."""
    from hawq_onnx.allocation.solve import parse_latency
    from hawq_onnx.allocation.units import check_bits, check_budget_text, parse_bops

    for budget in budgets:
        check_budget_text(str(budget))
    if opts.bops is not None:
        parse_bops(str(opts.bops), 1 << 62)
    check_bits(opts.w_bits, opts.a_bits, where)
    if opts.max_latency is not None:
        parse_latency(opts.max_latency, 1.0, len(opts.latency_batch_sizes))
        if not opts.latency_batch_sizes or any(b < 1 for b in opts.latency_batch_sizes):
            raise OptionError("{latency_batch_sizes} must be positive batch sizes", "latency_batch_sizes")


def check_analyze_options(opts: AnalyzeOptions) -> dict[str, Any]:
    """One-line errors for bad analysis options, before any work; the settings ``analyze`` takes
    (with the decision rule of decision stopping)."""
    from hawq_onnx.allocation.settling import PlanSettling

    if opts.stopping not in STOPPINGS:
        raise OptionError(f"{{stopping}} must be one of {', '.join(STOPPINGS)}, got {opts.stopping!r}", "stopping")
    settings: dict[str, Any] = dict(eig_tol=opts.eig_tol, max_iter=opts.max_iter, trace_tol=opts.trace_tol,
                                    max_probes=opts.max_probes, sketch=opts.sketch)
    check_settings(batches=opts.batches, batch_size=opts.batch_size, **settings)
    settings["eigenvalues"] = opts.eigenvalues
    if opts.stopping == "decision":
        if not opts.settle_for:
            raise OptionError("{settle_for} needs at least one budget (13x, 800KB) for decision stopping",
                              "settle_for")
        question = opts.settle_allocation
        check_allocation(opts.settle_for, question, "settle_allocation")
        # budgets asked for must be reachable; the default ones are left out where they are not
        settings["settle"] = PlanSettling(opts.settle_for, question,
                                          required=opts.settle_for != AnalyzeOptions().settle_for)
    return settings


def check_finetune_options(opts: FinetuneOptions) -> None:
    """One-line errors for bad fine-tuning options, before any work."""
    _check_finetune(**{k: getattr(opts, k) for k in FinetuneOptions.__dataclass_fields__
                       if k not in ("seed", "device", "distill")})


# --- the stages -------------------------------------------------------------------------------

def analyze(model: nn.Module | str, data: Any = None, *, options: AnalyzeOptions | None = None,
            weights: PathLike | None = None, input_shape: model_inputs.InputShape | None = None,
            input_fn: Callable | None = None, loss_fn: LossFn | None = None, progress: bool = False,
            **overrides: Any) -> Sensitivity:
    """Per-layer Hessian sensitivity (Hutchinson traces, and HAWQ's top eigenvalue with
    ``eigenvalues=True``) of the BN-folded ``model``.

    By default (``stopping="decision"``) each trace is refined only until more precision cannot
    change the plans at the ``settle_for`` budgets for the ``settle_allocation`` question, and
    sensitivity.json says which; ``stopping="precision"`` refines every trace to ``trace_tol``.

    ``batches`` seeded random batches of ``batch_size`` samples are analysed: from the training
    split of a spec string (as ``hawq-onnx analyze``), from all of the data held in Python.
    ``loss_fn(output, labels)`` replaces cross-entropy as the loss whose Hessian is analysed (it
    must average over the batch and be twice differentiable).
    """
    opts = with_overrides(options, AnalyzeOptions, overrides, "analyze")
    settings = check_analyze_options(opts)  # before the model and data load
    data = reiterable(data)
    loaded = prepare_model(model, weights=weights, input_shape=input_shape, data=data, input_fn=input_fn)
    if data is None or isinstance(data, (str, Dataset)):
        dataset = prepare_data(loaded, data, seed=opts.seed)
        return analyze_model(loaded, dataset, batches=opts.batches, batch_size=opts.batch_size, seed=opts.seed,
                             device=opts.device, progress=progress, loss_fn=loss_fn, **settings)
    split, given, _ = user_data.evaluation_split(data, input_fn=input_fn, labeler=labeler(loaded),
                                                 num_classes=num_classes(loaded))
    batches = list(split.batches(opts.batch_size, shuffle=True, seed=opts.seed, limit=opts.batches))
    return analyze_batches(loaded, batches, user_data.describe(data), batch_size=opts.batch_size, seed=opts.seed,
                           device=opts.device, progress=progress,
                           loss=user_data.loss_name(loss_fn, given), loss_fn=loss_fn, **settings)


def allocate(sensitivity: Sensitivity | PathLike, budget: str | int = "8x", *,
             options: AllocateOptions | None = None, latency: Sequence[LatencyTable | PathLike] = (),
             **overrides: Any) -> Plan:
    """The bits of every layer with the lowest total Omega within ``budget`` (``13x``, ``800KB``,
    or bytes), solved exactly, with the Pareto frontier in the plan. ``max_latency`` holds the
    plan's predicted time under every table of ``latency`` (from :func:`latency_tables`)."""
    opts = with_overrides(options, AllocateOptions, overrides, "allocate")
    if not isinstance(sensitivity, Sensitivity):
        sensitivity = Sensitivity.load(sensitivity)
    tables = [t if isinstance(t, LatencyTable) else LatencyTable.load(t) for t in latency]
    plan = _allocate(sensitivity, budget, w_bits=opts.w_bits, a_bits=opts.a_bits, metric=opts.metric,
                     scale_method=opts.scale_method, weight_range=opts.weight_range, bops_limit=opts.bops,
                     ties=list(opts.ties), pinned=dict(opts.pins), pin_ends=opts.pin_ends,
                     keep_float=list(opts.keep_float), sensitivity_sha256=content_sha256(sensitivity),
                     latency_tables=tables, max_latency=opts.max_latency)
    warning = unsettled_warning(sensitivity, budget, opts)
    if warning:
        log.warning(warning)
    return plan


def latency_tables(model: nn.Module | str, data: Any = None, *, target: str = "ort-cpu",
                   batch_sizes: Sequence[int] = (1, 64), threads: int = 2, w_bits: Sequence[int] = (2, 4, 8),
                   a_bits: Sequence[int] = (4, 8), weights: PathLike | None = None,
                   input_shape: model_inputs.InputShape | None = None, input_fn: Callable | None = None,
                   seed: int = 0) -> list[LatencyTable]:
    """HAWQ-V3's latency table of ``model`` per batch size: each layer's time in float and at each
    precision, inside the network exported for ``target`` (ONNX Runtime), cached per machine.
    ``data`` (its calibration split) calibrates the integer networks that are timed."""
    from hawq_onnx.validation.layer_latency import latency_tables as measure

    data = reiterable(data)
    loaded = prepare_model(model, weights=weights, input_shape=input_shape, data=data, input_fn=input_fn)
    dataset = prepare_data(loaded, data, None, input_fn=input_fn, seed=seed)
    folded = fold_copy(loaded.module, loaded.input_shape)
    return measure(folded, loaded.input_shape, dataset.calib.x, target=target, batch_sizes=batch_sizes,
                   threads=threads, w_bits=w_bits, a_bits=a_bits)


def finetune(model: nn.Module | str, plan: Plan | PathLike, data: Any = None, *, eval_data: Any = None,
             options: FinetuneOptions | None = None, sensitivity: Sensitivity | PathLike | None = None,
             weights: PathLike | None = None, input_shape: model_inputs.InputShape | None = None,
             input_fn: Callable | None = None, loss_fn: LossFn | None = None, progress: bool = False,
             **overrides: Any) -> QuantizedModel:
    """Quantize ``model`` as ``plan`` says and fine-tune it (HAWQ order by default), or calibrate
    only (``order="ptq"``). Without labels, training distils from the float model alone and
    the accuracies are agreement with it; ``loss_fn(output, labels)`` replaces cross-entropy as
    the task term beside distillation."""
    opts = with_overrides(options, FinetuneOptions, overrides, "finetune")
    check_finetune_options(opts)
    data = reiterable(data)
    loaded = prepare_model(model, weights=weights, input_shape=input_shape, data=data, input_fn=input_fn)
    fingerprint = model_fingerprint(fold_copy(loaded.module, loaded.input_shape))
    plan = plan if isinstance(plan, Plan) else Plan.load(plan, fingerprint)
    if sensitivity is not None and not isinstance(sensitivity, Sensitivity):
        sensitivity = Sensitivity.load(sensitivity)
    dataset = prepare_data(loaded, data, eval_data, input_fn=input_fn, seed=opts.seed)
    settings = {k: getattr(opts, k) for k in FinetuneOptions.__dataclass_fields__}
    if not dataset.labels_given:
        settings.update(distill=True, distill_weight=1.0)  # the float model is the only teacher there is
    result = _finetune(loaded, plan, dataset, **settings, progress=progress, sensitivity=sensitivity,
                       loss_fn=loss_fn)
    return QuantizedModel.from_result(result, loaded.input_shape, dataset.calib.x, len(dataset.test))


def export(model: QuantizedModel | nn.Module | str, *, data: Any = None, options: ExportOptions | None = None,
           path: PathLike | None = None, weights: PathLike | None = None,
           input_shape: model_inputs.InputShape | None = None, input_fn: Callable | None = None,
           progress: bool = False, **overrides: Any) -> ExportedModel:
    """ONNX: the mixed-precision QDQ model of a ``QuantizedModel``, or the float model (BatchNorm
    folded, parameter names kept, dynamic batch) of an ``nn.Module`` or model name.

    The QDQ export calibrates the 8-bit tensors between layers on ``data`` (default: the
    fine-tuning's calibration samples) and returns them, named in PyTorch, as the exported
    plan's grids. A float model takes its input shape from ``input_shape``, its own
    ``input_shape`` attribute, or one sample of ``data``. With ``path`` the file (and the exported plan, ``<stem>.plan.json``) is written.
    """
    opts = with_overrides(options, ExportOptions, overrides, "export")
    if isinstance(model, QuantizedModel):
        if data is not None:
            calibration = _calibration_x(model, data, input_fn)
        elif model.calibration_x is not None:
            calibration = model.calibration_x
        else:
            raise HawqError("export: this QuantizedModel carries no calibration samples (it was loaded from a "
                            "file): pass data= to calibrate the tensors between layers")
        q = quantize_onnx(model.float_module(), model.input_shape, model.plan, calibration, target=opts.target,
                          progress=progress)
        exported = ExportedModel(q.model, q.plan, q.target, list(q.warnings), dict(q.bits), q.calibration_samples)
    else:
        if overrides or options is not None:
            raise HawqError("export: target applies to a QuantizedModel; a float model is exported as is")
        data = reiterable(data)  # only its first sample's shape is read, where the model declares none
        loaded = prepare_model(model, weights=weights, input_shape=input_shape, data=data, input_fn=input_fn)
        exported = ExportedModel(float_onnx(fold_copy(loaded.module, loaded.input_shape), loaded.input_shape))
    if path is not None:
        exported.save(path)
    return exported


def _calibration_x(model: QuantizedModel, data: Any, input_fn: Callable | None) -> model_inputs.Arrays:
    if isinstance(data, Dataset):
        return data.calib.x
    if isinstance(data, str):
        raise HawqError("export: data as a spec string needs the model's normalisation; pass arrays or a "
                        "DataLoader of inputs as the model takes them")
    x = user_data.first_inputs(reiterable(data), user_data.CALIBRATION_SIZE, input_fn)
    if model_inputs.shape_of(x) != model.input_shape:
        raise HawqError(f"export: data samples have shape {model_inputs.describe(model_inputs.shape_of(x))}, the "
                        f"model takes {model_inputs.describe(model.input_shape)}")
    return x


@contextmanager
def _onnx_files(*models: OnnxLike | None) -> Iterator[list[Path | None]]:
    """Paths for ONNX models given as files, ModelProtos or ExportedModels (the latter written to a
    temporary folder that is removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="hawq-api-") as tmp:
        paths: list[Path | None] = []
        for i, m in enumerate(models):
            if m is None:
                paths.append(None)
            elif isinstance(m, (onnx.ModelProto, ExportedModel)):
                paths.append(save_onnx(m.model if isinstance(m, ExportedModel) else m, Path(tmp) / f"model{i}.onnx"))
            else:
                paths.append(Path(m))
        yield paths


def _onnx_scores(path: Path, threads: int) -> Callable[[model_inputs.Arrays], np.ndarray]:
    from hawq_onnx.validation.ort_eval import model_io, open_session, predict

    session = open_session(path, threads)
    io = model_io(session, path)
    return lambda x: predict(session, io, x)


def _eval_dataset(data: Any, float_path: Path, threads: int, input_fn: Callable | None) -> Dataset:
    scores = _onnx_scores(float_path, threads)
    data = reiterable(data)
    classes = int(scores(user_data.first_inputs(data, 1, input_fn)).shape[1])
    test, given, _ = user_data.evaluation_split(data, input_fn=input_fn, num_classes=classes,
                                                labeler=lambda v: scores(v).argmax(axis=1).astype(np.int64))
    name = user_data.describe(data) + ("" if given else f"; {user_data.FLOAT_MODEL_LABELS}")
    first = np.arange(min(len(test), user_data.CALIBRATION_SIZE))
    calib = test.take(len(first)) if isinstance(test, Split) else Split(*test.gather(first))
    return Dataset(name, calib, calib, test, classes, labels_given=given, samples=len(test))


def _as_scores(fn: Callable) -> Callable[[model_inputs.Arrays], np.ndarray]:
    """A user's reference function with its output as a numpy array, whatever it returns."""
    def scores(x: model_inputs.Arrays) -> np.ndarray:
        out = model_inputs.scores(fn(x))
        return out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    return scores


def _reference(reference: QuantizedModel | Callable | None, quant: OnnxLike) -> Callable | None:
    if isinstance(reference, nn.Module):
        module = reference
        return lambda x: predict_scores(module, x)
    if reference is None or callable(reference) and not isinstance(reference, QuantizedModel):
        return None if reference is None else _as_scores(reference)
    if not isinstance(reference, QuantizedModel):
        raise HawqError(f"validate: reference must be a QuantizedModel or a function of inputs, "
                        f"got {type(reference).__name__}")
    exported = quant if isinstance(quant, ExportedModel) else None
    if exported is None and not isinstance(quant, onnx.ModelProto):
        exported = ExportedModel.load(quant)  # picks up <stem>.plan.json where export wrote one
    plan = exported.plan if exported is not None and exported.plan is not None else reference.plan
    shape = reference.input_shape
    names = shape.names if isinstance(shape, model_inputs.Signature) and shape.form == "keyword" else None
    module = reference_model(reference.float_module(), plan, names)
    return lambda x: predict_scores(module, x)


def validate(float_model: OnnxLike, quantized_model: OnnxLike, data: Any = None, *,
             reference: QuantizedModel | Callable[[np.ndarray], np.ndarray] | None = None,
             sensitivity: Sensitivity | PathLike | None = None, options: ValidateOptions | None = None,
             input_shape: model_inputs.InputShape | None = None, input_fn: Callable | None = None,
             model: str | None = None, baseline_out: PathLike | None = None, progress: bool = False,
             **overrides: Any) -> ValidationReport:
    """ONNX Runtime top-1, agreement, latency, size and kernels of the quantized model against the
    float one (files, ModelProtos or ExportedModels), and, with ``reference`` (the QuantizedModel
    it was exported from), its agreement with PyTorch. ``data`` held in Python is evaluated whole
    (without labels, against the float model's top-1); a spec string is normalised by the ONNX
    metadata or by ``model`` (a zoo name or FILE.py:factory), as ``hawq-onnx validate`` does.
    Without ``data``: the model's own data (``model``'s, else the default model's), as the other
    stages default.
    ``baseline_out`` keeps the ``baseline`` model (ONNX Runtime's own int8) there."""
    opts = with_overrides(options, ValidateOptions, overrides, "validate")
    ref = _reference(reference, quantized_model)
    with _onnx_files(float_model, quantized_model) as (fpath, qpath), tempfile.TemporaryDirectory() as tmp:
        sens_path = sensitivity
        if isinstance(sensitivity, Sensitivity):
            sens_path = sensitivity.save(Path(tmp) / "sensitivity.json")
        if data is None or isinstance(data, (str, Dataset)):
            dataset = data
        else:
            dataset = _eval_dataset(data, fpath, opts.threads, input_fn)
        return _validate(fpath, qpath, dataset, model_ref=model, input_shape=input_shape, threads=opts.threads,
                         batch_sizes=opts.batch_sizes, runs=opts.runs, warmup=opts.warmup, provider=opts.provider,
                         runtime=opts.runtime or "ort",
                         baseline=opts.baseline, baseline_out=baseline_out, sensitivity=sens_path, limit=opts.limit,
                         eval_batch_size=opts.eval_batch_size, max_drop=opts.max_drop, reference=ref,
                         progress=progress)


def package(model: OnnxLike, out: PathLike, *, report: ValidationReport | PathLike | None = None,
            as_zip: bool = False, model_ref: str | None = None, full: bool = False) -> PackageResult:
    """An ONNX Runtime bundle of ``model``: the .ort, the operator config for a minimal build and a
    manifest (with ``report``'s figures), after checking the .ort matches the .onnx; ``full`` adds
    the .onnx. The result's ``costs`` say what each file takes on disk."""
    with _onnx_files(model) as (path,), tempfile.TemporaryDirectory() as tmp:
        report_path = report
        if isinstance(report, ValidationReport):
            report_path = report.save(Path(tmp) / "report.json")
        return build_bundle(path, out, report=report_path, model_ref=model_ref, as_zip=as_zip, full=full)


def inspect(model: OnnxLike) -> Inspection | Bundle:
    """The per-layer table of an ONNX model (op, weight shape, params, MACs, storage, bits, bytes),
    or, for a ``package`` bundle (folder or .zip), the bundle with its manifest."""
    if isinstance(model, ExportedModel):
        return inspect_onnx(model.model)
    if isinstance(model, onnx.ModelProto):
        return inspect_onnx(model)
    if is_bundle(model):
        return read_bundle(model)
    return inspect_onnx(model)
