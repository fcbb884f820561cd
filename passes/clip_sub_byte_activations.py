"""Rewrite 4-bit activation Q/DQ as an 8-bit Q/DQ with a Clip, which CPU runtimes fuse.

A uint4 QuantizeLinear/DequantizeLinear pair is the exact ONNX statement of a 16-level
activation, but CPU runtimes fuse only 8-bit Q/DQ into integer operators. Two exact forms:

- ``on_integers=True`` (ONNX Runtime): uint8 Q -> Clip(0, 15) on the uint8 tensor -> DQ, the
  same integers (clip(clip(q, 0, 255), 0, 15) = clip(q, 0, 15)); ONNX Runtime still fuses
  DQ -> Conv -> Q into QLinearConv around the Clip (measured: ORT 1.32 CPU).
- ``on_integers=False`` (OpenVINO): Clip to [(0 - z) s, (15 - z) s] in float -> uint8 Q -> DQ;
  x / s + z of a value inside the bounds rounds into [0, 15], so the integers are the same.
  OpenVINO fuses the float Clip and the Q into the producing convolution (an integer Clip
  after the Q would be a separate float FakeQuantize there); ONNX Runtime would not fuse it.

Preserves: every value the graph computes (bit for bit), names of the quantized tensors, and
the 16-level grid, which stays visible in the file as the Clip's bounds.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from hawq_onnx.passes.graph_edit import NameScope, add_initializer, constant_array, make_node, nodes_of

# Sub-byte unsigned type -> its largest integer.
SUB_BYTE_UNSIGNED = {ir.DataType.UINT4: 15, ir.DataType.UINT2: 3}


def _float_bounds(q: ir.Node, qmax: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The float interval that Q maps into [0, qmax]; None unless the scale and zero point are scalars."""
    scale, zero = constant_array(q.inputs[1]), constant_array(q.inputs[2])
    if scale is None or zero is None or scale.size != 1 or zero.size != 1:
        return None
    s, z = float(scale.reshape(())), float(zero.reshape(()))
    return np.array((0 - z) * s, np.float32), np.array((qmax - z) * s, np.float32)


class ClipSubByteActivationsPass(ir.passes.InPlacePass):
    def __init__(self, on_integers: bool = True) -> None:
        super().__init__()
        self.on_integers = on_integers

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = NameScope(graph)
        widened: dict[str, ir.Value] = {}  # sub-byte zero point name -> its uint8 twin

        def uint8_twin(zp: ir.Value) -> ir.Value:
            if zp.name not in widened:
                widened[zp.name] = add_initializer(graph, names, f"{zp.name}_uint8",
                                                   constant_array(zp).astype(np.uint8), ir.DataType.UINT8)
            return widened[zp.name]

        modified = False
        for q in nodes_of(graph, ["QuantizeLinear"]):
            zp = q.inputs[2] if len(q.inputs) > 2 else None
            if zp is None or zp.const_value is None or zp.const_value.dtype not in SUB_BYTE_UNSIGNED:
                continue
            qmax = SUB_BYTE_UNSIGNED[zp.const_value.dtype]
            producer = q.inputs[0].producer() if q.inputs[0] is not None else None
            requantizes = producer is not None and producer.op_type == "DequantizeLinear"
            bounds = None if self.on_integers or requantizes else _float_bounds(q, qmax)
            q.replace_input_with(2, uint8_twin(zp))
            out = q.outputs[0]
            out.type = ir.TensorType(ir.DataType.UINT8)
            modified = True
            if bounds is not None:
                source = q.inputs[0]
                lo, hi = (add_initializer(graph, names, f"{out.name}_{end}", b, ir.DataType.FLOAT)
                          for end, b in zip(("min", "max"), bounds))
                clamp = make_node(names, "Clip", [source, lo, hi], f"{source.name}_clamp")
                clamp.outputs[0].type, clamp.outputs[0].shape = source.type, source.shape
                graph.insert_before(q, clamp)
                q.replace_input_with(0, clamp.outputs[0])
                continue
            lo = add_initializer(graph, names, f"{out.name}_min", np.array(0, np.uint8), ir.DataType.UINT8)
            hi = add_initializer(graph, names, f"{out.name}_max", np.array(qmax, np.uint8), ir.DataType.UINT8)
            readers = list(out.uses())
            clip = make_node(names, "Clip", [out, lo, hi], f"{out.name}_clip")
            for use in readers:
                use.node.replace_input_with(use.idx, clip.outputs[0])
            graph.insert_after(q, clip)
        for dq in nodes_of(graph, ["DequantizeLinear"]):
            zp = dq.inputs[2] if len(dq.inputs) > 2 else None
            if zp is not None and zp.const_value is not None and zp.const_value.dtype in SUB_BYTE_UNSIGNED \
                    and dq.inputs[0].dtype != zp.const_value.dtype:
                dq.replace_input_with(2, uint8_twin(zp))
                modified = True
        for name in widened:  # the sub-byte zero points are unused now
            value = graph.initializers[name]
            if not value.uses():
                graph.initializers.pop(name)
        return ir.passes.PassResult(model, modified)
