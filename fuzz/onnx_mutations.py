"""Broken variants of a real ONNX model, for the fuzz tests and `fuzz/fuzz_onnx.py`.

Each mutation takes the model's bytes (or proto) and a numpy Generator and returns bytes:
flipped bytes, truncations, removed initializers, changed types and shapes, dangling inputs,
bad opsets, and combinations of them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto

Mutation = Callable[[bytes, np.random.Generator], bytes]


def flip_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    for pos in rng.integers(0, len(buf), int(rng.integers(1, 9))):
        buf[pos] ^= int(rng.integers(1, 256))
    return bytes(buf)


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, len(data)))]


def _edit(data: bytes, rng: np.random.Generator, fn) -> bytes:
    model = onnx.load_from_string(data)
    fn(model, rng)
    return model.SerializeToString()


def remove_initializer(data: bytes, rng: np.random.Generator) -> bytes:
    def fn(m, rng):
        if m.graph.initializer:
            del m.graph.initializer[int(rng.integers(len(m.graph.initializer)))]
    return _edit(data, rng, fn)


_TYPES = [TensorProto.FLOAT, TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.INT2,
          TensorProto.INT32, TensorProto.INT64, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BOOL,
          TensorProto.STRING, 0, 99]


def change_initializer_type(data: bytes, rng: np.random.Generator) -> bytes:
    def fn(m, rng):
        if m.graph.initializer:
            t = m.graph.initializer[int(rng.integers(len(m.graph.initializer)))]
            t.data_type = int(rng.choice(_TYPES))
    return _edit(data, rng, fn)


def change_initializer_shape(data: bytes, rng: np.random.Generator) -> bytes:
    def fn(m, rng):
        if m.graph.initializer:
            t = m.graph.initializer[int(rng.integers(len(m.graph.initializer)))]
            dims = list(t.dims)
            choice = int(rng.integers(4))
            if choice == 0 and dims:
                dims[int(rng.integers(len(dims)))] += int(rng.integers(1, 5))
            elif choice == 1:
                dims.append(int(rng.integers(1, 4)))
            elif choice == 2 and dims:
                dims.pop()
            else:
                dims = [0] + dims
            del t.dims[:]
            t.dims.extend(dims)
    return _edit(data, rng, fn)


def change_input(data: bytes, rng: np.random.Generator) -> bytes:
    def fn(m, rng):
        inp = m.graph.input[0].type.tensor_type
        if rng.random() < 0.5:
            inp.elem_type = int(rng.choice(_TYPES[:-1]))
        else:
            del inp.shape.dim[int(rng.integers(len(inp.shape.dim))):]
            if rng.random() < 0.5:
                inp.shape.dim.add().dim_value = int(rng.integers(1, 9))
    return _edit(data, rng, fn)


def dangle_node_input(data: bytes, rng: np.random.Generator) -> bytes:
    def fn(m, rng):
        node = m.graph.node[int(rng.integers(len(m.graph.node)))]
        if node.input:
            node.input[int(rng.integers(len(node.input)))] = "does_not_exist"
    return _edit(data, rng, fn)


def remove_node(data: bytes, rng: np.random.Generator) -> bytes:
    def fn(m, rng):
        del m.graph.node[int(rng.integers(len(m.graph.node)))]
    return _edit(data, rng, fn)


def bad_opset(data: bytes, rng: np.random.Generator) -> bytes:
    def fn(m, rng):
        if rng.random() < 0.5:
            del m.opset_import[:]
        else:
            m.opset_import[0].version = int(rng.choice([1, 5, 999]))
        if rng.random() < 0.3:
            m.ir_version = int(rng.choice([0, 3, 99]))
    return _edit(data, rng, fn)


def change_attribute(data: bytes, rng: np.random.Generator) -> bytes:
    def fn(m, rng):
        nodes = [n for n in m.graph.node if n.attribute]
        if nodes:
            node = nodes[int(rng.integers(len(nodes)))]
            a = node.attribute[int(rng.integers(len(node.attribute)))]
            if a.type == onnx.AttributeProto.INT:
                a.i = int(rng.choice([-1, 0, 7, 1 << 20]))
            elif a.type == onnx.AttributeProto.INTS:
                del a.ints[:]
                a.ints.extend(rng.integers(-2, 6, int(rng.integers(0, 5))).tolist())
            else:
                node.attribute.remove(a)
    return _edit(data, rng, fn)


MUTATIONS: dict[str, Mutation] = {
    "flip_bytes": flip_bytes,
    "truncate": truncate,
    "remove_initializer": remove_initializer,
    "change_initializer_type": change_initializer_type,
    "change_initializer_shape": change_initializer_shape,
    "change_input": change_input,
    "dangle_node_input": dangle_node_input,
    "remove_node": remove_node,
    "bad_opset": bad_opset,
    "change_attribute": change_attribute,
}


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One or two random mutations (names joined with '+')."""
    names = list(rng.choice(sorted(MUTATIONS), size=int(rng.integers(1, 3)), replace=False))
    for name in names:
        try:
            data = MUTATIONS[name](data, rng)
        except Exception:
            # The previous mutation left bytes that protobuf cannot parse: flip instead.
            data = flip_bytes(data, rng)
    return "+".join(names), data
