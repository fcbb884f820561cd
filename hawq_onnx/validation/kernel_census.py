"""Deployment view: which layers ONNX Runtime runs as integer kernels, and which it emulates.

A QDQ file only says what the author hoped for; ONNX Runtime decides at session load which
DequantizeLinear -> op -> QuantizeLinear groups it fuses into integer kernels (QLinearConv,
QGemm, ...) and which it leaves as "dequantize, then the float op". This module asks it: it
opens a session with ``optimized_model_filepath``, reads the graph ONNX Runtime wrote, and
reports per layer of the original file the kernel that runs it.

Optimization level: ``ORT_ENABLE_EXTENDED``. The QDQ fusions that decide integer versus
emulated run at that level; ``ORT_ENABLE_ALL`` only adds layout transforms (NCHWc / NHWC)
that rename nodes, re-lay weights under new names and give a hardware-specific file that ONNX
Runtime itself warns against reusing. Both levels give the same integer kernels (the tests
check this on the digits model).

Layers of the original graph are matched to nodes of the optimized one through their weight:
the names of every tensor on the path from the layer's weight input back to its initializer
(``w_q`` -> Cast -> ``w_i8`` -> DequantizeLinear -> ``w_dq``) are kept, and an optimized node
whose weight path shares a name is the same layer. Initializer names survive optimization;
constant folding names a folded tensor after the output it replaces, which is on the path too.
A node-name match is the fallback.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import onnx

from hawq_onnx.core.onnx_inspect import layer_name
from hawq_onnx.errors import HawqError
from hawq_onnx.io.json_fields import get, table, value

log = logging.getLogger(__name__)

# Kernels that compute on integers. Every QLinear* op (QLinearConv, QLinearMatMul, QLinearAdd,
# QLinearMul, QLinearAveragePool, QLinearGlobalAveragePool, QLinearConcat, QLinearSigmoid,
# QLinearLeakyRelu, QLinearSoftmax, QLinearReduceMean, QLinearWhere, ...) counts, plus these:
INTEGER_OPS = frozenset({
    "QGemm", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
    "QAttention", "QEmbedLayerNormalization", "DynamicQuantizeLSTM", "QOrderedMatMul",
    "QOrderedAttention", "QOrderedLayerNormalization", "QOrderedGelu", "QOrderedLongformerAttention",
})
# Float compute with the weight stored in few bits and expanded inside the kernel.
WEIGHT_ONLY_OPS = frozenset({"MatMulNBits", "GatherBlockQuantized"})

# op type -> index of the weight input, for ops that are "a layer" (have a constant weight).
# Covers the original graph (float, QDQ, QOperator) and the fused ops ONNX Runtime writes.
WEIGHT_INPUT = {
    "Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1,
    "QLinearConv": 3, "QLinearMatMul": 3, "QGemm": 3, "QLinearConvTranspose": 3,
    "ConvInteger": 1, "MatMulInteger": 1, "MatMulIntegerToFloat": 1, "DynamicQuantizeMatMul": 1,
    "FusedConv": 1, "NhwcFusedConv": 1, "FusedGemm": 1, "FusedMatMul": 1, "MatMulNBits": 1,
}
# Ops a weight passes through between its initializer and the layer.
WEIGHT_PATH_OPS = frozenset({"DequantizeLinear", "QuantizeLinear", "Cast", "Reshape", "Transpose",
                             "Identity", "Unsqueeze", "Squeeze", "Flatten", "ReorderInput"})

OPTIMIZATION_LEVEL = "extended"
MODES = ("integer", "emulated", "float", "weight-only", "missing")
_LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}

def is_integer_op(op_type: str) -> bool:
    return op_type.startswith("QLinear") or op_type in INTEGER_OPS


def node_key(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


@dataclass(frozen=True)
class WeightPath:
    node: onnx.NodeProto
    names: tuple[str, ...]        # tensor names from the node's weight input back to the root
    root: str | None              # initializer (or Constant output) at the end, None if not constant
    through_dequantize: bool      # a DequantizeLinear sits on the weight path
    bias: str | None = None       # initializer the bias comes from (through a DequantizeLinear), if any


# op type -> index of the bias input (the integer kernels take an int32 bias directly).
BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "FusedConv": 2, "NhwcFusedConv": 2, "FusedGemm": 2,
              "QLinearConv": 8, "QGemm": 8}


def _bias_root(node: onnx.NodeProto, constants: set[str], producer: dict[str, onnx.NodeProto]) -> str | None:
    idx = BIAS_INPUT.get(node.op_type)
    if idx is None or len(node.input) <= idx or not node.input[idx]:
        return None
    name = node.input[idx]
    if name in constants:
        return name
    dq = producer.get(name)
    if dq is not None and dq.op_type == "DequantizeLinear" and dq.input and dq.input[0] in constants:
        return dq.input[0]
    return None


def weight_paths(graph: onnx.GraphProto) -> list[WeightPath]:
    constants = {t.name for t in graph.initializer}
    constants.update(n.output[0] for n in graph.node if n.op_type == "Constant" and n.output)
    producer = {out: n for n in graph.node for out in n.output}
    paths = []
    for node in graph.node:
        idx = WEIGHT_INPUT.get(node.op_type)
        if idx is None or len(node.input) <= idx or not node.input[idx]:
            continue
        name, names, dq = node.input[idx], [node.input[idx]], False
        while name not in constants and name in producer and len(names) < 16:
            step = producer[name]
            if step.op_type not in WEIGHT_PATH_OPS or not step.input:
                break
            dq = dq or step.op_type == "DequantizeLinear"
            name = step.input[0]
            names.append(name)
        root = name if name in constants else None
        if root is not None:
            paths.append(WeightPath(node, tuple(names), root, dq, _bias_root(node, constants, producer)))
    return paths


def _fed_by_dequantize(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    producer = {out: n for n in graph.node for out in n.output}
    return bool(node.input) and getattr(producer.get(node.input[0]), "op_type", None) == "DequantizeLinear"


@dataclass
class LayerKernel:
    layer: str        # PyTorch module path when the weight is named <layer>.weight, else the node
    node: str         # node name (or first output) in the original file
    op_type: str      # op in the original file (Conv, Gemm, QLinearConv, ...)
    weight: str       # weight initializer in the original file
    kernel: str       # op ONNX Runtime runs ("" when the layer is gone from the optimized graph)
    mode: str         # integer | emulated | float | weight-only | missing

    @classmethod
    def from_json(cls, obj: Any) -> "LayerKernel":
        """One entry of ``KernelCensus.to_json()["layers"]``; ValueError if malformed."""
        return cls(**{k: get(obj, k, "str") for k in ("layer", "node", "op_type", "weight", "kernel", "mode")})


@dataclass
class KernelCensus:
    path: str
    provider: str
    optimization_level: str
    layers: list[LayerKernel]
    integer_ops: dict[str, int]      # op type -> count, every integer kernel in the optimized graph
    dequantize_nodes: int            # DequantizeLinear left in the optimized graph
    quantize_nodes: int              # QuantizeLinear left
    op_counts: dict[str, int] = field(default_factory=dict)

    @property
    def integer_kernels(self) -> int:
        return sum(self.integer_ops.values())

    def count(self, mode: str) -> int:
        return sum(1 for layer in self.layers if layer.mode == mode)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["integer_kernels"] = self.integer_kernels
        out["layers_by_mode"] = {m: self.count(m) for m in MODES}
        return out

    @classmethod
    def from_json(cls, obj: Any, path: str = "") -> "KernelCensus":
        """What ``to_json`` wrote, or the part of it a report keeps (see ``ModelResult.to_json``):
        ``path`` and ``op_counts`` where absent are ``path`` and empty, ``layers`` where absent
        (report.json before hawq-onnx wrote them) empty. ValueError if malformed."""
        obj = value(obj, "dict", "the kernel census")
        layers = [LayerKernel.from_json(x) for x in get(obj, "layers", "list")] if "layers" in obj else []
        return cls(path=get(obj, "path", "str") if "path" in obj else path, provider=get(obj, "provider", "str"),
                   optimization_level=get(obj, "optimization_level", "str"), layers=layers,
                   integer_ops=table(obj, "integer_ops", "int"), dequantize_nodes=get(obj, "dequantize_nodes", "int"),
                   quantize_nodes=get(obj, "quantize_nodes", "int"),
                   op_counts=table(obj, "op_counts", "int") if "op_counts" in obj else {})


def optimized_graph(path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                    level: str = OPTIMIZATION_LEVEL) -> onnx.ModelProto:
    """The graph ONNX Runtime runs after its graph optimizations, as it serializes it."""
    import onnxruntime as ort

    if level not in _LEVELS:
        raise HawqError(f"unknown optimization level {level!r}: use {', '.join(_LEVELS)}")
    from hawq_onnx.core.ort_session import open_session, session_options

    with tempfile.TemporaryDirectory(prefix="hawq-census-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        # The "hardware-specific model" warning at level all is expected: session_options logs errors only.
        options = session_options(1, str(out), getattr(ort.GraphOptimizationLevel, _LEVELS[level]))
        open_session(path, options, list(providers))
        if not out.is_file():
            raise HawqError(f"ONNX Runtime wrote no optimized graph for {path} (provider {providers[0]})")
        return onnx.load(str(out), load_external_data=False)


def match_layers(original: onnx.GraphProto, optimized: onnx.GraphProto) -> list[tuple[WeightPath, WeightPath | None]]:
    """Every layer of ``original`` with the node of ``optimized`` that runs it (None where gone):
    by a name on the weight path, else the node's name, else the bias's initializer (at level
    "all" the NCHWc transformer re-lays float weights under new names; the bias keeps its own)."""
    opt_paths = weight_paths(optimized)
    by_name: dict[str, WeightPath] = {}
    for wp in opt_paths:
        for name in wp.names:
            by_name.setdefault(name, wp)
    by_node = {node_key(wp.node): wp for wp in opt_paths}
    by_bias = {wp.bias: wp for wp in opt_paths if wp.bias is not None}
    return [(wp, next((by_name[n] for n in wp.names if n in by_name), None) or by_node.get(node_key(wp.node))
             or by_bias.get(wp.bias or "")) for wp in weight_paths(original)]


def warn_missing(layers: list[LayerKernel], path: str | Path, where: str) -> None:
    missing = [layer.layer for layer in layers if layer.mode == "missing"]
    if missing:
        log.warning("%s: %d layer(s) not found in %s (%s)", path, len(missing), where, ", ".join(missing[:5]))


def kernel_census(path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                  level: str = OPTIMIZATION_LEVEL, model: onnx.ModelProto | None = None) -> KernelCensus:
    """Per layer of ``path``, the kernel ONNX Runtime runs it with, and the integer-op counts."""
    original = model if model is not None else onnx.load(str(path), load_external_data=False)
    optimized = optimized_graph(path, providers, level).graph

    layers = []
    for wp, match in match_layers(original.graph, optimized):
        key = node_key(wp.node)
        if match is None:
            kernel, mode = "", "missing"
        else:
            kernel = match.node.op_type
            if is_integer_op(kernel):
                mode = "integer"
            elif kernel in WEIGHT_ONLY_OPS:
                mode = "weight-only"
            elif wp.through_dequantize or match.through_dequantize or _fed_by_dequantize(optimized, match.node):
                mode = "emulated"
            else:
                mode = "float"
        layers.append(LayerKernel(layer=layer_name(wp.root, key), node=key, op_type=wp.node.op_type,
                                  weight=wp.root or "", kernel=kernel, mode=mode))
    warn_missing(layers, path, "ONNX Runtime's optimized graph")

    op_counts: dict[str, int] = {}
    for n in optimized.node:
        op_counts[n.op_type] = op_counts.get(n.op_type, 0) + 1
    integer_ops = {op: c for op, c in sorted(op_counts.items()) if is_integer_op(op)}
    return KernelCensus(path=str(path), provider=providers[0], optimization_level=level, layers=layers,
                        integer_ops=integer_ops, dequantize_nodes=op_counts.get("DequantizeLinear", 0),
                        quantize_nodes=op_counts.get("QuantizeLinear", 0), op_counts=dict(sorted(op_counts.items())))
