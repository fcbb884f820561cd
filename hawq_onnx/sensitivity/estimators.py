"""The estimators of a layer's Hessian block, as generators: each yields a vector v and receives H v.

Power iteration for the top eigenvalue (HAWQ), Hutchinson's trace with the Hutch++ sketch
(HAWQ-V2; Meyer, Musco, Musco, Woodruff 2021), and Hutchinson's trace of the input-activation
Hessian; :func:`layer_program` chains them for one layer. The method is described in
:mod:`hawq_onnx.sensitivity.hessian`; the products come from :mod:`hawq_onnx.sensitivity.products`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# A layer's program yields a weight-space vector v (and receives H_i v) or INPUT_PROBE (and
# receives one Hutchinson sample z^T H_x z of the input-activation Hessian).
INPUT_PROBE = "input-probe"


@dataclass(frozen=True)
class Eigen:
    value: float
    iterations: int
    converged: bool
    zero: bool = False


@dataclass(frozen=True)
class Trace:
    value: float
    std_error: float
    probes: int
    converged: bool


# --- the algorithms: generators that yield a vector v and receive the product H v ------------

def rademacher(n: int, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """+-1 entries drawn on the CPU (the same numbers on every device)."""
    return (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).to(dtype=like.dtype, device=like.device)


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a.double(), b.double()))


def hutchpp_sketch(dim: int, size: int, gen: torch.Generator, like: torch.Tensor):
    """Q, an orthonormal basis of H S for a Rademacher sketch S (dim x size), and T = Q^T H Q.

    Q comes from a Householder QR: orthonormal even where H S is rank deficient (a zero block,
    dim < size), and the Hutch++ identity holds for any orthonormal Q. 2 x size products."""
    sketch = []
    for _ in range(size):
        sketch.append((yield rademacher(dim, gen, like)))
    q, _ = torch.linalg.qr(torch.stack(sketch, 1))
    hq = []
    for k in range(q.shape[1]):
        hq.append((yield q[:, k].contiguous()))
    t = (q.T @ torch.stack(hq, 1)).double()
    return q, (t + t.T) / 2


def power_iteration(v0: torch.Tensor, tol: float, max_iter: int):
    """Dominant eigenpair by power iteration; the eigenvalue is the Rayleigh quotient v^T H v."""
    v = v0 / v0.norm()
    eigenvalue, previous = 0.0, None
    for iteration in range(1, max_iter + 1):
        hv = yield v
        eigenvalue = _dot(v, hv)  # ||v|| = 1
        norm = float(hv.norm())
        if not norm > torch.finfo(hv.dtype).tiny:  # H v = 0: a (numerically) zero block
            return Eigen(0.0, iteration, True, zero=True)
        if previous is not None and abs(eigenvalue - previous) <= tol * abs(eigenvalue):
            return Eigen(eigenvalue, iteration, True)
        previous = eigenvalue
        v = hv / norm
    return Eigen(eigenvalue, max_iter, False)


def _mean_and_error(samples: list[float]) -> tuple[float, float]:
    x = np.asarray(samples, np.float64)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.inf


def deflated_hutchinson(q: torch.Tensor, exact: float, tol: float, min_probes: int, max_probes: int,
                        gen: torch.Generator):
    """tr(H) = exact + E[z^T H z] over Rademacher z deflated by Q (exact = tr(Q^T H Q));
    stops when the standard error of the estimate is <= tol x |estimate|."""
    dim = q.shape[0]
    if q.shape[1] >= dim:  # the sketch spans the whole block: the trace is exact
        return Trace(exact, 0.0, 0, True)
    samples: list[float] = []
    mean, error = 0.0, math.inf
    while len(samples) < max_probes:
        z = rademacher(dim, gen, q)
        if q.shape[1]:
            z = z - q @ (q.T @ z)
        samples.append(_dot(z, (yield z)))
        if len(samples) >= min_probes:
            mean, error = _mean_and_error(samples)
            if error <= tol * abs(exact + mean):
                break
    return Trace(exact + mean, error, len(samples), error <= tol * abs(exact + mean))


def input_hutchinson(tol: float, min_probes: int, max_probes: int):
    """Hutchinson's trace of the input-activation Hessian: the engine draws each probe."""
    samples: list[float] = []
    mean, error = 0.0, math.inf
    while len(samples) < max_probes:
        samples.append((yield INPUT_PROBE))
        if len(samples) >= min_probes:
            mean, error = _mean_and_error(samples)
            if error <= tol * abs(mean):
                break
    return Trace(mean, error, len(samples), error <= tol * abs(mean))


def layer_program(dim: int, like: torch.Tensor, gen: torch.Generator, *, sketch: int, eig_tol: float,
                  max_iter: int, trace_tol: float, min_probes: int, max_probes: int, act_tol: float,
                  act_max_probes: int):
    """One layer's analysis: Hutch++ sketch -> power iteration from its top Ritz vector ->
    deflated Hutchinson trace -> input-activation trace."""
    if sketch > 0:
        q, t = yield from hutchpp_sketch(dim, min(sketch, dim), gen, like)
        ritz_values, ritz_vectors = torch.linalg.eigh(t)
        top = int(ritz_values.abs().argmax())
        v0 = q @ ritz_vectors[:, top].to(q.dtype)
        exact = float(torch.trace(t))
    else:
        q, exact = like.new_zeros(dim, 0), 0.0
        v0 = torch.randn(dim, generator=gen).to(like)
    eigen = yield from power_iteration(v0, eig_tol, max_iter)
    trace = yield from deflated_hutchinson(q, exact, trace_tol, min_probes, max_probes, gen)
    act = Trace(0.0, 0.0, 0, True)
    if act_max_probes > 0:
        act = yield from input_hutchinson(act_tol, min(min_probes, act_max_probes), act_max_probes)
    return eigen, trace, act
