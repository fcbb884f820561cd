"""The typed results of the Python API that are not artefact formats of their own stage.

``Sensitivity`` (sensitivity.json), ``Plan`` (plan.json) and ``ValidationReport``
(report.json) live with their formats; here are the fine-tuned model (quantized.pt), an
exported ONNX model with what the export added, and the result of a whole ``quantize`` run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch.nn as nn

from hawq_onnx.core import model_inputs
from hawq_onnx.core.model_inputs import InputShape
from hawq_onnx.core.onnx_inspect import load_onnx
from hawq_onnx.passes.target_profiles import written_for
from hawq_onnx.errors import HawqError
from hawq_onnx.io.plan import Plan, RegionGrid, exported_plan_path, load_plan, save_plan
from hawq_onnx.io.quantized_checkpoint import QuantizedCheckpoint
from hawq_onnx.io.sensitivity_report import Sensitivity
from hawq_onnx.onnx_export.float_onnx import save_onnx
from hawq_onnx.qat.checkpoint import restore_quantized
from hawq_onnx.qat.fake_quant import float_state_dict, quantize_model, strip_fake_quant
from hawq_onnx.qat.finetune import FinetuneResult
from hawq_onnx.sources.model import LoadedModel, from_module, load_model, model_fingerprint
from hawq_onnx.validation.validate import ValidationReport


def _shape(input_shape: InputShape | None) -> InputShape | None:
    if input_shape is None or isinstance(input_shape, model_inputs.Signature):
        return input_shape
    return tuple(int(d) for d in input_shape)


@dataclass
class QuantizedModel:
    """A fine-tuned (or calibrated) fake-quant model: call it like the float model.

    ``module`` computes what the plan's layers compute (weights on their grids, inputs rounded
    as the plan says) on the BatchNorm-folded model; ``plan`` holds the final scales. The
    exported file adds 8-bit grids between layers; ``ExportedModel.plan`` names them.
    """

    module: nn.Module
    plan: Plan
    input_shape: InputShape
    reference: str                    # the model it was made from (zoo name, FILE.py:factory, python:Class)
    fingerprint: str                  # of the BN-folded model
    float_accuracy: float | None = None   # top-1 of the folded float model on the evaluation split
    quant_accuracy: float | None = None   # top-1 of this model there
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    calibration_x: model_inputs.Arrays | None = field(default=None, repr=False)  # for the export's grids
    eval_samples: int | None = None       # samples behind the two accuracies

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def float_module(self) -> nn.Module:
        """The BN-folded float model with the fine-tuned weights (every fake quantizer removed)."""
        return strip_fake_quant(self.module)

    def save(self, path: str | Path) -> Path:
        """Write quantized.pt atomically (what ``hawq-onnx finetune`` writes): the folded
        fine-tuned float weights and the calibrated plan."""
        return QuantizedCheckpoint(self.reference, self.fingerprint, float_state_dict(self.module), self.plan).save(path)

    @classmethod
    def from_result(cls, result: FinetuneResult, input_shape: InputShape,
                    calibration_x: model_inputs.Arrays | None, eval_samples: int | None = None) -> "QuantizedModel":
        return cls(result.model, result.plan, input_shape, result.reference, result.fingerprint,
                   result.float_accuracy, result.quant_accuracy, result.seconds, result.history, calibration_x,
                   eval_samples)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | str, *, input_shape: InputShape | None = None,
             weights: str | Path | None = None) -> "QuantizedModel":
        """quantized.pt put back onto ``model``, the float model it was made from (an ``nn.Module``,
        or a zoo name or FILE.py:factory with ``weights``): quantized.pt holds the fine-tuned
        weights and the plan, not the architecture. ``input_shape`` where the model declares none."""
        if isinstance(model, nn.Module):
            if weights is not None:
                raise HawqError("weights: give weights with a model name, not with an nn.Module")
            loaded = from_module(model, _shape(input_shape))
        else:
            loaded = load_model(model, None if weights is None else str(weights),
                                _shape(input_shape))
        return cls.restore(loaded, path)

    @classmethod
    def restore(cls, loaded: LoadedModel, path: str | Path) -> "QuantizedModel":
        """quantized.pt put back onto the model it was made from."""
        folded, plan = restore_quantized(loaded, path)
        calibration = plan.calibration or {}
        return cls(quantize_model(folded, plan), plan, loaded.input_shape, loaded.reference,
                   model_fingerprint(folded), calibration.get("float_top1"), calibration.get("quant_top1"))


@dataclass
class ExportedModel:
    """An exported ONNX model and what the export added to the plan.

    ``plan`` is None for a float export; for a QDQ export it is the plan as exported, with the
    8-bit grids the file adds between layers (``grids``), named in PyTorch, so that
    ``hawq_onnx.qat.region_grids.reference_model`` of it computes what the file computes.
    """

    model: onnx.ModelProto
    plan: Plan | None = None
    target: str | None = None
    warnings: list[str] = field(default_factory=list)
    bits: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)  # layer -> (w, a) as exported
    calibration_samples: int = 0

    @property
    def grids(self) -> list[RegionGrid]:
        return [] if self.plan is None else list(self.plan.region_grids)

    @property
    def file_bytes(self) -> int:
        return self.model.ByteSize()

    @property
    def opset(self) -> int:
        return next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 0)

    @staticmethod
    def plan_path_for(path: str | Path) -> Path:
        """model.qdq.onnx -> model.qdq.plan.json, beside it (the name ``quantize`` uses)."""
        return exported_plan_path(path)

    def save(self, path: str | Path, plan_path: str | Path | None = None) -> Path:
        """Write the .onnx atomically and, for a QDQ export, its plan beside it (``plan_path``,
        default ``<stem>.plan.json``)."""
        save_onnx(self.model, path)
        if self.plan is not None:
            save_plan(self.plan, plan_path or self.plan_path_for(path))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, plan_path: str | Path | None = None) -> "ExportedModel":
        """Read an .onnx and, where it exists, its exported plan (``<stem>.plan.json``)."""
        plan_file = Path(plan_path) if plan_path is not None else cls.plan_path_for(path)
        plan = load_plan(plan_file) if plan_path is not None or plan_file.is_file() else None
        model = load_onnx(path)
        return cls(model, plan, target=written_for(model) or (None if plan is None else "unknown"))


@dataclass
class QuantizeResult:
    """What ``quantize`` produced: the figures of its validation, its objects, and its files."""

    out_dir: Path | None
    reused: list[str]
    ran: list[str]
    files: dict[str, Path]             # empty when no folder was given
    float_top1: float
    quant_top1: float
    drop_points: float
    weight_ratio: float                # float32 weight bytes / nominal quantized weight bytes (the plan)
    file_ratio: float                  # float file bytes / quantized file bytes
    latency_speedup: dict[int, float] = field(default_factory=dict)  # batch -> float ms / quantized ms
    # batch -> the speed-up's spread over the timing rounds (median, q25, q75, min, max, rounds, stable)
    latency_spread: dict[int, dict[str, Any]] = field(default_factory=dict)
    # top-1 agreement of the exported file with its PyTorch reference (the plan + the export's grids)
    fake_quant_agreement: float | None = None
    finetuned_top1: float | None = None       # the fine-tuned PyTorch model (the plan's grids only)
    export_cost_points: float | None = None   # finetuned_top1 - quant_top1, in points (same samples only)
    seconds: float = 0.0
    gate_passed: bool | None = None
    sensitivity: Sensitivity | None = None
    plan: Plan | None = None           # the calibrated plan (quantized.plan.json)
    quantized: QuantizedModel | None = None
    exported: ExportedModel | None = None
    report: ValidationReport | None = None  # None where validation was reused from the folder
    runtime: str = "ONNX Runtime"      # what the figures were measured under

    def to_json(self) -> dict[str, Any]:
        return {"out_dir": None if self.out_dir is None else str(self.out_dir), "reused": self.reused,
                "ran": self.ran, "files": {k: str(v) for k, v in self.files.items()},
                "float_top1": self.float_top1, "quant_top1": self.quant_top1, "drop_points": self.drop_points,
                "weight_ratio": self.weight_ratio, "file_ratio": self.file_ratio,
                "latency_speedup": {str(k): v for k, v in self.latency_speedup.items()},
                "latency_spread": {str(k): v for k, v in self.latency_spread.items()},
                "fake_quant_agreement": self.fake_quant_agreement, "finetuned_top1": self.finetuned_top1,
                "export_cost_points": self.export_cost_points, "seconds": self.seconds,
                "gate_passed": self.gate_passed, "runtime": self.runtime}
