"""A per-layer table for any ONNX model: float, ONNX Runtime's QDQ, or ours.

For every Conv / ConvTranspose / Gemm / MatMul whose weight is a constant (an initializer,
possibly behind DequantizeLinear, Cast, Reshape or Transpose) and for the integer ops
(QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger): weight name and shape, parameters,
MACs at batch 1, the weight's storage type and effective bits (the narrowest signed grid that
holds its integers), the activation bits where Q/DQ feeds it, and its bytes on disk.

Batch-1 shapes (for MACs) come from :mod:`hawq_onnx.core.onnx_shapes`; the terminal table is
:mod:`hawq_onnx.core.inspection_format`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from hawq_onnx.core.onnx_shapes import _infer_shapes_batch1, _run_shapes_batch1, _value_shape
from hawq_onnx.core.onnx_tensors import (
    STORAGE_BITS,
    check_initializers,
    check_self_contained,
    type_name,
)
from hawq_onnx.errors import HawqError

# op type -> (index of the data input, index of the weight input)
LAYER_OPS = {
    "Conv": (0, 1), "ConvTranspose": (0, 1), "Gemm": (0, 1), "MatMul": (0, 1),
    "QLinearConv": (0, 3), "QLinearMatMul": (0, 3), "ConvInteger": (0, 1), "MatMulInteger": (0, 1),
    "QGemm": (0, 3),
}
# Ops a weight passes through on its way from the initializer to the layer.
WEIGHT_PATH_OPS = {"DequantizeLinear", "Cast", "Reshape", "Transpose", "Identity", "Unsqueeze", "Squeeze", "Flatten"}
INTEGER_TYPES = {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4,
                 TensorProto.INT2, TensorProto.UINT2, TensorProto.INT16, TensorProto.UINT16,
                 TensorProto.INT32, TensorProto.UINT32}
# <layer>.weight, and the names quantizers derive from it (<layer>.weight_quantized, ..._q4).
_WEIGHT_NAME = re.compile(r"^(?P<layer>.+)\.weight(?:[._].*)?$")


def layer_name(weight: str | None, node: str) -> str:
    """The PyTorch module path of a layer whose weight is named ``<layer>.weight`` (or a name a
    quantizer derived from it), else the node name."""
    if weight:
        m = _WEIGHT_NAME.match(weight)
        if m:
            return m.group("layer")
    return node


def tensor_bytes(t: TensorProto) -> int:
    if t.HasField("raw_data") or t.raw_data:
        return len(t.raw_data)
    count = math.prod(t.dims) if t.dims else 1
    return (count * STORAGE_BITS.get(t.data_type, 32) + 7) // 8


@dataclass
class LayerRow:
    node: str
    op_type: str
    weight: str | None
    shape: list[int]
    params: int
    macs: int | None
    storage: str          # float32, int8, int4, int2, ...
    bits: int             # effective weight bits
    act_bits: int | None  # bits of the quantized input activation, None when float
    bytes: int            # weight bytes on disk (scales and zero points included)
    integer_op: bool = False

    @property
    def layer(self) -> str:
        """The PyTorch module path when the weight is named <layer>.weight."""
        return layer_name(self.weight, self.node)


@dataclass
class Inspection:
    path: str | None
    opset: int
    ir_version: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    layers: list[LayerRow]
    file_bytes: int | None
    bytes_by_type: dict[str, int]
    params_by_type: dict[str, int]
    total_params: int
    op_counts: dict[str, int] = field(default_factory=dict)

    @property
    def layer_params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def layer_macs(self) -> int | None:
        macs = [r.macs for r in self.layers]
        return None if any(m is None for m in macs) else sum(macs)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for row, src in zip(out["layers"], self.layers):
            row["layer"] = src.layer
        out["totals"] = {
            "layers": len(self.layers),
            "layers_by_op": {op: sum(1 for r in self.layers if r.op_type == op)
                             for op in sorted({r.op_type for r in self.layers})},
            "layer_params": self.layer_params,
            "layer_macs": self.layer_macs,
            "total_params": self.total_params,
            "file_bytes": self.file_bytes,
            "bytes_by_type": self.bytes_by_type,
        }
        return out


def load_onnx(path: str | os.PathLike, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX file with one-line errors for the usual ways files are broken.

    The file is read alone (``load_external_data=False``) and refused before anything else looks
    at it if any tensor in it points at external data (:func:`check_self_contained`): onnx.checker
    and numpy_helper would otherwise resolve that path against the current directory."""
    p = Path(path)
    if not p.exists():
        raise HawqError(f"ONNX file {p} does not exist")
    if p.is_dir():
        raise HawqError(f"{p} is a folder, not an ONNX file")
    if not p.is_file():
        raise HawqError(f"{p} is not a regular file (a device, pipe or socket); give an ONNX file")
    if p.stat().st_size == 0:
        raise HawqError(f"ONNX file {p} is empty")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:
        raise HawqError(f"{p} is not a readable ONNX model ({exc.__class__.__name__}): truncated or another "
                        "format; export it again") from None
    if not model.graph.node:
        raise HawqError(f"{p} is not an ONNX model (no graph nodes; truncated or another format?)")
    check_self_contained(model, str(p))  # with check=False too: before the checker or anything reads data
    if check:
        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            # The checker's message spans lines (the node follows on the next one): keep it whole, short.
            text = " ".join(str(exc).split()) or exc.__class__.__name__
            raise HawqError(f"{p} fails the ONNX checker: {text[:300]}{'...' if len(text) > 300 else ''}; "
                            "fix the model or export it again") from None
        check_initializers(model, str(p))
    return model


