"""The Pareto frontier of a plan as a PNG: total Omega (log) against the compression ratio."""

from __future__ import annotations

from pathlib import Path

from hawq_onnx.errors import HawqError
from hawq_onnx.io.atomic import write_with
from hawq_onnx.io.plan import Plan


def plot_pareto(plan: Plan, path: str | Path) -> Path:
    """Frontier points of ``plan.pareto``, the chosen allocation starred, the budget dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = plan.pareto
    if not points:
        raise HawqError("the plan has no Pareto frontier to plot (allocate it again with this hawq-onnx)")
    positive = [p["omega"] for p in points if p["omega"] > 0]
    # log scale: an Omega of exactly 0 (all-zero curvature) sits one decade below the smallest other value
    floor = min(positive) / 10 if positive else 1e-12
    frontier = [p for p in points if p.get("on_frontier", True)]
    chosen = [p for p in points if p.get("chosen")]

    fig = Figure(figsize=(7.5, 4.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([p["ratio"] for p in frontier], [max(p["omega"], floor) for p in frontier], "o-", ms=3.5, lw=1.2,
            color="tab:blue", label=f"Pareto frontier ({plan.allocation.get('pareto_points', len(frontier))} points, "
                                    f"{len(frontier)} shown)")
    budget_ratio = plan.budget.get("ratio")
    if budget_ratio:
        ax.axvline(budget_ratio, color="grey", ls="--", lw=1, label=f"budget {plan.budget.get('text', '')}")
        ax.axvspan(min(p["ratio"] for p in points) * 0.98, budget_ratio, color="grey", alpha=0.08, lw=0)
        ax.text(budget_ratio, 0.02, "over budget  ", transform=ax.get_xaxis_transform(), ha="right", va="bottom",
                fontsize=8, color="grey")
    for p in chosen:
        counts: dict[str, int] = {}
        for w, _ in p["bits"].values():
            key = "float" if w is None else f"{w}-bit"
            counts[key] = counts.get(key, 0) + 1
        mix = ", ".join(f"{n}x {k}" for k, n in sorted(counts.items()))
        ax.plot([p["ratio"]], [max(p["omega"], floor)], "*", ms=15, color="tab:red", zorder=5,
                label=f"chosen: {p['ratio']:.2f}x, Omega {p['omega']:.3g} (weights {mix})"
                      + ("" if p.get("on_frontier", True) else "\nabove the frontier: the BOPs limit binds"))
    ax.set_yscale("log")
    ax.set_xlabel("weight compression ratio against float32 (nominal bits)")
    ax.set_ylabel("total Omega (Hessian-weighted perturbation)")
    ax.set_title(f"{plan.model}: size vs sensitivity ({plan.allocation.get('metric', 'trace')} metric)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return write_with(path, lambda tmp: fig.savefig(tmp, format="png", metadata={"Software": None}))
