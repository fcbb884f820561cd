"""`quantize`: analyze -> allocate -> finetune -> export -> validate, in one output folder.

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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from hawq_onnx.errors import HawqError
from hawq_onnx.io.atomic import read_json, sha256_file, write_json

log = logging.getLogger(__name__)

STAGES_FILE = ".hawq-stages.json"
PIPELINE_VERSION = 1


@dataclass
class QuantizeConfig:
    """Everything `quantize` needs; the defaults are the embedded default job."""

    model_ref: str | None = None
    weights: str | None = None
    input_shape: tuple[int, ...] | None = None
    data: str | None = None
    budget: str = "8x"
    w_bits: Sequence[int] = (2, 4, 8)
    a_bits: Sequence[int] = (4,)
    weight_range: str = "narrow"
    metric: str = "trace"
    analysis_batches: int = 1
    analysis_batch_size: int = 256
    epochs: float | None = None
    order: str = "hawq"
    lr: float | None = None  # None: fine-tuning's default for its optimizer
    step_lr: float | None = None  # quantized weights' peak lr in units of their step; None: lr
    batch_size: int = 128
    distill: bool = True
    data_fraction: float = 1.0
    target: str = "ort-cpu"
    device: str = "cpu"
    seed: int = 0
    baseline: str | None = None
    latency_runs: int = 50
    threads: int = 2
    max_drop: float | None = None
    force: bool = False


@dataclass
class QuantizeSummary:
    out_dir: Path
    reused: list[str]
    ran: list[str]
    files: dict[str, Path]
    float_top1: float
    quant_top1: float
    drop_points: float
    weight_ratio: float            # float32 weight bytes / nominal quantized weight bytes (the plan)
    file_ratio: float              # float file bytes / quantized file bytes
    latency_speedup: dict[int, float] = field(default_factory=dict)  # batch -> float ms / quantized ms
    fake_quant_agreement: float | None = None  # top-1 agreement of the file with the PyTorch fake-quant model
    seconds: float = 0.0
    gate_passed: bool | None = None


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


def run_quantize(cfg: QuantizeConfig, out_dir: str | Path, *, progress: bool = True,
                 say: Callable[[str], None] = lambda line: None) -> QuantizeSummary:
    """Run every stage into ``out_dir`` and return the figures of the final validation."""
    from hawq_onnx.allocation.plot import plot_pareto
    from hawq_onnx.allocation.solve import allocate
    from hawq_onnx.core.bn_fold import fold_copy
    from hawq_onnx.io.plan import load_plan, save_plan
    from hawq_onnx.io.sensitivity_report import load_sensitivity, save_sensitivity
    from hawq_onnx.onnx_export.float_onnx import float_onnx, save_onnx
    from hawq_onnx.onnx_export.qdq import quantize_onnx
    from hawq_onnx.qat.checkpoint import restore_quantized, save_quantized
    from hawq_onnx.qat.finetune import finetune, predict_scores
    from hawq_onnx.qat.region_grids import reference_model
    from hawq_onnx.sensitivity.hessian import analyze_model
    from hawq_onnx.sensitivity.plot import plot_sensitivity
    from hawq_onnx.sources.data import load_data, resolve_source, sample_shape
    from hawq_onnx.sources.model import load_model
    from hawq_onnx.validation.report import write_markdown, write_result_json
    from hawq_onnx.validation.validate import validate

    start = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise HawqError(f"--out {out} is a file; give a folder")
    files = {name: out / name for name in (
        "sensitivity.json", "sensitivity.png", "plan.json", "pareto.png", "quantized.pt", "quantized.plan.json",
        "model.float.onnx", "model.qdq.onnx", "model.qdq.plan.json", "report.json", "report.md")}
    for p in (cfg.weights,):
        if p and Path(p).resolve().parent == out.resolve() and Path(p).name in files:
            raise HawqError(f"--weights {p} would be overwritten by an output; choose another --out folder")
    reused: list[str] = []
    ran: list[str] = []

    loaded = load_model(cfg.model_ref, cfg.weights, cfg.input_shape, data_shape=sample_shape(cfg.data))
    source = resolve_source(cfg.data, loaded.spec)
    dataset = load_data(source, loaded.spec, seed=cfg.seed)
    # Inputs are checked before anything is written: a bad model or data leaves no folder behind.
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HawqError(f"cannot create output folder {out}: {exc.strerror}") from None
    cache = StageCache(out, cfg.force)
    model_id = {"model": loaded.reference, "weights": _file_id(loaded.weights),
                "input_shape": list(loaded.input_shape), "data": source}

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
    analyze_opts = {"batches": cfg.analysis_batches, "batch_size": cfg.analysis_batch_size, "seed": cfg.seed}

    def analyze() -> None:
        report = analyze_model(loaded, dataset, **analyze_opts, device=cfg.device, progress=progress)
        save_sensitivity(report, files["sensitivity.json"])
        plot_sensitivity(report, files["sensitivity.png"])

    stage("analyze", stage_key("analyze", **model_id, **analyze_opts),
          [files["sensitivity.json"], files["sensitivity.png"]], analyze)

    # 2. Bits per layer under the budget.
    alloc_opts = {"budget": cfg.budget, "w_bits": list(cfg.w_bits), "a_bits": list(cfg.a_bits), "metric": cfg.metric,
                  "weight_range": cfg.weight_range}

    def allocate_stage() -> None:
        report = load_sensitivity(files["sensitivity.json"])
        plan = allocate(report, cfg.budget, w_bits=cfg.w_bits, a_bits=cfg.a_bits, metric=cfg.metric,
                        weight_range=cfg.weight_range, sensitivity_sha256=sha256_file(files["sensitivity.json"]))
        save_plan(plan, files["plan.json"])
        plot_pareto(plan, files["pareto.png"])

    stage("allocate", stage_key("allocate", sensitivity=_file_id(files["sensitivity.json"]), **alloc_opts),
          [files["plan.json"], files["pareto.png"]], allocate_stage)

    # 3. Fine-tuning (or calibration only) of the plan.
    tune_opts = {"order": cfg.order, "epochs": cfg.epochs, "lr": cfg.lr, "step_lr": cfg.step_lr,
                 "batch_size": cfg.batch_size,
                 "distill": cfg.distill, "data_fraction": cfg.data_fraction, "seed": cfg.seed}

    def finetune_stage() -> None:
        from hawq_onnx.sources.model import model_fingerprint

        fingerprint = model_fingerprint(fold_copy(loaded.module, loaded.input_shape))
        plan = load_plan(files["plan.json"], fingerprint)
        report = load_sensitivity(files["sensitivity.json"])
        result = finetune(loaded, plan, dataset, **tune_opts, device=cfg.device, progress=progress,
                          sensitivity=report)
        save_quantized(result, files["quantized.pt"])
        save_plan(result.plan, files["quantized.plan.json"])
        say(f"      fake-quant top-1 {100 * result.quant_accuracy:.2f} % (float {100 * result.float_accuracy:.2f} %)")

    stage("finetune", stage_key("finetune", **model_id, plan=_file_id(files["plan.json"]), **tune_opts),
          [files["quantized.pt"], files["quantized.plan.json"]], finetune_stage)

    # 4. Float and quantized ONNX.
    def export_stage() -> None:
        folded = fold_copy(loaded.module, loaded.input_shape)
        save_onnx(float_onnx(folded, loaded.input_shape), files["model.float.onnx"])
        tuned, plan = restore_quantized(loaded, files["quantized.pt"])
        exported = quantize_onnx(tuned, loaded.input_shape, plan, dataset.calib.x, target=cfg.target,
                                 progress=progress)
        save_onnx(exported.model, files["model.qdq.onnx"])
        save_plan(exported.plan, files["model.qdq.plan.json"])

    stage("export", stage_key("export", **model_id, quantized=_file_id(files["quantized.pt"]), target=cfg.target),
          [files["model.float.onnx"], files["model.qdq.onnx"], files["model.qdq.plan.json"]], export_stage)

    # 5. Validation under ONNX Runtime.
    val_opts = {"baseline": cfg.baseline, "runs": cfg.latency_runs, "threads": cfg.threads,
                "max_drop": cfg.max_drop}
    result_box: dict[str, Any] = {}

    def validate_stage() -> None:
        tuned, _ = restore_quantized(loaded, files["quantized.pt"])
        qmodel = reference_model(tuned.cpu(), load_plan(files["model.qdq.plan.json"]))

        def reference(x):  # the fake-quant model the file should reproduce, on the CPU like the file
            return predict_scores(qmodel, x)

        result = validate(files["model.float.onnx"], files["model.qdq.onnx"], dataset, model_ref=None,
                          input_shape=loaded.input_shape, threads=cfg.threads, runs=cfg.latency_runs,
                          baseline=cfg.baseline, sensitivity=files["sensitivity.json"], max_drop=cfg.max_drop,
                          reference=reference, progress=progress)
        write_result_json(result, files["report.json"])
        write_markdown(result, files["report.md"])
        result_box["result"] = result

    stage("validate", stage_key("validate", float=_file_id(files["model.float.onnx"]),
                                quant=_file_id(files["model.qdq.onnx"]), plan=_file_id(files["model.qdq.plan.json"]),
                                data=source, **val_opts),
          [files["report.json"], files["report.md"]], validate_stage)

    report_json = read_json(files["report.json"], "report")
    plan = load_plan(files["quantized.plan.json"])
    summary = _summarise(out, report_json, plan, reused, ran, files, time.perf_counter() - start)
    if "result" in result_box:
        result_box["result"].check_gate()
    elif cfg.max_drop is not None and summary.drop_points > cfg.max_drop + 1e-9:
        from hawq_onnx.errors import GateFailure
        raise GateFailure(f"top-1 drop {summary.drop_points:.2f} points exceeds --max-drop {cfg.max_drop:g}")
    return summary


def _summarise(out: Path, report: dict[str, Any], plan, reused: list[str], ran: list[str],
               files: dict[str, Path], seconds: float) -> QuantizeSummary:
    models = report["models"]
    f, q = models["float"], models["quantized"]
    return QuantizeSummary(
        out_dir=out, reused=reused, ran=ran, files=files,
        float_top1=f["accuracy"]["top1"], quant_top1=q["accuracy"]["top1"],
        drop_points=float(q["drop_points"]),
        weight_ratio=float(plan.totals.get("ratio", 0.0)),
        file_ratio=f["file_bytes"] / q["file_bytes"],
        latency_speedup={int(b): float(v) for b, v in (q.get("speedup") or {}).items()},
        fake_quant_agreement=(report.get("fake_quant_agreement") or {}).get("top1"), seconds=seconds)


def summary_json(summary: QuantizeSummary) -> dict[str, Any]:
    d = asdict(summary)
    d["out_dir"] = str(summary.out_dir)
    d["files"] = {k: str(v) for k, v in summary.files.items()}
    return d
