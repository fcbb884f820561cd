"""Every tensor of an ONNX model, wherever it sits, and the check that none keeps its data in an
external file (onnx.checker and numpy_helper would resolve such a path against the current
directory: a file that is not part of the model would be read)."""

from __future__ import annotations

from typing import Any

import onnx
from google.protobuf.message import Message
from onnx import TensorProto

from hawq_onnx.errors import HawqError


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
