"""The tensors of an ONNX model: their element types, and the checks onnx.checker leaves out.

Every tensor, wherever it sits, must keep its data in the file (onnx.checker and numpy_helper
would resolve an external path against the current directory: a file that is not part of the
model would be read); every initializer must have a known type, data that fits its shape, and
finite float values."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import Message
from onnx import TensorProto, numpy_helper

from hawq_onnx.errors import HawqError

STORAGE_BITS = {
    TensorProto.FLOAT: 32, TensorProto.FLOAT16: 16, TensorProto.BFLOAT16: 16, TensorProto.DOUBLE: 64,
    TensorProto.INT8: 8, TensorProto.UINT8: 8, TensorProto.INT4: 4, TensorProto.UINT4: 4,
    TensorProto.INT2: 2, TensorProto.UINT2: 2, TensorProto.INT16: 16, TensorProto.UINT16: 16,
    TensorProto.INT32: 32, TensorProto.UINT32: 32, TensorProto.INT64: 64, TensorProto.UINT64: 64,
    TensorProto.BOOL: 8,
}
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


_TYPE_NAMES = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64"}


def type_name(elem_type: int) -> str:
    return _TYPE_NAMES.get(elem_type) or TensorProto.DataType.Name(elem_type).lower()


def _step(field_name: str, item: Message) -> str:
    """How a path through the model names one message: ``node 'If_0' (If)``, ``attribute 'value'``."""
    if isinstance(item, onnx.NodeProto):
        return f"node {(item.name or (item.output[0] if item.output else '?'))!r} ({item.op_type})"
    if isinstance(item, onnx.AttributeProto):
        return f"attribute {item.name!r}"
    if isinstance(item, onnx.GraphProto):
        return "graph" if field_name == "graph" else f"subgraph {item.name!r}"
    if isinstance(item, onnx.FunctionProto):
        return f"function {(item.domain + ':' if item.domain else '') + item.name!r}"
    if isinstance(item, onnx.SparseTensorProto):
        return f"sparse {'initializer' if field_name == 'sparse_initializer' else 'tensor'} {item.values.name!r}"
    if isinstance(item, TensorProto):
        kind = {"initializer": "initializer", "values": "values", "indices": "indices"}.get(field_name, "tensor")
        return f"{kind} {item.name!r}" if item.name else kind
    return field_name.replace("_", " ")


_HOLDS_TENSORS: dict[str, bool] = {}  # protobuf message type -> can hold a TensorProto


def _holds_tensors(descriptor: Any) -> bool:
    """Whether a message of this protobuf type can hold a TensorProto at any depth (TypeProto,
    ValueInfoProto, StringStringEntryProto cannot: the walk skips them)."""
    if descriptor.full_name not in _HOLDS_TENSORS:
        seen, todo, edges = set(), [descriptor], {}
        while todo:  # the message types reachable from this one (GraphProto <-> NodeProto cycles)
            d = todo.pop()
            if d.full_name in seen:
                continue
            seen.add(d.full_name)
            edges[d.full_name] = [f.message_type for f in d.fields if f.message_type is not None]
            todo.extend(edges[d.full_name])
        holds = {name for name in seen if name == TensorProto.DESCRIPTOR.full_name}
        changed = True
        while changed:
            changed = False
            for name, targets in edges.items():
                if name not in holds and any(t.full_name in holds for t in targets):
                    holds.add(name)
                    changed = True
        for name in seen:
            _HOLDS_TENSORS.setdefault(name, name in holds)
    return _HOLDS_TENSORS[descriptor.full_name]


def _all_tensors(model: onnx.ModelProto) -> list[tuple[TensorProto, list[str]]]:
    """Every TensorProto anywhere in ``model``, with the path that leads to it.

    Walks the protobuf fields themselves rather than a list of known places: graph and sparse
    initializers, tensors in any node attribute (Constant's ``value`` and ``sparse_value``, and
    any attribute whatever its declared type), subgraphs of If/Loop/Scan at any depth, functions
    and their default attributes, training graphs; a place a later ONNX adds is walked too."""
    found: list[tuple[TensorProto, list[str]]] = []
    # (message, the field that held it, the parent's entry): the path is spelled out only when needed.
    stack: list[tuple[Message, str, Any]] = [(model, "", None)]
    while stack:
        entry = stack.pop()
        msg = entry[0]
        if isinstance(msg, TensorProto):
            path, at = [], entry
            while at[2] is not None:
                path.append(_step(at[1], at[0]))
                at = at[2]
            found.append((msg, path[::-1]))
            continue  # its own fields (external_data entries, segment) hold no tensors
        for fd, value in msg.ListFields():
            if fd.message_type is None or not _holds_tensors(fd.message_type):
                continue
            for item in ([value] if isinstance(value, Message) else value):
                stack.append((item, fd.name, entry))
    return found


def _uses_external_data(t: TensorProto) -> bool:
    return t.data_location == TensorProto.EXTERNAL or len(t.external_data) > 0


def check_self_contained(model: onnx.ModelProto, where: str) -> None:
    """Refuse a model any of whose tensors keeps its data in an external file.

    Every tensor counts, not only the main graph's initializers: a Constant node, a sparse
    initializer, a subgraph of If/Loop/Scan or a function can point at a file too, and onnx.checker
    and numpy_helper resolve such a path against the current directory. Nothing here reads it."""
    for t, path in _all_tensors(model):
        if not _uses_external_data(t):
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), None)
        shown = "" if location is None else f" ({location[:100]!r})"
        if path == ["graph", f"initializer {t.name!r}"]:
            raise HawqError(f"{where}: initializer {t.name!r} keeps its data in an external file{shown}; "
                            "give a self-contained model")
        outer = " > ".join(path[1:-1] if path[:1] == ["graph"] else path[:-1])
        place = f"{path[-1]} in {outer}" if outer else path[-1]
        raise HawqError(f"{where}: {place} keeps its data in an external file{shown}; give a self-contained "
                        "model (every tensor, Constant nodes and subgraphs included)")


_FIELD_OF_TYPE = {
    TensorProto.FLOAT: "float_data", TensorProto.DOUBLE: "double_data", TensorProto.INT64: "int64_data",
    TensorProto.UINT64: "uint64_data", TensorProto.UINT32: "uint64_data", TensorProto.STRING: "string_data",
}


def check_initializers(model: onnx.ModelProto, where: str) -> None:
    """What onnx.checker leaves out: known element types, data sizes that match the shapes, and
    finite float values (a NaN or Inf weight gives NaN outputs, not an error, downstream); and
    no tensor anywhere in the model (subgraphs, Constant nodes, functions included) with external
    data (:func:`check_self_contained`)."""
    check_self_contained(model, where)
    for t in model.graph.initializer:
        if t.data_type not in TensorProto.DataType.values() or t.data_type == TensorProto.UNDEFINED:
            raise HawqError(f"{where}: initializer {t.name!r} has an unknown element type {t.data_type}")
        if any(d < 0 for d in t.dims):
            raise HawqError(f"{where}: initializer {t.name!r} has a negative dimension")
        count = math.prod(t.dims) if t.dims else 1
        if t.data_type == TensorProto.STRING:
            continue
        if t.raw_data:
            expected = (count * STORAGE_BITS.get(t.data_type, 32) + 7) // 8
            if len(t.raw_data) != expected:
                raise HawqError(f"{where}: initializer {t.name!r} holds {len(t.raw_data)} bytes but its shape "
                                f"{list(t.dims)} and type {type_name(t.data_type)} need {expected}")
        else:
            field_name = _FIELD_OF_TYPE.get(t.data_type, "int32_data")
            held = len(getattr(t, field_name))
            per_item = 8 // STORAGE_BITS[t.data_type] if STORAGE_BITS.get(t.data_type, 8) < 8 else 1
            if held and held != count and held != (count + per_item - 1) // per_item:
                raise HawqError(f"{where}: initializer {t.name!r} holds {held} values but its shape "
                                f"{list(t.dims)} needs {count}")
            if not held and count:
                raise HawqError(f"{where}: initializer {t.name!r} holds no data for shape {list(t.dims)}")
        if t.data_type in FLOAT_TYPES and count:
            values = numpy_helper.to_array(t)
            if not np.isfinite(values if values.dtype.kind == "f" else values.astype(np.float32)).all():
                raise HawqError(f"{where}: initializer {t.name!r}{_role(model.graph, t.name)} holds NaN or Inf "
                                "values; fix the weights and export the model again")


_PARAMETER_ROLES = {"QuantizeLinear": ("", "scale", "zero point"), "DequantizeLinear": ("", "scale", "zero point")}


def _role(graph: onnx.GraphProto, name: str) -> str:
    """" (the scale of 'stem.weight')" where a Q/DQ reads ``name`` as its scale or zero point: the
    exporter gives those short names, and the tensor they quantize says where to look."""
    for node in graph.node:
        roles = _PARAMETER_ROLES.get(node.op_type)
        if roles is None:
            continue
        for index, used in enumerate(node.input):
            if used == name and 0 < index < len(roles):
                return f" (the {roles[index]} of {node.input[0]!r})"
    return ""
