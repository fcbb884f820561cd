"""The terminal table of an ONNX model's inspection (``hawq-onnx inspect``)."""

from __future__ import annotations

from hawq_onnx.core.onnx_inspect import Inspection


def format_inspection(ins: Inspection) -> str:
    """The terminal table."""
    head = ("layer", "op", "weight shape", "params", "MACs", "storage", "w bits", "a bits", "bytes")
    rows = [(r.layer, r.op_type, "x".join(map(str, r.shape)), f"{r.params:,}",
             f"{r.macs:,}" if r.macs is not None else "?", r.storage, str(r.bits),
             str(r.act_bits) if r.act_bits else "float", f"{r.bytes:,}") for r in ins.layers]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = []
    lines.append(f"{ins.path or '<model>'}: opset {ins.opset}, IR {ins.ir_version}")
    for io_kind, items in (("input", ins.inputs), ("output", ins.outputs)):
        for item in items:
            lines.append(f"  {io_kind} {item['name']}: {item['type']} [{', '.join(map(str, item['shape']))}]")
    lines.append("")
    fmt = "  ".join(f"{{:<{w}}}" if i in (0, 1, 2, 5) else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines.append(fmt.format(*head))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt.format(*row) for row in rows)
    lines.append("")
    macs = ins.layer_macs
    by_op = ", ".join(f"{sum(1 for r in ins.layers if r.op_type == op)} {op}" for op in sorted({r.op_type for r in ins.layers}))
    lines.append(f"layers: {len(ins.layers)} ({by_op or 'none'})")
    lines.append(f"parameters: {ins.layer_params:,} in layers, {ins.total_params:,} in all initializers")
    lines.append(f"MACs (batch 1): {macs:,}" if macs is not None else "MACs (batch 1): unknown (shape inference failed)")
    if ins.file_bytes is not None:
        lines.append(f"file size: {ins.file_bytes:,} bytes")
    lines.append("initializer bytes by type: " + ", ".join(f"{k} {v:,}" for k, v in ins.bytes_by_type.items()))
    return "\n".join(lines)
