"""What a validation cannot measure but a reader needs: how the quantized model was made.

``validate`` sees two ONNX files; the settings that produced the second one (budget, bits,
seeds, data, loss, fine-tuning length) live in the plan and the sensitivity analysis. The
pipeline hands them over here so that the report can state them in words, and can compare the
fine-tuned PyTorch model with the exported file (the export's cost).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hawq_onnx.io.plan import Plan, exported_plan_path, load_plan
from hawq_onnx.io.sensitivity_report import Sensitivity
from hawq_onnx.passes.target_profiles import PROFILES

# hawq_onnx.sources.user_data.FLOAT_MODEL_LABELS, the mark of data without labels in its name.
NO_LABELS_MARK = "labels: the float model's top-1"

ORDER_WORDS = {"hawq": "block by block, the most sensitive blocks first (HAWQ's order)",
               "single": "all layers quantized at once from the first step",
               "ptq": "calibration only (no training)"}
TARGET_WORDS = {name: p.summary for name, p in PROFILES.items()}


@dataclass
class ReportOrigin:
    """How the quantized file was made; every field optional."""

    plan: Plan | None = None            # the plan as exported (calibration record, budget, frontier, grids)
    sensitivity: Sensitivity | None = None
    epochs: float | None = None         # fine-tuning length asked for, where given in epochs
    target: str | None = None           # export target
    finetuned_samples: int | None = None   # test samples behind the plan's fine-tuned top-1
    sensitivity_png: Path | None = None
    pareto_png: Path | None = None

    @property
    def calibration(self) -> dict[str, Any]:
        return (self.plan.calibration or {}) if self.plan is not None else {}

    @property
    def finetuned_top1(self) -> float | None:
        """Top-1 of the fine-tuned PyTorch model (the plan's grids only) on the test split."""
        value = self.calibration.get("quant_top1")
        return None if value is None else float(value)

    def export_cost_points(self, exported_top1: float, samples: int) -> float | None:
        """Fine-tuned top-1 minus the exported file's, in points; None when they were not measured
        on the same samples (a validation ``limit``) or the fine-tuned figure is unknown."""
        tuned = self.finetuned_top1
        if tuned is None or self.finetuned_samples != samples:
            return None
        return 100.0 * (tuned - exported_top1)


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _mix(plan: Plan) -> str:
    counts: dict[str, int] = {}
    for layer in plan.layers:
        key = "float" if layer.w_bits is None else f"{layer.w_bits}-bit"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} layer{'s' if n > 1 else ''} at {k}" for k, n in sorted(counts.items()))


def _analysis_row(sens: Sensitivity) -> str:
    s = sens.settings
    loss = s.get("loss", "cross_entropy")
    text = (f"Hessian of the {loss} loss on {s.get('samples', '?'):,} {s.get('split', 'training')} samples "
            f"({s.get('batches', '?')} batch(es) of {s.get('batch_size', '?')})" if isinstance(s.get("samples"), int)
            else f"Hessian of the {loss} loss on training samples")
    text += f", seed {s.get('seed', '?')}; per layer its largest eigenvalue and its trace"
    if s.get("bn_folded"):
        text += ", on the model with BatchNorm folded into the convolutions"
    return text


def _allocation_row(plan: Plan) -> str:
    b, t, a = plan.budget, plan.totals, plan.allocation
    parts = []
    if b.get("text"):
        limit = f" (weights at most {b['bytes']:,} bytes)" if b.get("bytes") else ""
        parts.append(f"budget {b['text']}{limit}")
    if b.get("bops_text"):
        parts.append(f"compute budget {b['bops_text']}")
    cand = a.get("candidates") or {}
    if cand:
        parts.append("candidates: weights " + ", ".join(map(str, cand.get("w_bits", []))) + " bits, activations "
                     + ", ".join(map(str, cand.get("a_bits", []))) + " bits")
    pinned = a.get("pinned") or {}
    if pinned:
        parts.append("kept at 8 bits: " + ", ".join(pinned) + " (the first and last layers)")
    metric = a.get("metric")
    if metric:
        parts.append(f"chosen to give the lowest total predicted cost (Omega, from the Hessian {metric})")
    result = _mix(plan)
    if t.get("ratio"):
        result += f"; weights {t['ratio']:.2f}x smaller than float32"
    parts.append(f"result: {result}")
    if plan.weight_range == "full":
        parts.append("sub-8-bit weights on the whole signed range")
    return "; ".join(parts)


