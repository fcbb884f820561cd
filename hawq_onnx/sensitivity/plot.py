"""The per-layer sensitivity chart of ``hawq-onnx analyze --plot``: one glance, most sensitive layers obvious.

Layers top to bottom in network order, each named with its parameter count: the trace per
parameter (HAWQ-V2's measure) with its standard error, and beside it, where the analysis
computed them, the top Hessian eigenvalue (HAWQ's); log scales. Hatched bars did not converge
(or, under decision stopping, were not settled); a negative top eigenvalue is drawn by its
magnitude and labelled "(-)"; a zero block gets no bar and the label "0".
"""

from __future__ import annotations

from pathlib import Path

from hawq_onnx.io.atomic import write_with
from hawq_onnx.io.sensitivity_report import Sensitivity

_EIGEN_COLOR = "#1f77b4"
_TRACE_COLOR = "#d62728"


def _panel(ax, names: list[str], values: list[float], converged: list[bool], color: str, title: str,
           errors: list[float] | None = None) -> None:
    ys = range(len(names))
    magnitudes = [abs(v) for v in values]
    positive = [m for m in magnitudes if m > 0]
    floor = min(positive) / 3 if positive else 1e-3
    for y, value, magnitude, ok in zip(ys, values, magnitudes, converged):
        if magnitude == 0:
            ax.text(floor, y, " 0", va="center", fontsize=8, color="0.3")
            continue
        ax.barh(y, magnitude - floor, left=floor, color=color if ok else "white", edgecolor=color,
                hatch=None if ok else "///", height=0.7)
        if errors is not None and 0 < errors[y] < magnitude:
            ax.errorbar(magnitude, y, xerr=[[errors[y]], [errors[y]]], color="0.2", capsize=2, linewidth=0.8)
        ax.text(magnitude + (errors[y] if errors is not None else 0), y,
                f" {'-' if value < 0 else ''}{magnitude:.3g}", va="center", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlim(floor, (max(positive) if positive else 1.0) * 8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", which="major", alpha=0.3)


def plot_sensitivity(report: Sensitivity, path: str | Path) -> Path:
    """Write the bar chart as a PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    layers = report.layers
    names = [f"{layer.name} ({layer.params:,} params)" for layer in layers]
    eigen = all(layer.top_eigenvalue is not None for layer in layers)
    fig, axes = plt.subplots(1, 2 if eigen else 1, sharey=True, squeeze=False,
                             figsize=(11 if eigen else 7, 1.2 + 0.32 * len(layers)))
    axes = list(axes[0])
    if eigen:
        _panel(axes[0], names, [layer.top_eigenvalue for layer in layers],
               [layer.eigen_converged for layer in layers], _EIGEN_COLOR, "top Hessian eigenvalue")
    _panel(axes[-1], names, [layer.trace_per_param for layer in layers], [layer.trace_converged for layer in layers],
           _TRACE_COLOR, "Hessian trace / parameter (+- standard error)",
           errors=[layer.trace_std_error / layer.params for layer in layers])
    axes[0].set_yticks(range(len(layers)), names, fontsize=8)
    axes[0].set_ylabel("layer (its parameter count)", fontsize=9)
    axes[0].invert_yaxis()  # network order, top to bottom
    done = "settled" if report.settings.get("stopping") == "decision" else "converged"
    fig.legend(handles=[Patch(facecolor="0.5", label=done),
                        Patch(facecolor="white", edgecolor="0.3", hatch="///", label=f"not {done}")],
               loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"{report.model}: per-layer Hessian sensitivity (log scale; {report.data})", fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    try:
        return write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
