"""The validation report as a list of blocks, rendered to Markdown and to HTML alike.

Both renderings come from the same blocks so that report.md and report.html say the same
thing. Text may carry two inline marks, `code` and **bold**, which both renderers know.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from hawq_onnx.validation import report_figures as fig
from hawq_onnx.validation.report_figures import EXPORTED, FINETUNED, REFERENCE, pct
from hawq_onnx.validation.report_origin import ReportOrigin, origin_rows
from hawq_onnx.validation.report_plots import display_name
from hawq_onnx.validation.validate import ValidationReport

@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[Union[str, tuple[str, list[str]]]]   # an item, or an item with sub-items


@dataclass
class Table:
    head: list[str]
    rows: list[list[str]]
    left: frozenset[int] = frozenset({0})            # left-aligned columns
    legend: list[tuple[str, str]] = field(default_factory=list)  # (column, what it means)


@dataclass
class Image:
    path: Path
    alt: str
    caption: str = ""


Block = Union[Heading, Paragraph, Bullets, Table, Image]

AGREEMENT_BAR = 0.995   # the exported file reproduces its reference on at least this share


def _accuracy_section(result: ValidationReport, origin: ReportOrigin | None) -> list[Block]:
    f, q = result.float, result.quantized
    grids = len(origin.plan.region_grids) if origin and origin.plan else None
    extra = (f"plus {grids} extra 8-bit grids the export adds where regions meet" if grids
             else "plus whatever grids the export added" if grids is None else "and no extra grids")
    rows = [[f"float ({result.runtime})", "the float model as exported (BatchNorm folded into the convolutions)",
             pct(f.accuracy.top1), "-"]]
    tuned = origin.finetuned_top1 if origin else None
    if tuned is not None:
        rows.append([FINETUNED, "the fine-tuned model in PyTorch: each layer's weights and inputs rounded to the "
                                "plan's grids, nothing else", pct(tuned),
                     f"{100 * (tuned - f.accuracy.top1):+.2f}" if origin.finetuned_samples == result.samples
                     else "-"])
    rows.append([EXPORTED, f"the quantized ONNX file: the plan's grids {extra}", pct(q.accuracy.top1),
                 f"{-(q.drop_points or 0.0) + 0.0:+.2f}"])
    blocks: list[Block] = [Heading("Accuracy: which model is which"),
                           Table(["model", "what it is", "top-1", "points against float"], rows, frozenset({0, 1}),
                                 [("points against float", "this model's top-1 minus the float model's: negative "
                                                           "means it gets more test samples wrong")])]
    if tuned is not None:
        cost = origin.export_cost_points(q.accuracy.top1, result.samples)
        if cost is None:
            blocks.append(Paragraph(f"The export's cost is not given: the {FINETUNED} figure was measured on "
                                    f"other samples than this validation's {result.samples:,}."))
        else:
            what = ("cost nothing" if abs(cost) < 5e-3 else f"cost **{cost:.2f} points**" if cost > 0
                    else f"gained {-cost:.2f} points")
            blocks.append(Paragraph(f"The export {what} of top-1: {pct(tuned)} {FINETUNED} against "
                                    f"{pct(q.accuracy.top1)} {EXPORTED}."))
    r = result.fake_quant
    if r is not None:
        text = (f"{REFERENCE[0].upper() + REFERENCE[1:]}, the fine-tuned model with the export's extra grids "
                f"added and computed in PyTorch, gives the same top-1 as the exported file on {pct(r.top1)} of the "
                f"{r.samples:,} samples")
        text += (": the file computes what that model computes, so the difference from the fine-tuned model "
                 "comes from the extra grids, not from ONNX Runtime." if r.top1 >= AGREEMENT_BAR else
                 ": below 99.5 %, so ONNX Runtime does not compute what the plan and its grids say; see the "
                 "kernel section.")
        blocks.append(Paragraph(text))
    return blocks


def _speed_section(result: ValidationReport) -> list[Block]:
    if result.latency is None:
        return [Heading("Speed"), Paragraph("Not measured.")]
    items: list = []
    for m in result.models:
        if m.label == "float":
            continue
        for b, st in sorted(m.speedup_stats.items()):
            text = f"{display_name(m.label)}, batch {b}: {st.describe()}"
            reasons = m.slower_because.get(b)
            items.append((text + "; slower than float because:", reasons) if reasons else text)
    lat = result.latency
    protocol = (f"Timed under {result.runtime} with {lat.threads} thread(s), the models taking "
                "turns so that anything else slowing the machine slows them alike. The runs are grouped into "
                "rounds; each round gives its own speed-up, and rounds are added (up to a time limit) until the "
                f"middle half of them lies within {100 * lat.target_spread:.0f} % of their median.")
    return [Heading("Speed"), Paragraph(protocol), Bullets(items)]


def build_document(result: ValidationReport, origin: ReportOrigin | None, images: dict[str, Path]) -> list[Block]:
    """Every block of the report; ``images``: accuracy_vs_size and layers PNGs (plus, from
    ``origin``, the analysis and allocation plots where they exist)."""
    model = origin.plan.model if origin and origin.plan else None
    title = "hawq-onnx validation report" + (f": {model} on {result.data}" if model else "")
    files = [f"float model: `{result.float.path}`", f"exported model: `{result.quantized.path}`"]
    files += [f"{display_name(m.label)}: `{m.path}`" for m in result.models[2:] if m.path]
    gate = fig.gate_line(result)
    if gate:
        files.append(f"**{gate}**")
    doc: list[Block] = [Heading(title, 1), Paragraph(fig.verdict(result)), Bullets(files)]
    if origin is not None:
        rows = origin_rows(origin)
        if rows:
            doc += [Heading("How this model was made"), Table(["stage", "what was done"], rows, frozenset({0, 1}))]
    doc += _accuracy_section(result, origin)
    doc += [Heading("Summary"), Bullets(fig.header_lines(result)),
            Table(*fig.summary_rows(result), legend=[(k, v) for k, v in fig.SUMMARY_LEGEND
                                                     if k != "top-5" or result.num_classes > 10]),
            Image(images["accuracy_vs_size"], "accuracy against size",
                  "Top-1 against file size for every measured model (left axis). Where the plan is known, its "
                  "other Pareto candidates are drawn with their predicted cost on the right axis: they were "
                  "never trained or measured, so their accuracy is unknown.")]
    doc += _speed_section(result)
    doc += [Heading("Size: weight bytes by storage type"), Bullets(fig.bytes_by_type(result))]
    doc += [Heading(f"Deployment: integer kernels under {result.runtime}"),
            Bullets(fig.kernel_lines(result))]
    head, rows = fig.layer_rows(result)
    doc += [Heading("Layers of the exported model"),
            Table(head, rows, fig.LAYER_TEXT_COLUMNS, [(k, v) for k, v in fig.LAYER_LEGEND if k in head
                                                       or k.split(",")[0] in head]),
            Image(images["layers"], "bits per layer", f"Weight bits per layer, coloured by how {result.runtime} runs it, "
                                                      "beside the layer's Hessian sensitivity where known.")]
    extra = []
    if origin is not None and origin.sensitivity_png is not None and origin.sensitivity_png.is_file():
        extra.append(Image(origin.sensitivity_png, "per-layer Hessian sensitivity",
                           "Per-layer Hessian sensitivity from the analysis, log scale: the largest eigenvalue "
                           "(left) and the trace per parameter (right); the number beside each layer's name is its "
                           "parameter count; hatched bars did not converge."))
    if origin is not None and origin.pareto_png is not None and origin.pareto_png.is_file():
        extra.append(Image(origin.pareto_png, "Pareto frontier",
                           "Every plan on the Pareto frontier: weight compression against total predicted cost "
                           "(Omega, the Hessian-weighted rounding error); the star is the chosen plan, the dashed "
                           "line the budget."))
    if extra:
        doc += [Heading("Sensitivity and bit allocation"), *extra]
    return doc
