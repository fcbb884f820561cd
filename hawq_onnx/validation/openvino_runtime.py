"""OpenVINO's CPU plugin as a validation runtime: sessions, and which layers run on integers.

OpenVINO is an optional extra (``pip install hawq-onnx[openvino]``). A compiled model is
wrapped in the small part of ONNX Runtime's session interface that evaluation uses
(``get_inputs``, ``get_outputs``, ``run``), so accuracy, agreement and latency run the same code
for both runtimes.

Precision: ``INFERENCE_PRECISION_HINT=f32``. OpenVINO's default on CPUs with bf16 or AMX runs
float layers in bf16, which would make "float" another model; integer layers are unaffected.
The census reads the runtime model (``get_runtime_model``): every executed node's
``layerType``, ``runtimePrecision`` and the ONNX nodes it came from (``originalLayersNames``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from hawq_onnx.core.onnx_inspect import layer_name
from hawq_onnx.errors import HawqError

INSTALL_HINT = "OpenVINO is not installed: pip install 'hawq-onnx[openvino]'"
CONFIG_BASE = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
INTEGER_PRECISIONS = frozenset({"u8", "i8", "u4", "i4"})
LAYER_TYPES = frozenset({"Convolution", "FullyConnected", "MatMul", "Deconvolution", "GroupConvolution"})
PLUMBING = frozenset({"Const", "Input", "Output", "Parameter", "Result", "Reorder", "Reshape", "Convert"})
_ONNX_TYPES = {np.dtype(np.float32): "tensor(float)", np.dtype(np.float16): "tensor(float16)",
               np.dtype(np.float64): "tensor(double)", np.dtype(np.int64): "tensor(int64)",
               np.dtype(np.int32): "tensor(int32)", np.dtype(np.bool_): "tensor(bool)",
               np.dtype(np.uint8): "tensor(uint8)"}


def openvino_module():
    try:
        import openvino
    except ImportError:
        raise HawqError(INSTALL_HINT) from None
    return openvino


def version() -> str:
    return openvino_module().get_version().split("-")[0]


def describe() -> str:
    return f"OpenVINO {version()} CPU (f32 precision hint)"


@dataclass(frozen=True)
class _Arg:
    """What ONNX Runtime's NodeArg gives evaluation: name, type string, shape (None where dynamic)."""

    name: str
    type: str
    shape: list[Any]


def _arg(port) -> _Arg:
    shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    try:
        dtype = np.dtype(port.get_element_type().to_dtype())
    except Exception:
        dtype = None
    return _Arg(port.get_any_name(), _ONNX_TYPES.get(dtype, str(port.get_element_type())), shape)


