"""Writing a validation result out: terminal table, and report.md with report.html and PNG plots beside it.

The pieces: :mod:`report_figures` (figures in words, table rows, column legends),
:mod:`report_origin` (how the model was made, from its plan and analysis), :mod:`report_plots`
(the PNGs), :mod:`report_document` (the report as blocks), :mod:`report_markdown` and
:mod:`report_html` (the two renderings of the same blocks).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from hawq_onnx.io.atomic import write_text
from hawq_onnx.validation.report_document import build_document
from hawq_onnx.validation.report_figures import (
    LAYER_TEXT_COLUMNS,
    bytes_by_type,
    gate_line,
    header_lines,
    kernel_lines,
    layer_rows,
    summary_rows,
)
from hawq_onnx.validation.report_html import to_html
from hawq_onnx.validation.report_markdown import to_markdown
from hawq_onnx.validation.report_origin import ReportOrigin
from hawq_onnx.validation.report_plots import plot_accuracy_vs_size, plot_layer_bits
from hawq_onnx.validation.validate import ValidationReport

__all__ = ["ReportOrigin", "format_table", "plot_accuracy_vs_size", "plot_layer_bits", "plot_paths",
           "write_markdown", "write_reports"]


# --- terminal ------------------------------------------------------------------------------

def _text_table(head: Sequence[str], rows: Sequence[Sequence[str]], left: frozenset[int] = frozenset({0})) -> list[str]:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(h) for i, h in enumerate(head)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [fmt(head), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]


def format_table(result: ValidationReport) -> str:
    """The plain-text report printed by ``hawq-onnx validate``."""
    lines = header_lines(result) + [""]
    lines += _text_table(*summary_rows(result))
    unstable = [(m, b, s) for m in result.models for b, s in sorted(m.speedup_stats.items())
                if m.label != "float" and s.stable is False]
    for m, b, s in unstable:
        lines.append(f"{m.label} at batch {b}: {s.describe()}")
    for m in result.models:
        for b, reasons in sorted(m.slower_because.items()):
            lines += [f"{m.label} is slower than float at batch {b}:"] + [f"  - {r}" for r in reasons]
    lines += ["", "weight bytes by storage type:"] + ["  " + s for s in bytes_by_type(result)]
    lines += ["", "integer kernels:"] + ["  " + s for s in kernel_lines(result)]
    lines += ["", "layers of the quantized model:"]
    head, rows = layer_rows(result)
    lines += _text_table(head, rows, left=LAYER_TEXT_COLUMNS)
    gate = gate_line(result)
    if gate:
        lines += ["", gate]
    return "\n".join(lines)


# --- files ---------------------------------------------------------------------------------

def plot_paths(report_path: str | os.PathLike) -> tuple[Path, ...]:
    """Every file written beside ``report_path``: its two plots and report.html."""
    p = Path(report_path)
    return p.with_name(f"{p.stem}.accuracy_vs_size.png"), p.with_name(f"{p.stem}.layers.png"), p.with_suffix(".html")


def write_reports(result: ValidationReport, path: str | os.PathLike, origin: ReportOrigin | None = None) -> list[Path]:
    """``report.md``, ``report.html`` (self-contained) and the two PNG plots; returns the files written.

    ``origin`` (the plan, the analysis, their plots) adds how the model was made, the fine-tuned
    model's accuracy and the export's cost, and the Pareto candidates on the accuracy plot."""
    md_path = Path(path)
    acc_png, layers_png, html_path = plot_paths(md_path)
    plot_accuracy_vs_size(result, acc_png, origin)
    plot_layer_bits(result, layers_png)
    blocks = build_document(result, origin, {"accuracy_vs_size": acc_png, "layers": layers_png})
    write_text(md_path, to_markdown(blocks, md_path.parent))
    write_text(html_path, to_html(blocks))
    return [md_path, html_path, acc_png, layers_png]


def write_markdown(result: ValidationReport, path: str | os.PathLike, origin: ReportOrigin | None = None) -> list[Path]:
    """The name older callers use: :func:`write_reports`."""
    return write_reports(result, path, origin)
