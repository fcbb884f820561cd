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


class HutchinsonSamples:
    """Hutchinson samples of one trace, kept so that the estimate can be refined later:
    tr = exact + mean(samples), with the standard error of the mean."""

    def __init__(self, exact: float = 0.0) -> None:
        self.exact = exact
        self.samples: list[float] = []

    @property
    def count(self) -> int:
        return len(self.samples)

    def estimate(self) -> tuple[float, float]:
        """(trace, standard error); the error is infinite below two samples (0 when the sketch is exact)."""
        if not self.samples:
            return self.exact, math.inf
        mean, error = _mean_and_error(self.samples)
        return self.exact + mean, error

    def precise(self, tol: float) -> bool:
        value, error = self.estimate()
        return error <= tol * abs(value)

    def result(self, converged: bool) -> Trace:
        value, error = self.estimate()
        return Trace(value, error, self.count, converged)


class DeflatedProbes:
    """Rademacher probes deflated by the sketch basis Q (z - Q Q^T z), and their samples z^T H z.

    A block probed plainly first may be sketched later (:meth:`add_sketch`); the estimate is then
    the deflated one alone. (Combining it with the plain samples by inverse variance looked
    free, but trusts a variance from the first few deflated samples: on ResNet20 it reported a
    trace 6.6 standard errors from a 1 %-precision run.)"""

    def __init__(self, q: torch.Tensor, exact: float, gen: torch.Generator) -> None:
        self.q, self.gen = q, gen
        self.samples = HutchinsonSamples(exact)
        # the sketch spans the whole block: the trace is exact and needs no probe
        self.exact = q.shape[1] >= q.shape[0]

    @property
    def sketched(self) -> bool:
        return self.q.shape[1] > 0

    @property
    def count(self) -> int:
        return self.samples.count

    def probe(self) -> torch.Tensor:
        z = rademacher(self.q.shape[0], self.gen, self.q)
        return z - self.q @ (self.q.T @ z) if self.q.shape[1] else z

    def add(self, z: torch.Tensor, hz: torch.Tensor) -> None:
        self.samples.samples.append(_dot(z, hz))

    def run(self, count: int):
        """``count`` more probes (a generator: yields z, receives H z)."""
        for _ in range(0 if self.exact else count):
            z = self.probe()
            self.add(z, (yield z))

    def add_sketch(self, size: int):
        """Hutch++'s sketch of ``size`` vectors (2 x size products); deflated probes from then on."""
        q, t = yield from hutchpp_sketch(self.q.shape[0], min(size, self.q.shape[0]), self.gen, self.q)
        self.q, self.samples = q, HutchinsonSamples(float(torch.trace(t)))
        self.exact = q.shape[1] >= q.shape[0]

    def result(self, converged: bool) -> Trace:
        if self.exact:
            return Trace(self.samples.exact, 0.0, 0, True)
        return self.samples.result(converged)


def deflated_hutchinson(probes: DeflatedProbes, tol: float, min_probes: int, max_probes: int):
    """tr(H) = exact + E[z^T H z] over Rademacher z deflated by Q (exact = tr(Q^T H Q));
    stops when the standard error of the estimate is <= tol x |estimate|."""
    if probes.exact:
        return probes.result(True)
    samples = probes.samples
    while samples.count < max_probes:
        yield from probes.run(1)
        if samples.count >= min_probes and samples.precise(tol):
            break
    return samples.result(samples.precise(tol))


def input_hutchinson(samples: HutchinsonSamples, tol: float, min_probes: int, max_probes: int):
    """Hutchinson's trace of the input-activation Hessian: the engine draws each probe."""
    while samples.count < max_probes:
        samples.samples.append((yield INPUT_PROBE))
        if samples.count >= min_probes and samples.precise(tol):
            break
    return samples.result(samples.precise(tol))


@dataclass
class LayerState:
    """What a layer's program leaves behind: its trace samples, which a later stage may extend."""

    weight: DeflatedProbes
    inputs: HutchinsonSamples


def layer_program(dim: int, like: torch.Tensor, gen: torch.Generator, *, sketch: int, eigenvalues: bool,
                  eig_tol: float, max_iter: int, trace_tol: float, min_probes: int, max_probes: int, act_tol: float,
                  act_min_probes: int, act_max_probes: int):
    """One layer's analysis: Hutch++ sketch -> power iteration from its top Ritz vector (when
    ``eigenvalues``) -> deflated Hutchinson trace -> input-activation trace.

    Returns (Eigen or None, weight Trace, input Trace, LayerState)."""
    if sketch > 0:
        q, t = yield from hutchpp_sketch(dim, min(sketch, dim), gen, like)
        ritz_values, ritz_vectors = torch.linalg.eigh(t)
        top = int(ritz_values.abs().argmax())
        v0 = q @ ritz_vectors[:, top].to(q.dtype)
        exact = float(torch.trace(t))
    else:
        q, exact = like.new_zeros(dim, 0), 0.0
        v0 = torch.randn(dim, generator=gen).to(like) if eigenvalues else None
    eigen = (yield from power_iteration(v0, eig_tol, max_iter)) if eigenvalues else None
    state = LayerState(DeflatedProbes(q, exact, gen), HutchinsonSamples())
    trace = yield from deflated_hutchinson(state.weight, trace_tol, min_probes, max_probes)
    act = Trace(0.0, 0.0, 0, True)
    if act_max_probes > 0:
        act = yield from input_hutchinson(state.inputs, act_tol, min(act_min_probes, act_max_probes), act_max_probes)
    return eigen, trace, act, state
