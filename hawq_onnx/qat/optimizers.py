"""The two optimizers fine-tuning adds to torch's: Adam in log space for step sizes, and AdamW whose
updates are measured in quantization steps.

Both exist because the folded network's weights have no BatchNorm left to normalise them: one
layer's weights (and one channel's) can be ten times another's, and a learning rate in absolute
units suits only some of them.
"""

from __future__ import annotations

import torch


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def _adam_moments(state: dict, g: torch.Tensor, beta1: float, beta2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam's bias-corrected first and second moments of ``g``, after this step's update of ``state``."""
    if not state:
        state["t"], state["m"], state["v"] = 0, torch.zeros_like(g), torch.zeros_like(g)
    state["t"] += 1
    state["m"].mul_(beta1).add_(g, alpha=1 - beta1)
    state["v"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
    return state["m"] / (1 - beta1 ** state["t"]), state["v"] / (1 - beta2 ** state["t"])


class LogAdam(torch.optim.Optimizer):
    """Adam in log space for step sizes: s <- s * exp(-lr * m_hat / (sqrt(v_hat) + eps)) on g = s * dL/ds.

    Multiplicative updates keep a step size positive and move it by relative amounts whatever
    its magnitude (a dead channel's 1e-7 and an activation's 0.3 alike); Adam's normalisation
    makes LSQ's gradient scale irrelevant here.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m_hat, v_hat = _adam_moments(self.state[p], p.grad * p, beta1, beta2)
                p.mul_(torch.exp(-group["lr"] * m_hat / (v_hat.sqrt() + group["eps"])))


class StepAdamW(torch.optim.Optimizer):
    """AdamW whose update of a parameter is multiplied elementwise by its group's ``units``.

    A quantized layer's weights get their output channel's quantization step as unit, so that
    ``lr`` is in steps per update: Adam's normalised direction is at most about 1, so lr 0.01
    moves a weight by about 1 % of its step, a 2-bit channel with a step of 0.2 as much as a
    4-bit one with 0.02 (in absolute units the first moves ten times slower relative to its grid,
    and 4-bit channels with tiny steps churn). A group whose ``units`` is None is plain AdamW.
    Decoupled weight decay: p <- p * (1 - lr * weight_decay), with the group's lr.

    ``units`` is a list of tensors, one per parameter of the group, each broadcastable to it
    (shape (C, 1, 1, 1) for a conv weight); they stay fixed while the optimizer lives.
    """

    def __init__(self, groups, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(groups, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": 0.0, "units": None})
        for group in self.param_groups:
            units = group["units"]
            if units is not None and (len(units) != len(group["params"]) or not all(
                    _broadcasts_to(u.shape, p.shape) for u, p in zip(units, group["params"]))):
                raise ValueError("StepAdamW: give one unit tensor per parameter, broadcastable to it")

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                p.mul_(1 - group["lr"] * group["weight_decay"])
                m_hat, v_hat = _adam_moments(self.state[p], p.grad, beta1, beta2)
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["units"] is not None:
                    update = update * group["units"][i]
                p.add_(update, alpha=-group["lr"])
