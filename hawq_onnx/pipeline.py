"""`quantize`: analyze -> allocate -> finetune -> export -> validate, in one output folder.

Each stage is the Python API's function of the same name (:mod:`hawq_onnx.api`); this module
chains them and keeps their files.

Each stage's output is reused when the stage's inputs did not change: a stage key (the hash of
its options and of the files it reads) and the hashes of its outputs are kept in
``.hawq-stages.json`` in the folder. A stage whose key matches and whose outputs are still there,
unmodified, is skipped (unless ``force``), so a long analysis is not repeated after a later
failure. Stages run in order; each writes its files atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import hawq_onnx.api as api
from hawq_onnx.core import model_inputs
from hawq_onnx.errors import GateFailure, HawqError, OptionError
from hawq_onnx.io.atomic import read_json, sha256_file, write_json
from hawq_onnx.io.folder_lock import locked_folder
from hawq_onnx.core.bn_fold import fold_copy
from hawq_onnx.options import QuantizeOptions, ValidateOptions
from hawq_onnx.passes.target_profiles import resolve
from hawq_onnx.results import QuantizeResult

log = logging.getLogger(__name__)

STAGES_FILE = ".hawq-stages.json"
PIPELINE_VERSION = 1


class StageCache:
    """Which stages' outputs can be reused: their key and the hashes of what they wrote."""

    def __init__(self, out_dir: Path, force: bool) -> None:
        self.path = out_dir / STAGES_FILE
        self.force = force
        self.records: dict[str, Any] = {}
        if self.path.is_file():
            try:
                obj = read_json(self.path, "stage record")
                if isinstance(obj, dict) and obj.get("version") == PIPELINE_VERSION:
                    self.records = obj.get("stages", {})
            except HawqError:
                self.records = {}  # unreadable bookkeeping: recompute everything

    def fresh(self, stage: str, key: str, outputs: Sequence[Path]) -> bool:
        rec = self.records.get(stage)
        if self.force or not rec or rec.get("key") != key:
            return False
        for p in outputs:
            if not p.is_file() or rec.get("outputs", {}).get(p.name) != sha256_file(p):
                return False
        return True

    def record(self, stage: str, key: str, outputs: Sequence[Path]) -> None:
        self.records[stage] = {"key": key, "outputs": {p.name: sha256_file(p) for p in outputs}}
        write_json(self.path, {"version": PIPELINE_VERSION, "stages": self.records})


