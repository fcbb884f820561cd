"""Tensor shapes of an ONNX model at batch 1, for counting MACs.

ONNX's static shape inference (with data propagation) first, symbolic input dims set to 1;
where it cannot follow a shape, one ONNX Runtime run on zeros at batch 1.
"""

from __future__ import annotations

import numpy as np
import onnx


def _value_shape(v: onnx.ValueInfoProto) -> list[int | str]:
    dims = []
    for d in v.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return dims


def _infer_shapes_batch1(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Shapes of every tensor with symbolic input dims set to 1 (batch 1)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name for i in m.graph.initializer}
    for inp in m.graph.input:
        if inp.name in inits:
            continue
        for d in inp.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.Clear()
                d.dim_value = 1
    del m.graph.value_info[:]
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:
        return {}
    shapes = {}
    for v in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        dims = _value_shape(v)
        if dims and all(isinstance(d, int) and d > 0 for d in dims):
            shapes[v.name] = dims
    return shapes


# Running the model is the fallback for shapes static inference cannot follow (TorchScript's
# option-A shortcuts, shapes computed from tensor values); not worth it on a very large model.
RUN_FOR_SHAPES_MAX_BYTES = 256 * 2 ** 20


def _run_shapes_batch1(model: onnx.ModelProto, names: list[str]) -> dict[str, list[int]]:
    """Shapes of ``names`` from one ONNX Runtime run on zeros at batch 1; {} where it cannot run."""
    if not names or model.ByteSize() > RUN_FOR_SHAPES_MAX_BYTES:
        return {}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name for i in m.graph.initializer}
    feeds = {}
    try:
        import onnxruntime as ort

        for inp in m.graph.input:
            if inp.name in inits:
                continue
            dims = [d.dim_value if d.HasField("dim_value") else 1 for d in inp.type.tensor_type.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
            feeds[inp.name] = np.zeros(dims, dtype=dtype)
        known = {o.name for o in m.graph.output}
        m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 4  # a model it cannot run keeps its unknown shapes, silently
        session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
        values = session.run(names, feeds)
    except Exception:  # any model ORT cannot build or run at batch 1 simply keeps its unknown shapes
        return {}
    return {n: list(v.shape) for n, v in zip(names, values) if v.ndim and all(d > 0 for d in v.shape)}
