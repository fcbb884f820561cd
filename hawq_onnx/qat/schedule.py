"""The schedule of quantization-aware fine-tuning: HAWQ's blocks and their order, how the step
budget is shared between stages, the learning-rate curve, the loss (cross-entropy and
distillation) and the data augmentation. ``finetune`` runs it."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from hawq_onnx.errors import HawqError
from hawq_onnx.io.plan import Plan
from hawq_onnx.io.sensitivity_report import Sensitivity
from hawq_onnx.sources.splits import Dataset

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (model output, labels) -> mean loss


@dataclass
class Block:
    """Layers quantized together in one HAWQ stage."""

    name: str
    layers: list[str]
    sensitivity: float = 0.0


def blocks_of(plan: Plan) -> list[Block]:
    """Quantized layers grouped by parent module path, in plan (module) order."""
    blocks: dict[str, Block] = {}
    for lp in plan.layers:
        if lp.w_bits is None and lp.a_bits is None:
            continue
        parent = lp.name.rpartition(".")[0]
        key = parent if parent else lp.name
        blocks.setdefault(key, Block(key, [])).layers.append(lp.name)
    return list(blocks.values())


def order_blocks(plan: Plan, sensitivity: Sensitivity | None = None) -> list[Block]:
    """Blocks most sensitive first: sum of Omega, or the block's Tr(H) / params from a report.

    Ties keep module order (a stable sort).
    """
    blocks = blocks_of(plan)
    for block in blocks:
        if sensitivity is None:
            block.sensitivity = float(sum(plan.layer(n).omega for n in block.layers))
        else:
            try:
                layers = [sensitivity.layer(n) for n in block.layers]
            except KeyError as exc:
                raise HawqError(f"the sensitivity report has no layer {exc.args[0]}; "
                                "analyze the model the plan was made for") from None
            block.sensitivity = sum(l.trace for l in layers) / max(1, sum(l.params for l in layers))
    return sorted(blocks, key=lambda b: -b.sensitivity)


def stage_steps(total: int, stages: int, final_share: float) -> list[int]:
    """Steps per stage: the last gets ``final_share`` of ``total``, the others split the rest."""
    if stages <= 1:
        return [total]
    final = int(round(total * final_share))
    rest = total - final
    base, extra = divmod(rest, stages - 1)
    return [base + (1 if k < extra else 0) for k in range(stages - 1)] + [final]


def warmup_cosine(steps: int, warmup: float):
    """LR multiplier: linear warm-up over ``warmup`` of the steps, then cosine decay to 0."""
    warm = int(math.ceil(steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor | None, y: torch.Tensor,
                      weight: float, temperature: float, task_loss: LossFn | None = None) -> torch.Tensor:
    """(1 - weight) * task(y) + weight * T^2 * KL(teacher_T || student_T) (Hinton et al.); the
    task loss is cross-entropy on the labels unless the caller gives its own."""
    ce = (task_loss or F.cross_entropy)(logits, y)
    if teacher_logits is None or weight == 0.0:
        return ce
    t = temperature
    kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  reduction="batchmean", log_target=True)
    return (1.0 - weight) * ce + weight * t * t * kl


def default_augment(dataset: Dataset) -> str:
    """Random shifts and flips for CIFAR-10 (its training recipe); none elsewhere (digits are not flippable)."""
    return "shift-flip" if dataset.name.startswith("cifar10") else "none"


def augment_batch(x: Any, mode: str, generator: torch.Generator) -> Any:
    """Per-sample random crops of a zero-padded image (pad = H/8) and horizontal flips (one NCHW
    floating-point input only; other inputs pass unchanged)."""
    if mode == "none" or not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        return x
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])
    if mode == "shift-flip":
        flip = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    cols = cols[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
