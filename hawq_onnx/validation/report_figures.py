"""The figures of a validation report in words and table rows, shared by the terminal table,
report.md and report.html, with a legend for every table column."""

from __future__ import annotations

from hawq_onnx.core import model_inputs
from hawq_onnx.validation.report_plots import display_name, size_text
from hawq_onnx.validation.validate import ValidationReport

LAYER_TEXT_COLUMNS = frozenset({0, 1, 2, 7, 8})  # layer, op, storage, kernel, mode: left-aligned
FINETUNED = "fine-tuned (PyTorch, plan grids only)"
EXPORTED = "exported (ONNX Runtime)"
REFERENCE = "its PyTorch reference (plan + export grids)"


# --- figures in words ---------------------------------------------------------------------

def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def ms(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def normalisation_words(note: str) -> str:
    if note == "as given":
        return "used as the caller's data gives them (no scaling added here)"
    if note.startswith("--model "):
        return f"scaled to [0, 1] and normalised with model {note.split(' ', 1)[1]}'s mean and standard deviation"
    if note.startswith("ONNX metadata"):
        return "scaled to [0, 1] and normalised with the mean and standard deviation in the float file's metadata"
    if note.startswith("none"):
        return "scaled to [0, 1] only: no mean and standard deviation were known"
    return note


def speedup_cell(stats) -> str:
    if stats is None:
        return "-"
    text = f"{stats.median:.2f}x"
    if stats.rounds > 1 and stats.q75 > stats.q25:
        text += f" ({stats.q25:.2f}-{stats.q75:.2f})"
    return text + (" unstable" if stats.stable is False else "")


def summary_rows(result: ValidationReport) -> tuple[list[str], list[list[str]]]:
    head = ["model", "top-1", "drop (pts)", "agrees with float"]
    if result.num_classes > 10:
        head.insert(2, "top-5")
    head += ["file bytes", "size vs float", "integer layers"]
    batches = result.latency.batch_sizes if result.latency else []
    for b in batches:
        head += [f"b{b} median ms (p90)", f"b{b} speed-up"]
    rows = []
    for m in result.models:
        census = m.census
        row = [display_name(m.label), pct(m.accuracy.top1),
               "-" if m.drop_points is None else f"{m.drop_points:+.2f}", pct(m.agreement)]
        if result.num_classes > 10:
            row.insert(2, pct(m.accuracy.top5))
        row += [f"{m.file_bytes:,}", f"{m.size_ratio:.3f}x", f"{census.count('integer')}/{len(census.layers)}"]
        for b in batches:
            s = m.latency[b]
            row += [f"{ms(s.median_ms)} ({ms(s.p90_ms)})",
                    "1.00x" if m.label == "float" else speedup_cell(m.speedup_stats.get(b))]
        rows.append(row)
    return head, rows


SUMMARY_LEGEND = [
    ("top-1", "share of the test samples whose highest-scoring class is the true label"),
    ("top-5", "share whose true label is among the five highest-scoring classes"),
    ("drop (pts)", "the float model's top-1 minus this model's, in percentage points: positive means this model "
                   "gets more samples wrong than the float model, negative fewer"),
    ("agrees with float", "share of the test samples on which this model picks the same class as the float "
                          "model, right or wrong"),
    ("file bytes, size vs float", "the ONNX file's size, and that size as a fraction of the float file's"),
    ("integer layers", "layers with weights that ONNX Runtime runs as integer kernels, of all such layers"),
    ("bN median ms (p90)", "time of one run on a batch of N samples in milliseconds: the median, and in brackets "
                           "the time 90 % of the runs stayed under"),
    ("bN speed-up", "how many times faster than the float model (below 1.00x: slower); the median over the "
                    "timing rounds, in brackets the range of the middle half of the rounds; \"unstable\": the "
                    "rounds disagreed by more than the target spread, so the figure may not repeat"),
]

LAYER_LEGEND = [
    ("layer", "the layer's name in the PyTorch model"),
    ("op", "the ONNX operator in the file"),
    ("storage", "the type its weights are stored as in the file (int4 and int2 packed; uint8: 8-bit weights "
                "shifted by 128, a form that cannot overflow on CPUs without VNNI)"),
    ("w bits", "bits per weight"),
    ("a bits", "bits of the layer's input values (activations); float: not quantized"),
    ("bytes, float bytes", "the layer's weight bytes in this file (scales included) and in the float file"),
    ("ORT kernel", "the operator ONNX Runtime runs after optimizing the graph"),
    ("runs as", "integer: an integer kernel; emulated: the weights are expanded to float on every run and a "
                "float operator runs; float: no quantization"),
    ("trace/param", "Hessian trace per parameter (HAWQ-V2's sensitivity): higher means the loss reacts more to "
                    "rounding this layer's weights"),
    ("top eigenvalue", "the Hessian's largest eigenvalue for the layer (HAWQ's sensitivity)"),
]


def layer_rows(result: ValidationReport) -> tuple[list[str], list[list[str]]]:
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


def bytes_by_type(result: ValidationReport) -> list[str]:
    return [f"{display_name(m.label)}: " + ", ".join(
        f"{k} {v:,}" for k, v in sorted(m.bytes_by_type.items(), key=lambda kv: -kv[1])) for m in result.models]


def kernel_lines(result: ValidationReport) -> list[str]:
    out = []
    for m in result.models:
        c = m.census
        ops = ", ".join(f"{v} {k}" for k, v in c.integer_ops.items()) or "none"
        out.append(f"{display_name(m.label)}: {c.integer_kernels} integer kernels ({ops}); layers: "
                   f"{c.count('integer')} integer, {c.count('emulated')} emulated, {c.count('float')} float; "
                   f"{c.dequantize_nodes} DequantizeLinear / {c.quantize_nodes} QuantizeLinear left")
        if m.kernel_agreement is not None:
            out[-1] += (f"; same top-1 as the same file run without graph optimizations (every quantization step "
                        f"as written) on {pct(m.kernel_agreement)} of the samples")
    return out


def gate_line(result: ValidationReport) -> str | None:
    if result.max_drop is None:
        return None
    verdict = "PASS" if result.gate_passed else "FAIL"
    return (f"accuracy gate (largest allowed drop {result.max_drop:g} points): {verdict} "
            f"(top-1 drop {result.quantized.drop_points:+.2f} points)")


def reference_line(result: ValidationReport) -> str | None:
    r = result.fake_quant
    if r is None:
        return None
    return (f"{EXPORTED} against {REFERENCE}: same top-1 on {pct(r.top1)} of {r.samples:,} samples; for 99 % of "
            f"the output scores the difference is at most {r.p99_steps:.2f} steps, a step being 1/255 of the "
            "reference's score range (the resolution of an 8-bit output)")


def _inputs_words(result: ValidationReport) -> str:
    if model_inputs.is_single(result.input_shape):
        return f"input {result.input_name!r} of shape (N, {', '.join(map(str, result.input_shape))})"
    return f"inputs {model_inputs.describe(result.input_shape)} (each with the batch first)"


def header_lines(result: ValidationReport) -> list[str]:
    lines = [f"data: {result.data}, test split, {result.samples:,} samples, {result.num_classes} classes; "
             f"{_inputs_words(result)}; inputs {normalisation_words(result.normalisation)}"]
    if result.latency:
        lat = result.latency
        rounds = sorted({s.rounds for per in lat.models.values() for s in per.values()})
        per_round = sorted({s.round_runs or s.runs for per in lat.models.values() for s in per.values()})
        rounds_text = str(rounds[0]) if len(rounds) == 1 else f"{rounds[0]}-{rounds[-1]}"
        shared = "shared by all models" if lat.provider.startswith("CPU") or "ExecutionProvider" in lat.provider \
            else "per model"
        lines.append(f"latency: {lat.provider}, {lat.threads} thread(s) {shared}; after "
                     f"{lat.warmup} warm-up runs the models take turns, {'/'.join(map(str, per_round))} "
                     f"run{'' if per_round == [1] else 's'} each per round, {rounds_text} rounds per batch size; speed-up = float time / model time, the "
                     "median over the rounds")
    else:
        lines.append("latency: not measured")
    c = result.quantized.census
    if c.optimization_level == "openvino":
        lines.append(f"kernels: as {c.provider} runs them, read from its runtime model")
    else:
        lines.append(f"kernels: as ONNX Runtime runs them, read from its optimized graph ({c.provider}, optimization "
                     f"level {c.optimization_level})")
    ref = reference_line(result)
    if ref:
        lines.append(ref)
    return lines


def verdict(result: ValidationReport) -> str:
    f, q = result.float, result.quantized
    text = (f"The exported model gets **{pct(q.accuracy.top1)}** top-1 against the float model's "
            f"{pct(f.accuracy.top1)} (drop {q.drop_points:+.2f} points) on {result.samples:,} test samples; its "
            f"file is **{f.file_bytes / q.file_bytes:.2f}x smaller** ({size_text(q.file_bytes)} against "
            f"{size_text(f.file_bytes)})")
    if q.speedup_stats:
        speeds = ", ".join(f"{s.median:.2f}x at batch {b}" + (" (slower)" if s.median < 1 else "")
                           + (" (unstable)" if s.stable is False else "")
                           for b, s in sorted(q.speedup_stats.items()))
        text += f"; its speed against the float model under {result.runtime} on this machine: {speeds}"
    return text + "."
