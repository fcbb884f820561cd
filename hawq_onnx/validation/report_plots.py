"""The validation report's PNG plots.

Accuracy against size: the measured models (float, baseline, the exported file, and the
fine-tuned PyTorch model where known) on top-1, and the plan's Pareto candidates on their
predicted cost, since only the chosen plan was trained and measured. Bits per layer: each
layer's weight bits next to its Hessian sensitivity (did the sensitive layers keep their
bits?), each bar coloured by how ONNX Runtime runs the layer.
"""

from __future__ import annotations

import os
from pathlib import Path

from hawq_onnx.io.atomic import write_with
from hawq_onnx.validation.report_origin import ReportOrigin
from hawq_onnx.validation.validate import ValidationReport

MODE_COLOURS = {"integer": "#2a9d55", "emulated": "#e07b24", "float": "#8c8c8c",
                "weight-only": "#4c78c8", "missing": "#c0392b"}
MODEL_COLOURS = {"float": "#555555", "quantized": "#d1495b", "ort-int8": "#2f6fb5"}
MODEL_MARKERS = {"float": "o", "quantized": "D", "ort-int8": "s"}
# What the plots and tables call each measured model (report.json keeps the short labels).
DISPLAY_NAMES = {"float": "float", "quantized": "exported (ONNX Runtime)", "ort-int8": "ort-int8 (ORT's own int8)"}
# Name offsets (points) per model, so that models of equal size and accuracy (a baseline
# identical to ours) stack their names instead of overprinting them.
LABEL_OFFSETS = {"float": (10, 0, "center"), "quantized": (10, -7, "top"), "ort-int8": (10, 7, "bottom")}
FRONTIER_COLOUR = "#7a7a7a"
SHORT_NAMES = {"quantized": "exported"}


def display_name(label: str) -> str:
    return DISPLAY_NAMES.get(label, label)


def size_text(n: float) -> str:
    for unit, scale in (("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=130)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    return write_with(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight",
                                                    metadata={"Software": None}))


def _frontier(result: ValidationReport, origin: ReportOrigin | None) -> list[tuple[float, float, bool]]:
    """(estimated file bytes, Omega, chosen) of the plan's frontier candidates.

    Only the chosen plan became a file; the others' file sizes are estimated as the exported
    file's size plus their difference in nominal weight bytes (scales and graph are alike)."""
    plan = origin.plan if origin else None
    if plan is None or not plan.pareto:
        return []
    chosen = next((p for p in plan.pareto if p.get("chosen")), None)
    if chosen is None or "weight_bytes" not in chosen:
        return []
    base = result.quantized.file_bytes - float(chosen["weight_bytes"])
    return [(base + float(p["weight_bytes"]), float(p["omega"]), bool(p.get("chosen")))
            for p in plan.pareto if (p.get("on_frontier", True) or p.get("chosen")) and "weight_bytes" in p]


