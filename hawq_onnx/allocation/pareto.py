"""Exact multiple-choice knapsack: the size/cost Pareto frontier and a BOPs-constrained ILP.

Allocation picks one *option* for every *item* (a layer, or a group of tied layers); an option
has an integer size (weight bits), integer BOPs and a cost (Omega). Two exact solvers:

- :func:`pareto_frontier`: dynamic programming over items that keeps, after each item, only the
  allocations no other one beats in both size and cost (dominance pruning). The result is the
  whole frontier, so the best allocation under any size budget is a binary search away. Its
  length is bounded by the number of distinct reachable sizes.
- :func:`solve_ilp`: the same problem with a second (BOPs) constraint, as a 0/1 integer program
  solved by HiGHS (``scipy.optimize.milp``) with a zero relative gap, costs scaled so that its
  absolute tolerance is 1e-12 of their range (exact up to that; tested against brute force).

Ties of equal cost are broken the same way every time: the frontier prefers the smaller size,
then fewer BOPs, then the earlier option; the ILP result is moved, item by item, to the option
of equal cost with the smallest (size, BOPs).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from hawq_onnx.errors import HawqError

ILP_TIME_LIMIT_S = 300.0
# HiGHS prunes a branch whose bound is within about 1e-6 (absolute) of the incumbent; with the
# costs scaled to a total range of 1e6 that tells apart allocations 1e-12 of the range apart.
# (Scaled to 1, it kept a ResNet20 allocation 1.3e-5 above the optimum; tightening the
# tolerances instead made HiGHS stall for minutes on 120 binaries.)
ILP_COST_RANGE = 1e6


@dataclass(frozen=True)
class Item:
    """One item's options: size in bits, BOPs, cost and latencies, index-aligned."""

    size: np.ndarray  # int64
    bops: np.ndarray  # int64
    cost: np.ndarray  # float64, >= 0
    latency: np.ndarray | None = None  # float64 (tables, options): ms per latency table, where budgeted

    @staticmethod
    def of(size, bops, cost, latency=None) -> Item:
        lat = None if latency is None else np.asarray(latency, np.float64).reshape(-1, len(size))
        item = Item(np.asarray(size, np.int64), np.asarray(bops, np.int64), np.asarray(cost, np.float64), lat)
        if not (item.size.shape == item.bops.shape == item.cost.shape and item.size.ndim == 1 and item.size.size):
            raise ValueError("an item needs one or more options with size, bops and cost each")
        return item


@dataclass
class Frontier:
    """Non-dominated allocations sorted by size (ascending); cost strictly decreases along it."""

    size: np.ndarray   # int64 bits
    cost: np.ndarray   # float64
    bops: np.ndarray   # int64
    # per item: (index of the parent point on the previous frontier, option taken), per point
    trail: list[tuple[np.ndarray, np.ndarray]]

    def __len__(self) -> int:
        return int(self.size.size)

    def best_within(self, size_limit: int) -> int | None:
        """Index of the lowest-cost point whose size is <= size_limit (None if none fits)."""
        j = int(np.searchsorted(self.size, size_limit, side="right")) - 1
        return j if j >= 0 else None

    def choices(self, index: int) -> list[int]:
        """The option of every item for the point at ``index``."""
        out = [0] * len(self.trail)
        for t in range(len(self.trail) - 1, -1, -1):
            parent, option = self.trail[t]
            out[t] = int(option[index])
            index = int(parent[index])
        return out


