"""A fine-tuning result to ``quantized.pt`` and back onto the user's model."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from hawq_onnx.core.bn_fold import fold_copy
from hawq_onnx.io.plan import Plan
from hawq_onnx.io.quantized_checkpoint import QuantizedCheckpoint, load_quantized
from hawq_onnx.qat.finetune import FinetuneResult
from hawq_onnx.sources.model import LoadedModel, apply_weights, model_fingerprint


def checkpoint_of(result: FinetuneResult) -> QuantizedCheckpoint:
    return QuantizedCheckpoint(result.reference, result.fingerprint, result.float_state_dict(), result.plan)


def save_quantized(result: FinetuneResult, path: str | Path) -> Path:
    """Write quantized.pt atomically: the folded fine-tuned float weights and the calibrated plan."""
    return checkpoint_of(result).save(path)


def restore_quantized(loaded: LoadedModel, path: str | Path) -> tuple[nn.Module, Plan]:
    """The folded float model with quantized.pt's fine-tuned weights, and its calibrated plan.

    ``quantize_model(model, plan)`` on the pair gives the fine-tuned fake-quant model.
    """
    folded = fold_copy(loaded.module, loaded.input_shape)
    ckpt = load_quantized(path, model_fingerprint(folded))
    apply_weights(folded, ckpt.state_dict, str(path))
    return folded, ckpt.plan