def _effective_bits(values: np.ndarray, storage_bits: int, signed: bool) -> int:
    if values.size == 0:
        return storage_bits
    lo, hi = int(values.min()), int(values.max())
    for b in (2, 3, 4, 8, 16, 32):
        if b > storage_bits:
            break
        if signed and -(2 ** (b - 1)) <= lo and hi <= 2 ** (b - 1) - 1:
            return b
        if not signed and lo >= 0 and hi <= 2 ** b - 1:
            return b
    return storage_bits


def _io(values) -> list[dict[str, Any]]:
    return [{"name": v.name, "type": type_name(v.type.tensor_type.elem_type), "shape": _value_shape(v)} for v in values]


def inspect_onnx(source: str | os.PathLike | onnx.ModelProto) -> Inspection:
    if isinstance(source, onnx.ModelProto):
        model, path, file_bytes = source, None, None
        check_initializers(model, "model")
    else:
        model = load_onnx(source)
        path, file_bytes = str(source), os.path.getsize(source)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    for n in graph.node:  # Constant nodes hold weights too in some exports
        if n.op_type == "Constant" and n.attribute and n.attribute[0].t.name is not None:
            t = TensorProto()
            if n.attribute[0].HasField("t"):
                t.CopyFrom(n.attribute[0].t)
                t.name = n.output[0]
                inits.setdefault(n.output[0], t)
    shapes = _infer_shapes_batch1(model)
    unknown = [t for n in graph.node if n.op_type in LAYER_OPS and n.output and n.input
               for t in (n.output[0], n.input[0]) if t and t not in shapes]
    shapes.update(_run_shapes_batch1(model, unknown))

    def trace_weight(name: str) -> tuple[TensorProto | None, list[onnx.NodeProto]]:
        path_nodes: list[onnx.NodeProto] = []
        seen = 0
        while name not in inits and name in producer and seen < 16:
            node = producer[name]
            if node.op_type not in WEIGHT_PATH_OPS:
                return None, path_nodes
            path_nodes.append(node)
            name = node.input[0]
            seen += 1
        return inits.get(name), path_nodes

    def activation_bits(name: str) -> int | None:
        """Bits of the integer tensor a DequantizeLinear reads, narrowed by an integer Clip."""
        node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            return None
        src = node.input[0]
        src_node = producer.get(src)
        if src_node is not None and src_node.op_type == "Clip" and len(src_node.input) >= 3:
            lo, hi = inits.get(src_node.input[1]), inits.get(src_node.input[2])
            if lo is not None and hi is not None:
                lo_v, hi_v = (numpy_helper.to_array(t).reshape(-1) for t in (lo, hi))
                if lo_v.size == 1 and hi_v.size == 1 and np.isfinite(lo_v).all() and np.isfinite(hi_v).all():
                    span = int(hi_v[0]) - int(lo_v[0]) + 1
                    return max(1, math.ceil(math.log2(span))) if span > 0 else None
        if src in inits:
            return STORAGE_BITS.get(inits[src].data_type)
        if src_node is not None and src_node.op_type == "QuantizeLinear":
            zp = inits.get(src_node.input[2]) if len(src_node.input) > 2 else None
            bits = STORAGE_BITS.get(zp.data_type, 8) if zp is not None else 8
            return min(bits, _float_clamp_bits(src_node) or bits)
        return None

    def _float_clamp_bits(q: onnx.NodeProto) -> int | None:
        """Bits of the levels a float Clip before ``q`` leaves (OpenVINO's form of a 4-bit grid)."""
        clamp = producer.get(q.input[0])
        scale = inits.get(q.input[1]) if len(q.input) > 1 else None
        if clamp is None or clamp.op_type != "Clip" or len(clamp.input) < 3 or scale is None:
            return None
        bounds = [inits.get(clamp.input[i]) for i in (1, 2)]
        if any(b is None for b in bounds):
            return None
        lo, hi, s = (float(numpy_helper.to_array(t).reshape(-1)[0]) for t in (*bounds, scale))
        if not (np.isfinite([lo, hi, s]).all() and s > 0 and hi > lo):
            return None
        levels = round((hi - lo) / s) + 1
        return max(1, math.ceil(math.log2(levels)))

    used_bytes_names: set[str] = set()
    rows: list[LayerRow] = []
    for node in graph.node:
        if node.op_type not in LAYER_OPS:
            continue
        data_idx, w_idx = LAYER_OPS[node.op_type]
        if len(node.input) <= w_idx:
            continue
        weight, path_nodes = trace_weight(node.input[w_idx])
        if weight is None:
            continue  # activation x activation MatMul: not a layer with weights
        arr = numpy_helper.to_array(weight)
        storage = weight.data_type
        storage_bits = STORAGE_BITS.get(storage, 32)
        if storage in INTEGER_TYPES:
            signed = storage in (TensorProto.INT8, TensorProto.INT4, TensorProto.INT2, TensorProto.INT16, TensorProto.INT32)
            zp_name = None
            for pn in path_nodes:
                if pn.op_type == "DequantizeLinear" and len(pn.input) > 2:
                    zp_name = pn.input[2]
            if node.op_type in ("QLinearConv", "QLinearMatMul", "QGemm"):
                zp_name = node.input[5] if len(node.input) > 5 else None
            values = arr.astype(np.int64)
            zp = inits.get(zp_name) if zp_name else None
            if zp is not None:
                zpa = numpy_helper.to_array(zp).astype(np.int64)
                if zpa.ndim == 1 and values.ndim >= 1 and zpa.size == values.shape[0] and zpa.size > 1:
                    zpa = zpa.reshape((-1,) + (1,) * (values.ndim - 1))
                try:
                    values = values - zpa
                except ValueError:  # a file onnx.checker passes but no runtime could run
                    raise HawqError(f"the zero point {zp.name} (shape {list(zpa.shape)}) does not fit the weight "
                                    f"{weight.name} (shape {list(values.shape)}) of node {node.name or node.op_type}"
                                    ) from None
                signed = True
            bits = _effective_bits(values, max(storage_bits, 8) if not signed else storage_bits, signed)
            bits = min(bits, storage_bits) if signed else bits
        else:
            bits = storage_bits
        nbytes = tensor_bytes(weight)
        used_bytes_names.add(weight.name)
        for pn in path_nodes:
            if pn.op_type == "DequantizeLinear":
                for extra in pn.input[1:]:
                    if extra in inits and extra not in used_bytes_names:
                        nbytes += tensor_bytes(inits[extra])
                        used_bytes_names.add(extra)
        shape = list(arr.shape)
        params = int(arr.size)
        out_shape = shapes.get(node.output[0])
        macs = None
        if out_shape is not None and shape:
            if node.op_type in ("Conv", "QLinearConv", "ConvInteger"):
                macs = math.prod(out_shape) * math.prod(shape[1:])
            elif node.op_type == "ConvTranspose":
                in_shape = shapes.get(node.input[data_idx])
                macs = math.prod(in_shape) * math.prod(shape[1:]) if in_shape else None
            elif node.op_type in ("Gemm", "QGemm"):
                trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
                k = shape[1] if trans_b else shape[0]
                macs = math.prod(out_shape) * k
            else:  # MatMul family: weight [K, N]
                macs = math.prod(out_shape) * shape[-2] if len(shape) >= 2 else math.prod(out_shape)
        if node.op_type in ("QLinearConv", "QLinearMatMul", "QGemm"):
            act_bits = 8
        elif node.op_type in ("ConvInteger", "MatMulInteger"):
            act_bits = 8
        else:
            act_bits = activation_bits(node.input[data_idx])
        rows.append(LayerRow(node=node.name or node.output[0], op_type=node.op_type, weight=weight.name,
                             shape=shape, params=params, macs=macs, storage=type_name(storage), bits=bits,
                             act_bits=act_bits, bytes=nbytes,
                             integer_op=node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul")))

    bytes_by_type: dict[str, int] = {}
    params_by_type: dict[str, int] = {}
    total_params = 0
    for t in graph.initializer:
        key = type_name(t.data_type)
        bytes_by_type[key] = bytes_by_type.get(key, 0) + tensor_bytes(t)
        count = math.prod(t.dims) if t.dims else 1
        params_by_type[key] = params_by_type.get(key, 0) + count
        total_params += count
    op_counts: dict[str, int] = {}
    for n in graph.node:
        op_counts[n.op_type] = op_counts.get(n.op_type, 0) + 1
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return Inspection(path=path, opset=opset, ir_version=model.ir_version, inputs=_io(
        [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]),
        outputs=_io(graph.output), layers=rows, file_bytes=file_bytes,
        bytes_by_type=dict(sorted(bytes_by_type.items())), params_by_type=dict(sorted(params_by_type.items())),
        total_params=total_params, op_counts=dict(sorted(op_counts.items())))