def pareto_frontier(items: list[Item]) -> Frontier:
    """Every allocation that no other beats in both size and cost, with how to rebuild it."""
    size = np.zeros(1, np.int64)
    cost = np.zeros(1, np.float64)
    bops = np.zeros(1, np.int64)
    trail: list[tuple[np.ndarray, np.ndarray]] = []
    for item in items:
        k = item.size.size
        cand_size = (size[:, None] + item.size[None, :]).ravel()
        cand_cost = (cost[:, None] + item.cost[None, :]).ravel()
        cand_bops = (bops[:, None] + item.bops[None, :]).ravel()
        # size, then cost, then BOPs; lexsort is stable, so equal keys keep (parent, option) order
        order = np.lexsort((cand_bops, cand_cost, cand_size))
        c = cand_cost[order]
        best_before = np.minimum.accumulate(c)
        keep = np.empty(c.size, bool)
        keep[0] = True
        keep[1:] = c[1:] < best_before[:-1]  # strictly cheaper than everything at most this size
        kept = order[keep]
        trail.append(((kept // k).astype(np.int64), (kept % k).astype(np.int16)))
        size, cost, bops = cand_size[kept], cand_cost[kept], cand_bops[kept]
    return Frontier(size=size, cost=cost, bops=bops, trail=trail)


def canonical_ties(items: list[Item], choice: list[int]) -> list[int]:
    """Move each item to the option of exactly equal cost with the smallest (size, BOPs)."""
    out = []
    for item, j in zip(items, choice):
        # only options that use no more of any resource, so the limits still hold
        same = (item.cost == item.cost[j]) & (item.size <= item.size[j]) & (item.bops <= item.bops[j])
        if item.latency is not None:
            same &= (item.latency <= item.latency[:, [j]]).all(axis=0)
        same = np.flatnonzero(same)
        out.append(int(min(same, key=lambda o: (int(item.size[o]), int(item.bops[o]), int(o)))))
    return out


@contextlib.contextmanager
def _native_stdout_silenced() -> Iterator[None]:
    """HiGHS (scipy 1.17) prints a stray debug line ("HighsMipSolverData::transformNewInteger
    FeasibleSolution tmpSolver.run();") to file descriptor 1 on some problems even with its output
    off; it would land in the middle of the CLI's table."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    try:
        saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).fflush(None)  # C stdio's buffer must drain into /dev/null, not later
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def solve_ilp(items: list[Item], size_limit: int | None, bops_limit: int | None,
              *, latency_limits: Sequence[float] = (), time_limit: float = ILP_TIME_LIMIT_S) -> list[int] | None:
    """Lowest-cost option per item with total size <= size_limit, BOPs <= bops_limit and, per
    latency table k, total latency <= latency_limits[k] (each item's ``latency[k]``).

    Returns the options, or None when no allocation meets the limits. Binary x[i, o], one per
    item; costs shifted per item (a constant) and scaled to a range of ILP_COST_RANGE so HiGHS's
    absolute tolerances are tiny relative to the problem's own; the rounded solution is
    re-checked in integers.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array

    offsets = np.cumsum([0] + [item.size.size for item in items])
    n = int(offsets[-1])
    cost = np.concatenate([item.cost - item.cost.min() for item in items])
    spread = float(sum(item.cost.max() - item.cost.min() for item in items))  # the largest objective
    c = cost * (ILP_COST_RANGE / spread) if spread > 0 else cost
    size = np.concatenate([item.size for item in items])
    bops = np.concatenate([item.bops for item in items])
    rows = np.repeat(np.arange(len(items)), np.diff(offsets))
    one_each = LinearConstraint(csr_array((np.ones(n), (rows, np.arange(n))), shape=(len(items), n)), 1, 1)

    latency = (np.concatenate([item.latency for item in items], axis=1) if latency_limits
               else np.zeros((0, n)))
    if latency.shape[0] != len(latency_limits):
        raise ValueError(f"{len(latency_limits)} latency limit(s) for {latency.shape[0]} latency table(s)")
    tightened = np.asarray(latency_limits, np.float64).copy()
    slack = {"size": 0, "bops": 0}
    for _ in range(4):
        constraints = [one_each]
        if size_limit is not None:
            constraints.append(LinearConstraint(size[None, :] / size_limit, -np.inf,
                                                (size_limit - slack["size"]) / size_limit))
        if bops_limit is not None:
            constraints.append(LinearConstraint(bops[None, :] / bops_limit, -np.inf,
                                                (bops_limit - slack["bops"]) / bops_limit))
        for k, limit in enumerate(latency_limits):
            constraints.append(LinearConstraint(latency[k][None, :] / limit, -np.inf, tightened[k] / limit))
        with _native_stdout_silenced():
            res = milp(c, integrality=np.ones(n), bounds=Bounds(0, 1), constraints=constraints,
                       options={"mip_rel_gap": 0.0, "time_limit": time_limit, "disp": False})
        if res.status == 2:
            return None
        if res.status != 0 or res.x is None:
            raise HawqError(f"the BOPs- or latency-constrained allocation was not solved to optimality in "
                            f"{time_limit:.0f} s ({res.message}); drop those limits to use the exact frontier solver")
        x = res.x
        choice = [int(np.argmax(x[offsets[i]:offsets[i + 1]])) for i in range(len(items))]
        picked = offsets[:-1] + np.array(choice)
        over_size = int(size[picked].sum()) - size_limit if size_limit is not None else 0
        over_bops = int(bops[picked].sum()) - bops_limit if bops_limit is not None else 0
        over_latency = latency[:, picked].sum(axis=1) - np.asarray(latency_limits, np.float64)
        if over_size <= 0 and over_bops <= 0 and (over_latency <= 0).all():
            return canonical_ties(items, choice)
        tightened = np.where(over_latency > 0, tightened - 2 * over_latency, tightened)
        # HiGHS met the rows within its tolerance only; tighten the violated one and solve again
        if over_size > 0:
            slack["size"] = max(2 * slack["size"], over_size)
        if over_bops > 0:
            slack["bops"] = max(2 * slack["bops"], over_bops)
    raise RuntimeError("HiGHS kept returning allocations that exceed the limits by rounding")