def _finetune_row(cal: dict[str, Any], epochs: float | None) -> str:
    order = cal.get("order")
    parts = [ORDER_WORDS.get(order, str(order))] if order else []
    if order != "ptq" and cal.get("steps") is not None:
        length = f"{cal['steps']} steps of {cal.get('batch_size', '?')} samples"
        if epochs is not None:
            length += f" ({_num(epochs)} epochs)"
        parts.append(length)
        if cal.get("optimizer"):
            lr = f" at learning rate {_num(cal['lr'])}" if cal.get("lr") is not None else ""
            parts.append(f"{cal['optimizer']}{lr}")
        if cal.get("step_lr") is not None:
            parts.append(f"weights moved in units of their quantization step ({_num(cal['step_lr'])} a step)")
        if cal.get("distill"):
            parts.append(f"distilled from the float model (weight {_num(cal.get('distill_weight'))}, "
                         f"temperature {_num(cal.get('temperature'))})")
        if cal.get("loss"):
            parts.append(f"task loss {cal['loss']}")
    if cal.get("samples"):
        parts.append(f"scales calibrated on {cal['samples']:,} training samples")
    if cal.get("seed") is not None:
        parts.append(f"seed {cal['seed']}")
    return "; ".join(parts)


def origin_rows(origin: ReportOrigin) -> list[list[str]]:
    """(stage, what was done) rows of the "how this model was made" table."""
    rows: list[list[str]] = []
    plan, cal = origin.plan, origin.calibration
    data = cal.get("data") or (origin.sensitivity.data if origin.sensitivity else None)
    if plan is not None:
        rows.append(["model", f"{plan.model} (fingerprint {plan.fingerprint})"])
    if data:
        labels = ("none: the float model's own top-1 stands in for them, so every accuracy is agreement with "
                  "the float model" if NO_LABELS_MARK in data else "the data's own")
        rows.append(["data", data.replace("; " + NO_LABELS_MARK, "")])
        rows.append(["labels", labels])
    if origin.sensitivity is not None:
        rows.append(["1. sensitivity analysis", _analysis_row(origin.sensitivity)])
    if plan is not None:
        rows.append(["2. bit allocation", _allocation_row(plan)])
    if cal:
        rows.append(["3. fine-tuning", _finetune_row(cal, origin.epochs)])
    if plan is not None and (origin.target or plan.region_grids):
        text = TARGET_WORDS.get(origin.target or "", origin.target or "")
        if plan.region_grids:
            text += ("; " if text else "") + (f"{len(plan.region_grids)} extra 8-bit activation grids where "
                                              "regions meet (residual adds, pooling), so that ONNX Runtime runs "
                                              "them as integer kernels")
        rows.append(["4. export", text])
    return rows


def origin_beside(quantized_path: str | Path, sensitivity_path: str | Path | None = None) -> ReportOrigin | None:
    """What a validation of files alone can tell about how the quantized file was made: the plan
    its export wrote beside it (``<stem>.plan.json``), and the analysis where given. None where
    neither is there; a plan beside it that does not read is ignored (the report is still
    written, without the section)."""
    from hawq_onnx.errors import HawqError

    plan = None
    candidate = exported_plan_path(quantized_path)
    if candidate.is_file():
        try:
            plan = load_plan(candidate)
        except HawqError:
            plan = None
    sensitivity = Sensitivity.load(sensitivity_path) if sensitivity_path is not None else None
    if plan is None and sensitivity is None:
        return None
    # The fine-tuned top-1's sample count is not in the plan: the export's cost is left unstated.
    return ReportOrigin(plan=plan, sensitivity=sensitivity)
