"""Writing a validation result out: terminal table, JSON, Markdown with PNG plots beside it.

The plots: top-1 against file size for float, baseline and ours (is it worth it?), and per
layer the weight bits next to the layer's Hessian sensitivity (did the sensitive layers keep
their bits?), each bar coloured by how ONNX Runtime runs the layer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from hawq_onnx.core import model_inputs
from hawq_onnx.io.atomic import write_text, write_with
from hawq_onnx.validation.validate import ValidationReport

MODE_COLOURS = {"integer": "#2a9d55", "emulated": "#e07b24", "float": "#8c8c8c",
                "weight-only": "#4c78c8", "missing": "#c0392b"}
MODEL_COLOURS = {"float": "#555555", "quantized": "#d1495b", "ort-int8": "#2f6fb5"}


# --- shared formatting -------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def _ms(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _size(n: int) -> str:
    for unit, scale in (("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _summary_rows(result: ValidationReport) -> tuple[list[str], list[list[str]]]:
    head = ["model", "top-1", "drop (pts)", "agree"]
    if result.num_classes > 10:
        head.insert(2, "top-5")
    head += ["file bytes", "size", "integer layers"]
    batches = result.latency.batch_sizes if result.latency else []
    for b in batches:
        head += [f"b{b} median ms (p90)", f"b{b} speed-up"]
    rows = []
    for m in result.models:
        census = m.census
        row = [m.label, _pct(m.accuracy.top1),
               "-" if m.drop_points is None else f"{m.drop_points:+.2f}", _pct(m.agreement)]
        if result.num_classes > 10:
            row.insert(2, _pct(m.accuracy.top5))
        row += [f"{m.file_bytes:,}", f"{m.size_ratio:.3f}x", f"{census.count('integer')}/{len(census.layers)}"]
        for b in batches:
            s = m.latency[b]
            row += [f"{_ms(s.median_ms)} ({_ms(s.p90_ms)})", f"{m.speedup[b]:.2f}x"]
        rows.append(row)
    return head, rows


def _layer_rows(result: ValidationReport) -> tuple[list[str], list[list[str]]]:
    head = ["layer", "op", "storage", "w bits", "a bits", "bytes", "float bytes", "ORT kernel", "runs as"]
    with_sens = any(r.trace is not None for r in result.layers)
    if with_sens:
        head += ["trace/param", "top eigenvalue"]
    rows = []
    for r in result.layers:
        row = [r.layer, r.op_type, r.storage, str(r.bits), "float" if r.act_bits is None else str(r.act_bits),
               f"{r.bytes:,}", "-" if r.float_bytes is None else f"{r.float_bytes:,}", r.kernel or "-", r.mode]
        if with_sens:
            row += ["-" if r.trace_per_param is None else f"{r.trace_per_param:.3g}",
                    "-" if r.top_eigenvalue is None else f"{r.top_eigenvalue:.3g}"]
        rows.append(row)
    return head, rows


def _bytes_by_type(result: ValidationReport) -> list[str]:
    return [f"{m.label}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(m.bytes_by_type.items(), key=lambda kv: -kv[1]))
            for m in result.models]


def _kernel_lines(result: ValidationReport) -> list[str]:
    out = []
    for m in result.models:
        c = m.census
        ops = ", ".join(f"{v} {k}" for k, v in c.integer_ops.items()) or "none"
        out.append(f"{m.label}: {c.integer_kernels} integer kernels ({ops}); layers: {c.count('integer')} integer, "
                   f"{c.count('emulated')} emulated, {c.count('float')} float; "
                   f"{c.dequantize_nodes} DequantizeLinear / {c.quantize_nodes} QuantizeLinear left")
        if m.kernel_agreement is not None:
            out[-1] += (f"; same top-1 as the file run unoptimized (Q/DQ as written) on "
                        f"{_pct(m.kernel_agreement)} of the samples")
    return out


def _gate_line(result: ValidationReport) -> str | None:
    if result.max_drop is None:
        return None
    verdict = "PASS" if result.gate_passed else "FAIL"
    return f"gate --max-drop {result.max_drop:g}: {verdict} (top-1 drop {result.quantized.drop_points:+.2f} points)"


def _shape_text(shape: model_inputs.InputShape) -> str:
    if model_inputs.is_single(shape):
        return f"(N, {', '.join(map(str, shape))})"
    return f"({model_inputs.describe(shape)}, each with the batch first)"


def _header_lines(result: ValidationReport) -> list[str]:
    lines = [f"data: {result.data}, test split, {result.samples:,} samples, {result.num_classes} classes; "
             f"input {result.input_name!r} {_shape_text(result.input_shape)}; "
             f"normalisation: {result.normalisation}"]
    if result.latency:
        lat = result.latency
        lines.append(f"latency: {lat.provider}, {lat.threads} thread(s) in one shared pool, {lat.warmup} warm-up + "
                     f"{lat.runs} runs per model interleaved; speed-up = float median / model median")
    else:
        lines.append("latency: not measured (--runs 0)")
    c = result.quantized.census
    lines.append(f"kernels: ONNX Runtime's optimized graph ({c.provider}, level {c.optimization_level})")
    r = result.fake_quant
    if r is not None:
        lines.append(f"against the PyTorch fake-quant model: same top-1 on {_pct(r.top1)} of {r.samples:,} samples, "
                     f"99th-percentile logit error {r.p99_steps:.2f} steps of an 8-bit output grid")
    return lines


# --- terminal ------------------------------------------------------------------------------

LAYER_TEXT_COLUMNS = frozenset({0, 1, 2, 7, 8})  # layer, op, storage, kernel, mode: left-aligned


def _text_table(head: Sequence[str], rows: Sequence[Sequence[str]], left: frozenset[int] = frozenset({0})) -> list[str]:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(h) for i, h in enumerate(head)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [fmt(head), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]


def format_table(result: ValidationReport) -> str:
    """The plain-text report printed by ``hawq-onnx validate``."""
    lines = _header_lines(result) + [""]
    lines += _text_table(*_summary_rows(result))
    lines += ["", "weight bytes by storage type:"] + ["  " + s for s in _bytes_by_type(result)]
    lines += ["", "integer kernels:"] + ["  " + s for s in _kernel_lines(result)]
    lines += ["", "layers of the quantized model:"]
    head, rows = _layer_rows(result)
    lines += _text_table(head, rows, left=LAYER_TEXT_COLUMNS)
    gate = _gate_line(result)
    if gate:
        lines += ["", gate]
    return "\n".join(lines)


# --- JSON ----------------------------------------------------------------------------------

# --- plots ---------------------------------------------------------------------------------

def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=130)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    return write_with(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))


MODEL_MARKERS = {"float": "o", "quantized": "D", "ort-int8": "s"}
# Name offsets (points) per model, so that models of equal size and accuracy (a baseline
# identical to ours) stack their names instead of overprinting them.
LABEL_OFFSETS = {"float": (10, 0, "center"), "quantized": (10, -7, "top"), "ort-int8": (10, 7, "bottom")}


def plot_accuracy_vs_size(result: ValidationReport, path: str | os.PathLike) -> Path:
    """Top-1 against file size; the figures themselves sit in the legend under the plot."""
    fig = _figure(6.4, 4.6)
    ax = fig.add_subplot()
    largest = max(m.file_bytes for m in result.models)
    unit, scale = ("MB", 1 << 20) if largest >= 1 << 20 else ("KB", 1 << 10)
    sizes = [m.file_bytes / scale for m in result.models]
    top1 = [100 * m.accuracy.top1 for m in result.models]
    for m, x, y in zip(result.models, sizes, top1):
        colour = MODEL_COLOURS.get(m.label, "#333333")
        entry = f"{m.label}: {y:.2f} % top-1, {_size(m.file_bytes)}"
        if m.drop_points is not None:
            entry += f" ({m.size_ratio:.2f}x float), drop {m.drop_points:+.2f} pts"
        ax.scatter([x], [y], s=150 if m.label == "ort-int8" else 110, marker=MODEL_MARKERS.get(m.label, "o"),
                   color=colour, zorder=4 if m.label == "quantized" else 3, edgecolor="white", linewidth=1.5,
                   label=entry)
        dx, dy, va = LABEL_OFFSETS.get(m.label, (10, 0, "center"))
        ax.annotate(m.label, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=10, color=colour,
                    va=va, fontweight="bold")
    pad = max((max(top1) - min(top1)) * 0.5, 0.5)
    ax.set_ylim(min(top1) - pad, max(top1) + pad)
    ax.set_xlim(0, max(sizes) * 1.3)
    ax.set_xlabel(f"file size ({unit})")
    ax.set_ylabel(f"top-1 on {result.samples:,} test samples (%)")
    ax.set_title(f"Accuracy against size ({result.data})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=9, frameon=False, markerscale=0.7)
    ax.grid(True, alpha=0.3)
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
    ax.set_xlabel("weight bits")
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
        ax2.set_xlabel("Hessian trace / parameter (log)")
        ax2.set_title("Sensitivity (HAWQ-V2)", pad=22)
        ax2.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(path))


# --- Markdown ------------------------------------------------------------------------------

def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]], left: frozenset[int] = frozenset({0})) -> list[str]:
    align = [":---" if i in left else "---:" for i in range(len(head))]
    return ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(str(c) for c in r) + " |" for r in rows)]


def plot_paths(report_path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(report_path)
    return p.with_name(f"{p.stem}.accuracy_vs_size.png"), p.with_name(f"{p.stem}.layers.png")


def write_markdown(result: ValidationReport, path: str | os.PathLike) -> list[Path]:
    """``report.md`` with its two PNG plots beside it; returns the files written."""
    acc_png, layers_png = plot_paths(path)
    plot_accuracy_vs_size(result, acc_png)
    plot_layer_bits(result, layers_png)
    q = result.quantized
    lines = ["# hawq-onnx validation report", ""]
    lines += [f"- float: `{result.float.path}`", f"- quantized: `{q.path}`"]
    lines += [f"- {line}" for line in _header_lines(result)]
    gate = _gate_line(result)
    if gate:
        lines.append(f"- **{gate}**")
    lines += ["", "## Summary", ""]
    lines += _md_table(*_summary_rows(result))
    lines += ["", f"![accuracy against size]({acc_png.name})", ""]
    lines += ["## Size", ""] + [f"- {s}" for s in _bytes_by_type(result)]
    lines += ["", "## Deployment: integer kernels in ONNX Runtime's optimized graph", ""]
    lines += [f"- {s}" for s in _kernel_lines(result)]
    lines += ["", "## Layers of the quantized model", ""]
    head, rows = _layer_rows(result)
    lines += _md_table(head, rows, left=LAYER_TEXT_COLUMNS)
    lines += ["", f"![bits per layer]({layers_png.name})", ""]
    write_text(path, "\n".join(lines))
    return [Path(path), acc_png, layers_png]