def plot_accuracy_vs_size(result: ValidationReport, path: str | os.PathLike,
                          origin: ReportOrigin | None = None) -> Path:
    """Top-1 against file size (left axis); the Pareto candidates' predicted cost (right axis)."""
    from matplotlib.lines import Line2D

    fig = _figure(7.2, 5.2)
    ax = fig.add_subplot()
    frontier = _frontier(result, origin)
    largest = max([m.file_bytes for m in result.models] + [b for b, _, _ in frontier])
    unit, scale = ("MB", 1 << 20) if largest >= 1 << 20 else ("KB", 1 << 10)
    handles = []
    top1 = [100 * m.accuracy.top1 for m in result.models]
    for m, y in zip(result.models, top1):
        x = m.file_bytes / scale
        colour = MODEL_COLOURS.get(m.label, "#333333")
        entry = f"{display_name(m.label)}: {y:.2f} % top-1, {size_text(m.file_bytes)}"
        if m.drop_points is not None:
            entry += f" ({m.size_ratio:.2f}x float), drop {m.drop_points:+.2f} pts"
        handles.append(ax.scatter([x], [y], s=150 if m.label == "ort-int8" else 110,
                                  marker=MODEL_MARKERS.get(m.label, "o"), color=colour,
                                  zorder=4 if m.label == "quantized" else 3, edgecolor="white", linewidth=1.5,
                                  label=entry))
        dx, dy, va = LABEL_OFFSETS.get(m.label, (10, 0, "center"))
        ax.annotate(SHORT_NAMES.get(m.label, m.label), (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=10, color=colour,
                    va=va, fontweight="bold")
    tuned = origin.finetuned_top1 if origin else None
    if tuned is not None:
        y = 100 * tuned
        top1.append(y)
        handles.append(ax.scatter([result.quantized.file_bytes / scale], [y], s=110, marker="D", facecolor="none",
                                  edgecolor=MODEL_COLOURS["quantized"], linewidth=1.5, zorder=5,
                                  label=f"fine-tuned (PyTorch, plan grids only): {y:.2f} % top-1, before export"))
    pad = max((max(top1) - min(top1)) * 0.5, 0.5)
    ax.set_ylim(min(top1) - pad, max(top1) + pad)
    ax.set_xlim(0, largest / scale * 1.3)
    ax.set_xlabel(f"file size ({unit})")
    ax.set_ylabel(f"top-1 on {result.samples:,} test samples (%)")
    ax.grid(True, alpha=0.3)
    if frontier:
        ax2 = ax.twinx()
        positive = [o for _, o, _ in frontier if o > 0]
        floor = min(positive) / 10 if positive else 1e-12  # an Omega of 0 sits a decade below the rest
        pts = sorted(frontier)
        ax2.plot([b / scale for b, _, _ in pts], [max(o, floor) for _, o, _ in pts], "o--", ms=3.5, lw=1,
                 color=FRONTIER_COLOUR, alpha=0.8, zorder=2)
        for b, o, chosen in pts:
            if chosen:
                ax2.plot([b / scale], [max(o, floor)], "*", ms=14, color=MODEL_COLOURS["quantized"], zorder=6)
        ax2.set_yscale("log")
        ax2.invert_yaxis()  # up is better on both axes, as with accuracy
        ax2.set_ylabel("predicted cost: total Omega (log, inverted: higher is better)", color=FRONTIER_COLOUR)
        ax2.tick_params(axis="y", colors=FRONTIER_COLOUR)
        handles.append(Line2D([], [], color=FRONTIER_COLOUR, marker="o", ms=3.5, lw=1, ls="--",
                              label=f"Pareto candidates ({len(pts)}): predicted cost on the right axis; "
                                    "accuracy not measured,\nfile size estimated from their weight bytes"))
        handles.append(Line2D([], [], color=MODEL_COLOURS["quantized"], marker="*", ms=12, lw=0,
                              label="the chosen plan's predicted cost (right axis)"))
    title = f"Accuracy against size ({result.data})"
    ax.set_title(title)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=8.5, frameon=False,
              markerscale=0.8)
    return _save(fig, Path(path))


def plot_layer_bits(result: ValidationReport, path: str | os.PathLike) -> Path:
    import numpy as np
    from matplotlib.patches import Patch

    layers = result.layers
    n = max(len(layers), 1)
    with_sens = any(r.trace_per_param is not None for r in layers)
    fig = _figure(10 if with_sens else 6.4, 1.2 + 0.32 * n)
    axes = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1, 1]}) if with_sens else [fig.add_subplot()]
    y = np.arange(len(layers))[::-1]
    names = [r.layer for r in layers]
    ax = axes[0]
    colours = [MODE_COLOURS.get(r.mode, "#333333") for r in layers]
    bits = [r.bits for r in layers]
    ax.barh(y, bits, color=colours, height=0.7)
    for yi, r in zip(y, layers):
        label = f"W{r.bits}" + (f" A{r.act_bits}" if r.act_bits else " A-float")
        ax.text(r.bits + 0.3, yi, label, va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=9)
    ticks = sorted({2, 4, 8, *bits} - {b for b in bits if b > 8} | ({32} if max(bits, default=0) > 16 else set()))
    ax.set_xticks(ticks)
    ax.set_xlim(0, max(max(bits, default=8), 8) * 1.35)
    ax.set_xlabel("weight bits (W: weights, A: input activations)")
    ax.set_title("Bits per layer (quantized model)", pad=22)
    present = sorted({r.mode for r in layers}, key=list(MODE_COLOURS).index)
    ax.legend(handles=[Patch(color=MODE_COLOURS[m], label=f"runs as {m}") for m in present], loc="lower left",
              bbox_to_anchor=(0.0, 1.0), ncol=len(present), fontsize=8, frameon=False)
    ax.grid(True, axis="x", alpha=0.3)
    if with_sens:
        ax2 = axes[1]
        vals = [r.trace_per_param if r.trace_per_param and r.trace_per_param > 0 else np.nan for r in layers]
        ax2.barh(y, vals, color="#6a4c93", height=0.7)
        ax2.set_xscale("log")
        ax2.set_xlabel("Hessian trace / parameter (log; higher: more sensitive)")
        ax2.set_title("Sensitivity (HAWQ-V2)", pad=22)
        ax2.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(path))
