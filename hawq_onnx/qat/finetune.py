"""Quantization-aware fine-tuning of a plan: HAWQ order, single stage, or post-training only.

Everything happens on a BatchNorm-folded copy of the user's model (their module is never
touched): BatchNorm statistics are frozen from the first step, as HAWQ-V3 does, because the
weights that get quantized are the folded ones the exporter writes.

Schedules (``order``):
- ``hawq``: layers are grouped into blocks (their parent module, ``layer1.0`` for a ResNet
  block; a layer directly under the root is its own block), ordered most sensitive first
  (the sum of the plan's Omega, or Tr(H)/n from a sensitivity report). Stage k quantizes
  blocks 1..k (earlier stages stay quantized), calibrates the new block and fine-tunes the
  whole network. The step budget is shared: the last stage (everything quantized) gets
  ``final_share`` of it, the earlier stages split the rest equally.
- ``single``: quantize everything, calibrate, fine-tune once.
- ``ptq``: calibrate only (observers on the calibration split, weight scales from the weights).

Training: AdamW (default) or SGD with momentum on the weights and biases; the step sizes get their LSQ
gradient and are updated by Adam in log space (``LogAdam``), because the folded network's
weights need a small learning rate (no BatchNorm left to absorb the curvature: SGD diverges on
ResNet20 from lr 1e-3) at which a plain optimizer leaves the step sizes where calibration put them.
With ``step_lr`` AdamW becomes ``StepAdamW``, which gives the quantized layers' weights their
updates in units of their channel's quantization step: the folded channels' magnitudes differ
tenfold, and on ResNet20 a 2-bit layer's median step is up to fifteen times a 4-bit one's, so one
absolute rate cannot suit them all. Linear
warm-up then cosine decay within each stage, optional distillation from the float model (KL
on temperature-softened logits plus cross-entropy), seeded data order and augmentation.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from itertools import count
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn

from hawq_onnx.core import model_inputs
from hawq_onnx.core.bn_fold import fold_copy
from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.io.plan import Plan
from hawq_onnx.io.sensitivity_report import Sensitivity
from hawq_onnx.options import OPTIMIZERS, ORDERS  # the choice lists, defined once
from hawq_onnx.qat.fake_quant import (
    calibrate,
    export_plan_scales,
    float_state_dict,
    quant_layers,
    quantize_model,
    set_scale_learning,
)
from hawq_onnx.qat.observers import DEFAULT_OBSERVER, OBSERVERS
from hawq_onnx.qat.optimizers import LogAdam, StepAdamW
from hawq_onnx.qat.quantizers import DEFAULT_WEIGHT_METHOD
from hawq_onnx.qat.schedule import (
    Block,
    LossFn,
    augment_batch,
    default_augment,
    distillation_loss,
    order_blocks,
    stage_steps,
    warmup_cosine,
)
from hawq_onnx.sources.model import LoadedModel, model_fingerprint
from hawq_onnx.sources.user_data import loss_name
from hawq_onnx.sources.splits import Dataset, Split

log = logging.getLogger(__name__)

# Peak learning rates for the folded weights. ResNet20 at 13x (2/4/8-bit weights, 4-bit inputs),
# HAWQ order, 3 epochs, fake-quant top-1: AdamW 1e-4 90.10 %, 3e-4 90.49 %, 1e-3 90.27 %; but the
# digits default lost 0.56 points at 3e-4 against +0.27 at 1e-4, so 1e-4 stays the default and
# the ResNet20 benchmarks pass --lr 3e-4 (BENCHMARKS.md). SGD (100 steps of 64 on ResNet20): 3e-4
# reached 40 %, 1e-3 diverged to 17 %, 3e-3 at once.
DEFAULT_LR = {"adam": 1e-4, "sgd": 3e-4}
AUGMENTS = ("auto", "none", "shift", "shift-flip")
DEFAULT_EPOCHS = 5.0
EVAL_BATCH = 256
CALIB_BATCH = 128


@dataclass
class FinetuneResult:
    model: nn.Module              # the fake-quant model (eval mode, step sizes frozen)
    plan: Plan                    # the plan with the final scales and ranges
    float_accuracy: float         # top-1 of the folded float model on the test split
    quant_accuracy: float         # top-1 of the fake-quant model on the test split
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    reference: str = ""           # the model reference (zoo name or FILE.py:factory)
    fingerprint: str = ""         # of the folded model

    def float_state_dict(self) -> dict[str, torch.Tensor]:
        """The folded float weights after fine-tuning, keys as in the folded model."""
        return float_state_dict(self.model)


# --- the pieces ------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: nn.Module, split: Split, *, batch_size: int = EVAL_BATCH, device: str = "cpu") -> float:
    """Top-1 accuracy (fraction) on a split."""
    was_training = model.training
    model.eval()
    correct = 0
    for x, y in split.batches(batch_size):
        scores = model_inputs.scores(model_inputs.call(model, model_inputs.to_device(x, device)))
        correct += int((scores.argmax(1).cpu() == y).sum())
    model.train(was_training)
    return correct / len(split)


@torch.no_grad()
def predict_scores(model: nn.Module, x: model_inputs.Arrays, *, batch_size: int = EVAL_BATCH,
                   device: str = "cpu") -> np.ndarray:
    """The model's output scores (N, classes) for inputs ``x``, in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, model_inputs.count(x), batch_size):
        batch = model_inputs.to_device(model_inputs.as_torch(model_inputs.take(x, slice(i, i + batch_size))), device)
        out.append(model_inputs.scores(model_inputs.call(model, batch)).cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _freeze_batchnorm(model: nn.Module) -> None:
    # BatchNorm that was not folded (not behind a conv) keeps its statistics: HAWQ-V3's choice.
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _train_batches(split: Split, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for epoch in count():
        yield from split.batches(batch_size, shuffle=True, seed=seed * 100_003 + epoch, drop_last=True)


def _resolve_device(device: str) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise OptionError("{device} cuda: CUDA is not available on this machine; use {device} cpu", "device")
    if device not in ("cpu", "cuda"):
        raise HawqError(f"unknown device {device!r}; use cpu or cuda")
    return device


def _bits_only(plan: Plan) -> Plan:
    return replace(plan, layers=[replace(lp, weight_scale=None, input_quant=None) for lp in plan.layers],
                   calibration=None)


@dataclass
class _Training:
    """What every stage's loop needs."""

    teacher: nn.Module | None
    optimizer: str
    step_sizes: list[nn.Parameter]  # learned (LSQ) with LogAdam at scale_lr; empty when frozen
    scale_lr: float
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    lr: float
    step_lr: float | None  # quantized weights' peak lr in units of their channel's step; None: lr
    momentum: float
    weight_decay: float
    warmup: float
    distill_weight: float
    temperature: float
    augment: str
    generator: torch.Generator
    device: str
    progress: bool
    task_loss: LossFn | None = None  # None: cross-entropy on the labels


def _step_groups(qmodel: nn.Module, groups: list[dict[str, Any]], lr: float, step_lr: float) -> list[dict[str, Any]]:
    """Split each parameter group: the weights of quantized layers at ``step_lr`` in units of
    their channel's step at the stage's start, the rest at ``lr`` (biases, float layers, stages' unquantized blocks)."""
    units = {}
    for q in quant_layers(qmodel).values():
        if q.enabled and q.weight_quant is not None:
            # effective_scale() is a fresh tensor (abs, clamp), so detaching it is enough.
            units[id(q.layer.weight)] = q.weight_quant.channel_scale(q.layer.weight.dim()).detach()
    split: list[dict[str, Any]] = []
    for g in groups:
        stepped = [p for p in g["params"] if id(p) in units]
        rest = [p for p in g["params"] if id(p) not in units]
        if stepped:
            split.append({"params": stepped, "weight_decay": g["weight_decay"], "lr": step_lr,
                          "units": [units[id(p)] for p in stepped]})
        if rest:
            split.append({"params": rest, "weight_decay": g["weight_decay"], "lr": lr})
    return split


def _train_stage(qmodel: nn.Module, steps: int, cfg: _Training, desc: str) -> dict[str, Any]:
    from hawq_onnx.core.progress import progress_bar

    step_size_ids = {id(p) for p in cfg.step_sizes}
    params = [p for p in qmodel.parameters() if p.requires_grad and id(p) not in step_size_ids]
    decay = [p for p in params if p.dim() > 1]  # weights; not biases
    no_decay = [p for p in params if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.step_lr is not None:
        opt = StepAdamW(_step_groups(qmodel, groups, cfg.lr, cfg.step_lr), lr=cfg.lr)
    elif cfg.optimizer == "adam":
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    else:
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    optimizers = [opt] + ([LogAdam(cfg.step_sizes, lr=cfg.scale_lr)] if cfg.step_sizes else [])
    schedule = warmup_cosine(steps, cfg.warmup)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, schedule) for o in optimizers]
    qmodel.train()
    _freeze_batchnorm(qmodel)
    loss_sum, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    bar = progress_bar(range(steps), desc=desc, unit="step", enabled=cfg.progress, leave=False)
    for _ in bar:
        x, y = next(cfg.batches)
        x = model_inputs.to_device(augment_batch(x, cfg.augment, cfg.generator), cfg.device)
        y = y.to(cfg.device)
        teacher_logits = None
        if cfg.teacher is not None:
            with torch.no_grad():
                teacher_logits = model_inputs.scores(model_inputs.call(cfg.teacher, x))
        logits = model_inputs.scores(model_inputs.call(qmodel, x))
        loss = distillation_loss(logits, teacher_logits, y, cfg.distill_weight, cfg.temperature, cfg.task_loss)
        if not torch.isfinite(loss):
            raise OptionError(f"{desc}: the training loss became {float(loss.detach())}; lower {{lr}}", "lr")
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o, sched in zip(optimizers, scheds):
            o.step()
            sched.step()
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", top1=f"{100 * correct / seen:.1f}%")
    bar.close()
    qmodel.eval()
    # The loss is checked before each step; the last step can still blow the weights up.
    if not all(torch.isfinite(p).all() for p in qmodel.parameters()):
        raise OptionError(f"{desc}: training diverged (weights became NaN or Inf); lower {{lr}}", "lr")
    return {"steps": steps, "loss": loss_sum / seen if seen else None,
            "train_top1": correct / seen if seen else None, "seconds": time.perf_counter() - start}


def check_options(*, order: str, epochs: float | None, steps: int | None, optimizer: str, lr: float | None,
                  step_lr: float | None, batch_size: int, data_fraction: float, distill_weight: float,
                  temperature: float, final_share: float = 0.5, warmup: float = 0.05, scale_lr: float = 1e-3,
                  observer: str = DEFAULT_OBSERVER, augment: str = "auto") -> float:
    """One-line errors for bad settings; returns the learning rate to use."""
    if order not in ORDERS:
        raise HawqError(f"unknown order {order!r}; use one of {', '.join(ORDERS)}")
    if epochs is not None and steps is not None:
        raise OptionError("give {epochs} or {steps}, not both", "epochs", "steps")
    if (epochs is not None and not 0 <= epochs < math.inf) or (steps is not None and steps < 0):
        raise OptionError("{epochs} and {steps} must be finite and not negative", "epochs", "steps")
    if not 0.0 < data_fraction <= 1.0:
        raise OptionError(f"{{data_fraction}} must be in (0, 1], got {data_fraction}", "data_fraction")
    if optimizer not in OPTIMIZERS:
        raise HawqError(f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    lr = DEFAULT_LR[optimizer] if lr is None else lr
    if not 0 < lr < math.inf or batch_size <= 0:
        raise OptionError("{lr} and {batch_size} must be positive", "lr", "batch_size")
    if step_lr is not None and not 0 < step_lr < math.inf:
        raise OptionError(f"{{step_lr}} must be positive and finite, got {step_lr}", "step_lr")
    if step_lr is not None and optimizer != "adam":
        raise OptionError("{step_lr} needs {optimizer} adam (an update in steps needs Adam's normalised direction)", "step_lr",
                          "optimizer")
    if not 0.0 <= distill_weight <= 1.0 or not temperature > 0:
        raise OptionError("{distill_weight} must be in [0, 1] and {temperature} positive", "distill_weight", "temperature")
    if not 0.0 <= final_share <= 1.0 or not 0.0 <= warmup < 1.0:
        raise HawqError("final_share must be in [0, 1] and warmup in [0, 1)")
    if not (math.isfinite(scale_lr) and scale_lr > 0):
        raise HawqError(f"the step-size learning rate must be positive and finite, got {scale_lr}")
    if observer not in OBSERVERS:
        raise HawqError(f"unknown observer {observer!r}; use one of {', '.join(OBSERVERS)}")
    if augment not in AUGMENTS:
        raise HawqError(f"unknown augmentation {augment!r}; use one of {', '.join(AUGMENTS)}")
    return lr


# --- the schedule ------------------------------------------------------------------------------

def finetune(loaded: LoadedModel, plan: Plan, dataset: Dataset, *, order: str = "hawq",
             epochs: float | None = None, steps: int | None = None, optimizer: str = "adam", lr: float | None = None,
             step_lr: float | None = None, momentum: float = 0.9,
             weight_decay: float = 1e-4, batch_size: int = 128, distill: bool = True,
             distill_weight: float = 0.5, temperature: float = 2.0, data_fraction: float = 1.0,
             learn_scales: bool = True, scale_lr: float = 1e-3, weight_method: str = DEFAULT_WEIGHT_METHOD,
             observer: str = DEFAULT_OBSERVER, final_share: float = 0.5, warmup: float = 0.05,
             augment: str = "auto", seed: int = 0, device: str = "cpu", progress: bool = False,
             sensitivity: Sensitivity | None = None, loss_fn: LossFn | None = None) -> FinetuneResult:
    """Quantize ``loaded``'s model as ``plan`` says and fine-tune it (or only calibrate: ``ptq``).

    ``epochs`` (fractions allowed) or ``steps`` is the whole training budget (default
    DEFAULT_EPOCHS epochs); ``lr`` defaults to DEFAULT_LR[optimizer]; with ``step_lr`` the
    quantized layers' weights train at that peak rate in units of their channel's step instead
    (``StepAdamW``; the units are the steps at each stage's start); step sizes are learned
    (``learn_scales``) with LogAdam at ``scale_lr``. Scales already in ``plan`` are recomputed
    (``weight_method`` for weights, ``observer`` for input ranges). Returns the fake-quant
    model, the plan with its final scales, and top-1 of the float and quantized models on the
    test split.
    """
    start = time.perf_counter()
    lr = check_options(order=order, epochs=epochs, steps=steps, optimizer=optimizer, lr=lr, step_lr=step_lr,
                        batch_size=batch_size,
                        data_fraction=data_fraction, distill_weight=distill_weight, temperature=temperature,
                        final_share=final_share, warmup=warmup, scale_lr=scale_lr, observer=observer,
                        augment=augment)
    device = _resolve_device(device)
    torch.manual_seed(seed)

    folded = fold_copy(loaded.module, loaded.input_shape).to(device)
    fingerprint = model_fingerprint(folded)
    if plan.fingerprint != fingerprint:
        raise HawqError(f"the plan was made for another model (fingerprint {plan.fingerprint}, this model "
                        f"{fingerprint}); allocate a plan for this model")
    if sensitivity is not None and sensitivity.fingerprint != fingerprint:
        raise HawqError(f"the sensitivity report was made for another model (fingerprint {sensitivity.fingerprint}, "
                        f"this model {fingerprint})")
    for param in folded.parameters():
        param.requires_grad_(False)
    if plan.region_grids:
        # An exported plan's grids between layers were calibrated for the weights it was exported
        # with; the exporter calibrates them again for the fine-tuned ones.
        log.info("the plan's %d region grids (from an export) are dropped: export recalibrates them",
                 len(plan.region_grids))
        plan = replace(plan, region_grids=[])

    qmodel = quantize_model(folded, _bits_only(plan), weight_method=weight_method)
    for param in qmodel.parameters():
        param.requires_grad_(True)
    step_sizes = set_scale_learning(qmodel, learn_scales)
    wrapped = quant_layers(qmodel)
    calib = list(dataset.calib.batches(CALIB_BATCH))
    calib_kwargs = dict(observer=observer, weight_method=weight_method, device=device)

    train = dataset.train.subset(data_fraction, seed, dataset.samples)
    batch_size = min(batch_size, len(train))
    if steps is None:
        steps = int(round((DEFAULT_EPOCHS if epochs is None else epochs) * (len(train) // batch_size)))
    if order == "ptq":
        steps = 0
    blocks = order_blocks(plan, sensitivity) if order == "hawq" else [Block("all", list(wrapped))]
    budget = stage_steps(steps, len(blocks), final_share) if order == "hawq" else [steps]
    if order == "hawq":
        for q in wrapped.values():
            q.enabled = False
    cfg = _Training(teacher=folded if distill else None, optimizer=optimizer,
                    step_sizes=step_sizes if learn_scales else [], scale_lr=scale_lr,
                    batches=_train_batches(train, batch_size, seed), lr=lr, step_lr=step_lr, momentum=momentum,
                    weight_decay=weight_decay, warmup=warmup,
                    distill_weight=distill_weight if distill else 0.0, temperature=temperature,
                    augment=default_augment(dataset) if augment == "auto" else augment,
                    generator=torch.Generator().manual_seed(seed), device=device, progress=progress,
                    task_loss=loss_fn)

    history: list[dict[str, Any]] = []
    samples = 0
    for k, (block, n_steps) in enumerate(zip(blocks, budget), 1):
        for name in block.layers:
            wrapped[name].enabled = True
        samples = calibrate(qmodel, calib, layers=block.layers, **calib_kwargs)
        entry: dict[str, Any] = {"stage": k, "block": block.name, "layers": list(block.layers),
                                 "sensitivity": block.sensitivity, "steps": 0}
        if n_steps > 0:
            desc = f"stage {k}/{len(blocks)} {block.name}" if order == "hawq" else "fine-tuning"
            entry.update(_train_stage(qmodel, n_steps, cfg, desc))
            log.info("%s: %d steps, loss %.4f, train top-1 %.2f %%", desc, n_steps, entry["loss"],
                     100 * entry["train_top1"])
        history.append(entry)

    set_scale_learning(qmodel, False)
    for param in qmodel.parameters():
        param.requires_grad_(False)
    qmodel.eval()
    float_accuracy = evaluate(folded, dataset.test, device=device)
    quant_accuracy = evaluate(qmodel, dataset.test, device=device)
    calibrated = export_plan_scales(qmodel, plan)
    calibrated.calibration = {
        "data": dataset.name, "samples": samples, "observer": observer, "weight_method": weight_method,
        "order": order, "steps": steps, "batch_size": batch_size, "optimizer": optimizer, "lr": lr,
        "step_lr": step_lr, "scale_lr": scale_lr if learn_scales else None, "distill": distill,
        "distill_weight": distill_weight if distill else None, "temperature": temperature if distill else None,
        "learn_scales": learn_scales, "data_fraction": data_fraction, "seed": seed,
        "loss": loss_name(loss_fn),
        "blocks": [b.name for b in blocks] if order == "hawq" else None,
        "float_top1": float_accuracy, "quant_top1": quant_accuracy,
    }
    return FinetuneResult(qmodel.cpu(), calibrated, float_accuracy, quant_accuracy, time.perf_counter() - start,
                          history, loaded.reference, fingerprint)
