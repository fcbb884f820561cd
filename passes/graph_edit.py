"""Graph-editing steps every pass needs: fresh names, initializers, nodes with named outputs.

Names are derived from the tensors they belong to (``relu_1_scale``), never from counters or
object ids, so that the same input graph always gives the same output bytes.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir


def taken_names(graph: ir.Graph) -> set[str]:
    """Every value and node name in use in ``graph``."""
    names = {v.name for v in graph.inputs if v.name}
    names.update(name for name in graph.initializers)
    for node in graph:
        if node.name:
            names.add(node.name)
        names.update(v.name for v in node.outputs if v.name)
    return names


class NameScope:
    """Hands out names not yet used in a graph: ``base``, then ``base_1``, ``base_2``..."""

    def __init__(self, graph: ir.Graph) -> None:
        self._taken = taken_names(graph)

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self._taken:
            i += 1
            name = f"{base}_{i}"
        self._taken.add(name)
        return name

    def release(self, name: str) -> None:
        """``name`` is free again (its value or node was removed)."""
        self._taken.discard(name)


def add_initializer(graph: ir.Graph, names: NameScope, base: str, array: np.ndarray,
                    dtype: ir.DataType | None = None) -> ir.Value:
    """Register ``array`` as a new initializer named after ``base``."""
    name = names.fresh(base)
    array = np.array(array, order="C")  # a copy, 0-d arrays stay 0-d (unlike ascontiguousarray)
    tensor = ir.Tensor(array, dtype=dtype, name=name)
    # No type or shape on the value: the tensor carries both, and a typed initializer value is
    # written out again as value_info (bytes for nothing).
    value = ir.Value(name=name, const_value=tensor)
    graph.register_initializer(value)
    return value


def make_node(names: NameScope, op_type: str, inputs: Sequence[ir.Value | None], output_base: str,
              attributes: Mapping[str, object] | None = None) -> ir.Node:
    """A node with one output named after ``output_base``.

    The node itself stays unnamed (ONNX names are optional; the output names it): each name
    costs bytes in the file, and a quantized model has several Q/DQ nodes per layer.
    """
    out = ir.Value(name=names.fresh(output_base))
    return ir.node(op_type, list(inputs), attributes or {}, outputs=[out], name="")


def is_constant(value: ir.Value | None, depth: int = 4) -> bool:
    """An initializer, a Constant's output, or a Cast/DequantizeLinear/Identity of constants."""
    if value is None:
        return True  # an omitted optional input
    if value.const_value is not None or value.is_initializer():
        return True
    producer = value.producer()
    if producer is None or producer.domain not in ("", "ai.onnx") or depth == 0:
        return False
    if producer.op_type == "Constant":
        return True
    return (producer.op_type in ("Cast", "DequantizeLinear", "Identity")
            and all(is_constant(v, depth - 1) for v in producer.inputs))


def is_activation(value: ir.Value | None) -> bool:
    """A float tensor computed at run time from the graph's inputs (not a weight, not a constant)."""
    if value is None or value.dtype not in (None, ir.DataType.FLOAT):
        return False
    return not is_constant(value)


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy value of an initializer or Constant output, else None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def pads_with_zero(pad: ir.Node) -> bool:
    """A Pad whose constant value is omitted (0) or a constant zero."""
    if len(pad.inputs) > 2 and pad.inputs[2] is not None:
        value = constant_array(pad.inputs[2])
        return value is not None and not np.any(value)
    return True


def per_tensor_qparams(node: ir.Node) -> tuple[float, np.ndarray] | None:
    """A QuantizeLinear/DequantizeLinear's constant scalar scale and zero point (its array, which carries the type)."""
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return None
    scale, zero_point = constant_array(node.inputs[1]), constant_array(node.inputs[2])
    if scale is None or zero_point is None or scale.size != 1 or zero_point.size != 1:
        return None
    return float(scale.reshape(())), zero_point


def int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else int(attr.as_int())


def sole_user(value: ir.Value) -> ir.Node | None:
    """The one node that reads ``value`` (once), if there is exactly one and it is no graph output."""
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0].node


def nodes_of(graph: ir.Graph, op_types: Iterable[str]) -> list[ir.Node]:
    wanted = set(op_types)
    return [n for n in graph if n.op_type in wanted and n.domain in ("", "ai.onnx")]