class OpenVinoSession:
    """A compiled OpenVINO model behind ONNX Runtime's ``run(output_names, feed)``."""

    def __init__(self, compiled) -> None:
        self.compiled = compiled
        self._request = compiled.create_infer_request()
        self._inputs = [_arg(p) for p in compiled.inputs]
        self._outputs = [_arg(p) for p in compiled.outputs]

    def get_inputs(self) -> list[_Arg]:
        return self._inputs

    def get_outputs(self) -> list[_Arg]:
        return self._outputs

    def run(self, output_names: Sequence[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self._request.infer(feed)
        by_name = {p.get_any_name(): np.array(result[p]) for p in self.compiled.outputs}
        return [by_name[n] for n in (output_names or [o.name for o in self._outputs])]


def compile_model(path: str | Path, threads: int, profiling: bool = False):
    """OpenVINO's CPU compilation of the ONNX file (``profiling``: per-node times), or a one-line HawqError."""
    ov = openvino_module()
    config = {**CONFIG_BASE, "INFERENCE_NUM_THREADS": threads, **({"PERF_COUNT": True} if profiling else {})}
    try:
        return ov.Core().compile_model(str(path), "CPU", config)
    except Exception as exc:
        reason = _reason(exc)
        if _has_int2(path):
            reason += " (the file stores 2-bit weights as INT2, which OpenVINO's ONNX reader lacks: export for target 'openvino')"
        raise HawqError(f"OpenVINO cannot load {path}: {reason}") from None


def _has_int2(path: str | Path) -> bool:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return any(t.data_type in (onnx.TensorProto.INT2, onnx.TensorProto.UINT2) for t in model.graph.initializer)


def _reason(exc: Exception) -> str:
    """OpenVINO's messages open with source locations and generic steps; the reason is the rest."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    said = [ln for ln in lines if not ln.startswith(("Exception from", "Check ", "Loading input model",
                                                      "FrontEnd API failed"))]
    return "; ".join(said)[:300] or (lines[-1][:300] if lines else exc.__class__.__name__)


def open_session(path: str | Path, threads: int) -> OpenVinoSession:
    return OpenVinoSession(compile_model(path, threads))


def _tokens(names: str) -> set[str]:
    out = set()
    for name in names.split(","):
        name = name.strip()
        out.add(name)
        out.add(name.split("/")[0])
    return out


def _runtime_node(wp, nodes: list[tuple[str, str, set[str]]]) -> tuple[str, str, set[str]] | None:
    """The executed (name or type, kind, origins) entry that runs the layer of weight path ``wp``:
    a layer operator whose ``originalLayersNames`` hold the layer node's name or output. Kinds
    are matched by prefix (profiling names variants: FullyConnectedQuantizedLegacy)."""
    from hawq_onnx.validation.kernel_census import node_key

    names = {node_key(wp.node), *wp.node.output}
    return next((n for n in nodes if n[1].startswith(tuple(LAYER_TYPES)) and n[2] & names), None)


def kernel_census(path: str | Path, model: onnx.ModelProto | None = None):
    """Per layer of ``path``, the OpenVINO node that runs it and whether it computes on integers."""
    from hawq_onnx.validation.kernel_census import KernelCensus, LayerKernel, node_key, warn_missing, weight_paths

    original = model if model is not None else onnx.load(str(path), load_external_data=False)
    executed = []  # (runtime precision, layer type, origins)
    for op in compile_model(path, 1).get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        executed.append((str(info["runtimePrecision"].astype(str)), str(info["layerType"].astype(str)),
                         _tokens(str(info["originalLayersNames"].astype(str)))))
    layers = []
    for wp in weight_paths(original.graph):
        key = node_key(wp.node)
        match = _runtime_node(wp, executed)
        if match is None:
            kernel, mode = "", "missing"
        else:
            kernel = f"{match[1]} ({match[0]})"
            mode = "integer" if match[0] in INTEGER_PRECISIONS else "emulated" if wp.through_dequantize else "float"
        layers.append(LayerKernel(layer=layer_name(wp.root, key), node=key, op_type=wp.node.op_type,
                                  weight=wp.root or "", kernel=kernel, mode=mode))
    warn_missing(layers, path, "OpenVINO's runtime model")
    op_counts: dict[str, int] = {}
    integer_ops: dict[str, int] = {}
    for precision, layer_type, _ in executed:
        op_counts[layer_type] = op_counts.get(layer_type, 0) + 1
        if precision in INTEGER_PRECISIONS and layer_type not in PLUMBING:
            integer_ops[layer_type] = integer_ops.get(layer_type, 0) + 1
    return KernelCensus(path=str(path), provider=describe(), optimization_level="openvino", layers=layers,
                        integer_ops=dict(sorted(integer_ops.items())), dequantize_nodes=0,
                        quantize_nodes=op_counts.get("FakeQuantize", 0), op_counts=dict(sorted(op_counts.items())))


def layer_times(path: str | Path, *, batch_size: int = 1, threads: int = 2, runs: int = 100, warmup: int = 10):
    """Each layer's time inside the network under OpenVINO (``PERF_COUNT``): the executed node that
    runs it, found through the runtime model's ``originalLayersNames``, as the census finds it."""
    import time

    from hawq_onnx.validation.kernel_census import node_key, weight_paths
    from hawq_onnx.validation.layer_profile import LayerTimes, random_feed

    compiled = compile_model(path, threads, profiling=True)
    session = OpenVinoSession(compiled)
    feed = random_feed(session, batch_size)
    per_node: dict[str, list[float]] = {}
    kind: dict[str, str] = {}
    walls = []
    for k in range(warmup + runs):
        start = time.perf_counter()
        session._request.infer(feed)
        walls.append((time.perf_counter() - start) * 1000.0)
        if k < warmup:
            continue
        for info in session._request.profiling_info:
            if info.status == info.Status.EXECUTED:
                per_node.setdefault(info.node_name, []).append(info.real_time.total_seconds() * 1000.0)
                kind[info.node_name] = info.node_type
    median = {n: float(np.median(t)) for n, t in per_node.items()}
    origins = {op.get_friendly_name(): _tokens(str(op.get_rt_info()["originalLayersNames"].astype(str)))
               for op in compiled.get_runtime_model().get_ordered_ops()}
    executed = [(n, kind[n], origins.get(n, set())) for n in median]
    result = LayerTimes(batch_size=batch_size, threads=threads, runs=runs, run_ms=float(np.median(walls[warmup:])))
    claimed = set()
    original = onnx.load(str(path), load_external_data=False)
    for wp in weight_paths(original.graph):
        match = _runtime_node(wp, executed)
        if match is None:
            continue
        node = match[0]
        layer = layer_name(wp.root, node_key(wp.node))
        result.layers[layer] = result.layers.get(layer, 0.0) + median[node]
        result.kernels[layer] = kind[node]
        claimed.add(node)
    for n, ms in median.items():
        if n not in claimed:
            result.other[kind[n]] = result.other.get(kind[n], 0.0) + ms
    return result