def stage_key(stage: str, **parts: Any) -> str:
    text = json.dumps({"stage": stage, "version": PIPELINE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _file_id(path: str | Path | None) -> str | None:
    return sha256_file(path) if path and Path(path).is_file() else None


def _arrays_id(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _split_id(split) -> str:
    """A content hash of a split read batch by batch (a streamed one is read once more for it)."""
    return _arrays_id(t.numpy() for x, y in split.batches(1024) for t in model_inputs.leaves(x) + [y])


def _model_id(loaded, weights: str | Path | None, data: Any, dataset) -> dict[str, Any]:
    """What identifies the model and data a stage read: file hashes, or content hashes of what a
    Python caller passed (a module's weights, the data as the stages see it)."""
    if loaded.reference.startswith("python:"):
        weights_id = _arrays_id(t.detach().cpu().numpy() for t in loaded.module.state_dict().values())
    else:
        weights_id = _file_id(loaded.weights)
    if data is None or isinstance(data, str):
        data_id = dataset.name
    else:
        data_id = hashlib.sha256((_split_id(dataset.train) + _split_id(dataset.test)).encode()).hexdigest()
    return {"model": loaded.reference, "weights": weights_id, "input_shape": model_inputs.shape_json(loaded.input_shape),
            "data": data_id}


def check_options(budget: str, opts: QuantizeOptions) -> None:
    """Every stage's options, checked as that stage would, before the first stage starts."""
    from hawq_onnx.validation.validate import check_options as check_validate

    api.check_allocation([budget], opts.allocate, "candidates")
    api.check_analyze_options(opts.analyze)
    api.check_finetune_options(opts.finetune)
    if opts.allocate.max_latency is not None:  # measured on the export target's runtime
        runtime = resolve(opts.export.target).runtime
        if runtime not in ("onnxruntime", "openvino"):
            raise OptionError(f"{{max_latency}} is measured on the target's runtime; {{target}} "
                              f"{opts.export.target!r} names none", "max_latency", "target")
        if runtime == "openvino":
            from hawq_onnx.validation.openvino_runtime import openvino_module

            openvino_module()  # installed, or the one-line hint, before any work
    v = validate_options(opts)
    check_validate(baseline=v.baseline, limit=v.limit, max_drop=v.max_drop, runs=v.runs, threads=v.threads,
                   batch_sizes=v.batch_sizes, runtime=v.runtime, provider=v.provider)


def validate_options(opts: QuantizeOptions) -> ValidateOptions:
    """The validation options with the runtime named: by default the one the export target is for."""
    if opts.validate.runtime is not None:
        return opts.validate
    try:
        runtime = "openvino" if resolve(opts.export.target).runtime == "openvino" else "ort"
    except ValueError as exc:
        raise OptionError(f"{{target}}: {exc}", "target") from None
    return replace(opts.validate, runtime=runtime)


def quantize(model: Any = None, data: Any = None, eval_data: Any = None, budget: str = "8x",
             out: str | Path | None = None, *, options: QuantizeOptions | None = None,
             weights: str | Path | None = None, input_shape: tuple[int, ...] | None = None,
             input_fn: Callable | None = None, loss_fn: Callable | None = None, force: bool = False,
             progress: bool = False, say: Callable[[str], None] = lambda line: None) -> QuantizeResult:
    """Analyze, allocate, fine-tune, export and validate ``model`` on ``data``.

    With ``out``, every artefact lands in that folder under the names ``hawq-onnx quantize``
    uses, and a stage whose inputs did not change is reused (``force`` recomputes). Without it
    the stages run in a temporary folder that is removed; the result holds the objects either
    way. ``model`` and ``data`` are what :mod:`hawq_onnx.api` takes (None: the embedded default,
    the zoo's digits CNN on scikit-learn's digits); ``loss_fn(output, labels)`` replaces
    cross-entropy in the analysis and fine-tuning; ``say`` receives one line per stage.
    """
    opts = options or QuantizeOptions()
    if not isinstance(opts, QuantizeOptions):
        raise HawqError(f"quantize: options must be a QuantizeOptions, got {type(opts).__name__}")
    # quantize settles the traces for its own plan: this budget, this allocation
    opts = replace(opts, analyze=replace(opts.analyze, settle_for=(str(budget),), settle_allocation=opts.allocate))
    check_options(budget, opts)  # every argument before any work: a typo must not cost an analysis
    if out is not None:
        result = _run(model, data, eval_data, budget, Path(out), opts, weights, input_shape, input_fn, loss_fn,
                      force, progress, say, identify=True)
    else:
        with tempfile.TemporaryDirectory(prefix="hawq-quantize-") as tmp:
            result = _run(model, data, eval_data, budget, Path(tmp), opts, weights, input_shape, input_fn,
                          loss_fn, True, progress, say, identify=False)
        result.out_dir, result.files = None, {}
    if result.report is not None:
        result.report.check_gate()
    elif opts.validate.max_drop is not None and result.drop_points > opts.validate.max_drop + 1e-9:
        raise GateFailure(f"top-1 drop {result.drop_points:.2f} points exceeds {{max_drop}} "
                          f"{opts.validate.max_drop:g}", "max_drop")
    return result


def _run(model: Any, data: Any, eval_data: Any, budget: str, out: Path, opts: QuantizeOptions,
         weights: str | Path | None, input_shape: tuple[int, ...] | None, input_fn: Callable | None,
         loss_fn: Callable | None, force: bool, progress: bool, say: Callable[[str], None],
         identify: bool) -> QuantizeResult:
    data, eval_data = api.reiterable(data), api.reiterable(eval_data)  # read a generator once, whole
    start = time.perf_counter()
    if out.exists() and not out.is_dir():
        raise HawqError(f"out {out} is a file; give a folder")
    files = {name: out / name for name in (
        "sensitivity.json", "sensitivity.png", "plan.json", "pareto.png", "quantized.pt", "quantized.plan.json",
        "model.float.onnx", "model.qdq.onnx", "model.qdq.plan.json", "report.json", "report.md",
        "report.html")}
    from hawq_onnx.sources.inputs import input_paths

    for item in input_paths(model if isinstance(model, str) else None, weights, data if isinstance(data, str) else None):
        if any(item.resolve() == path.resolve() for path in files.values()):
            raise OptionError(f"the input {item} would be overwritten by an output; choose another {{out}} folder",
                              "out")
        if item.is_dir() and out.resolve().is_relative_to(item.resolve()):
            raise OptionError(f"{{out}} {out} is inside the input folder {item}; choose another {{out}} folder", "out")

    loaded = api.prepare_model(model, weights=weights, input_shape=input_shape, data=data, input_fn=input_fn)
    dataset = api.prepare_data(loaded, data, eval_data, input_fn=input_fn, seed=opts.analyze.seed)
    # Inputs are checked before anything is written: a bad model or data leaves no folder behind.
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HawqError(f"cannot create output folder {out}: {exc.strerror}") from None
    with locked_folder(out):
        return _stages(loaded, dataset, data, budget, out, files, opts, weights, force, progress, say, identify,
                       start, loss_fn)


def _stages(loaded, dataset, data: Any, budget: str, out: Path, files: dict[str, Path], opts: QuantizeOptions,
            weights: str | Path | None, force: bool, progress: bool, say: Callable[[str], None], identify: bool,
            start: float, loss_fn: Callable | None) -> QuantizeResult:
    from hawq_onnx.allocation.plot import plot_pareto
    from hawq_onnx.io.plan import Plan
    from hawq_onnx.io.sensitivity_report import Sensitivity
    from hawq_onnx.qat.finetune import DEFAULT_EPOCHS
    from hawq_onnx.results import ExportedModel, QuantizedModel
    from hawq_onnx.sensitivity.plot import plot_sensitivity
    from hawq_onnx.validation.report import ReportOrigin, write_reports

    reused: list[str] = []
    ran: list[str] = []
    cache = StageCache(out, force)
    # Without a folder to reuse stages from, the data is not read again to identify it.
    model_id = _model_id(loaded, weights, data, dataset) if identify else {}
    if loss_fn is not None:  # a function is known by its name: rename it to recompute
        model_id["loss"] = getattr(loss_fn, "__qualname__", repr(loss_fn))
    objects: dict[str, Any] = {}

    def stage(name: str, key: str, outputs: Sequence[Path], work: Callable[[], None]) -> None:
        step = len(reused) + len(ran) + 1
        if cache.fresh(name, key, outputs):
            reused.append(name)
            say(f"[{step}/5] {name}: reused {', '.join(p.name for p in outputs)} (inputs unchanged)")
            return
        say(f"[{step}/5] {name} ...")
        t = time.perf_counter()
        work()
        cache.record(name, key, outputs)
        ran.append(name)
        say(f"[{step}/5] {name}: wrote {', '.join(p.name for p in outputs)} in {time.perf_counter() - t:.1f} s")

    # 1. Hessian sensitivity of the BN-folded model on training batches.
    def analyze_stage() -> None:
        report = api.analyze(loaded, dataset, options=opts.analyze, loss_fn=loss_fn, progress=progress)
        report.save(files["sensitivity.json"])
        plot_sensitivity(report, files["sensitivity.png"])

    analyze_key = asdict(opts.analyze)
    if opts.analyze.stopping == "precision":  # its traces answer every budget alike
        del analyze_key["settle_for"], analyze_key["settle_allocation"]
    stage("analyze", stage_key("analyze", **model_id, **analyze_key),
          [files["sensitivity.json"], files["sensitivity.png"]], analyze_stage)

    # 2. Bits per layer under the budget.
    def allocate_stage() -> None:
        tables = []
        if opts.allocate.max_latency is not None:
            from hawq_onnx.validation.layer_latency import latency_tables

            log.info("allocate: timing the layers on this machine (cached per machine)")
            tables = latency_tables(fold_copy(loaded.module, loaded.input_shape), loaded.input_shape,
                                    dataset.calib.x, target=opts.export.target,
                                    batch_sizes=opts.allocate.latency_batch_sizes, threads=opts.validate.threads,
                                    w_bits=opts.allocate.w_bits, a_bits=opts.allocate.a_bits)
        plan = api.allocate(files["sensitivity.json"], budget, options=opts.allocate, latency=tables)
        plan.save(files["plan.json"])
        plot_pareto(plan, files["pareto.png"])

    stage("allocate", stage_key("allocate", sensitivity=_file_id(files["sensitivity.json"]), budget=budget,
                                **asdict(opts.allocate),
                                **({"latency_target": resolve(opts.export.target).name}
                                   if opts.allocate.max_latency is not None else {})),
          [files["plan.json"], files["pareto.png"]], allocate_stage)

    # 3. Fine-tuning (or calibration only) of the plan.
    def finetune_stage() -> None:
        tuned = api.finetune(loaded, files["plan.json"], dataset, options=opts.finetune, progress=progress,
                             sensitivity=Sensitivity.load(files["sensitivity.json"]), loss_fn=loss_fn)
        tuned.save(files["quantized.pt"])
        tuned.plan.save(files["quantized.plan.json"])
        objects["quantized"] = tuned
        say(f"      fine-tuned (PyTorch, plan grids only) top-1 {100 * tuned.quant_accuracy:.2f} % "
            f"(float {100 * tuned.float_accuracy:.2f} %)")

    stage("finetune", stage_key("finetune", **model_id, plan=_file_id(files["plan.json"]), **asdict(opts.finetune)),
          [files["quantized.pt"], files["quantized.plan.json"]], finetune_stage)
    quantized = objects.get("quantized") or QuantizedModel.restore(loaded, files["quantized.pt"])

    # 4. Float and quantized ONNX.
    def export_stage() -> None:
        api.export(loaded).save(files["model.float.onnx"])
        exported = api.export(quantized, data=dataset, options=opts.export, progress=progress)
        exported.save(files["model.qdq.onnx"], files["model.qdq.plan.json"])

    # The profile ort-cpu stands for on this CPU: a folder exported for another CPU is exported again.
    stage("export", stage_key("export", **model_id, quantized=_file_id(files["quantized.pt"]),
                              **asdict(replace(opts.export, target=resolve(opts.export.target).name))),
          [files["model.float.onnx"], files["model.qdq.onnx"], files["model.qdq.plan.json"]], export_stage)
    exported = ExportedModel.load(files["model.qdq.onnx"], files["model.qdq.plan.json"])

    # 5. Validation under ONNX Runtime, against the PyTorch model the file should reproduce.
    def validate_stage() -> None:
        # The file by its path (its plan beside it), so that the reports name it and not a temporary copy.
        result = api.validate(files["model.float.onnx"], files["model.qdq.onnx"], dataset, reference=quantized,
                              sensitivity=files["sensitivity.json"], options=validate_options(opts),
                              progress=progress)
        result.save(files["report.json"])
        epochs = None if opts.finetune.steps is not None else (
            DEFAULT_EPOCHS if opts.finetune.epochs is None else opts.finetune.epochs)
        origin = ReportOrigin(plan=exported.plan, sensitivity=Sensitivity.load(files["sensitivity.json"]),
                              epochs=epochs,
                              target=exported.target, finetuned_samples=len(dataset.test),
                              sensitivity_png=files["sensitivity.png"], pareto_png=files["pareto.png"])
        write_reports(result, files["report.md"], origin)
        objects["report"] = result

    stage("validate", stage_key("validate", float=_file_id(files["model.float.onnx"]),
                                quant=_file_id(files["model.qdq.onnx"]), plan=_file_id(files["model.qdq.plan.json"]),
                                data=model_id.get("data"), **asdict(validate_options(opts))),
          [files["report.json"], files["report.md"], files["report.html"]], validate_stage)

    report_json = read_json(files["report.json"], "report")
    plan = Plan.load(files["quantized.plan.json"])
    models = report_json["models"]
    f, q = models["float"], models["quantized"]
    tuned = (plan.calibration or {}).get("quant_top1")
    same_samples = report_json["data"]["samples"] == len(dataset.test)
    return QuantizeResult(
        out_dir=out, reused=reused, ran=ran, files=files,
        float_top1=f["accuracy"]["top1"], quant_top1=q["accuracy"]["top1"], drop_points=float(q["drop_points"]),
        weight_ratio=float(plan.totals.get("ratio", 0.0)), file_ratio=f["file_bytes"] / q["file_bytes"],
        latency_speedup={int(b): float(v) for b, v in (q.get("speedup") or {}).items()},
        latency_spread={int(b): v for b, v in (q.get("speedup_spread") or {}).items()},
        fake_quant_agreement=(report_json.get("fake_quant_agreement") or {}).get("top1"),
        finetuned_top1=tuned,
        export_cost_points=100.0 * (tuned - q["accuracy"]["top1"]) if tuned is not None and same_samples else None,
        seconds=time.perf_counter() - start, gate_passed=(report_json.get("gate") or {}).get("passed"),
        sensitivity=Sensitivity.load(files["sensitivity.json"]), plan=plan, quantized=quantized,
        exported=exported, report=objects.get("report"), runtime=report_json.get("runtime") or "ONNX Runtime")
