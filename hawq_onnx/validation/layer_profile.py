"""Where a model's time goes under ONNX Runtime: each layer's kernel time inside the running network.

A layer timed alone as a one-operator model pays ONNX Runtime's layout conversions (NCHW <-> NHWC
Transposes around QLinearConv, NCHWc reorders around Conv) that a network pays once, and
misleads (BENCHMARKS.md, session 14). Here the whole network runs in the session a user deploys
(``ORT_ENABLE_ALL``, ``threads`` intra-op threads) with ONNX Runtime's profiler on; each node's
kernel time is its median over the timed runs, and the node that runs a layer is found as the
kernel census finds it (:func:`hawq_onnx.validation.kernel_census.match_layers`). Nodes that run
no layer (QuantizeLinear, Transposes, residual adds, pooling, Clips) are summed by operator.

The profiler itself costs time per node, so ``run_ms`` (wall time of a profiled run) is above an
unprofiled run's; the per-node figures are the kernels' own.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from hawq_onnx.core.onnx_inspect import layer_name, load_onnx
from hawq_onnx.errors import OptionError
from hawq_onnx.validation.kernel_census import match_layers, node_key
from hawq_onnx.validation.ort_eval import NUMPY_TYPES

KERNEL_SUFFIX = "_kernel_time"


@dataclass
class LayerTimes:
    batch_size: int
    threads: int
    runs: int
    run_ms: float                                            # median wall time of a profiled run
    layers: dict[str, float] = field(default_factory=dict)   # layer -> its kernel's median ms
    kernels: dict[str, str] = field(default_factory=dict)    # layer -> the operator that runs it
    other: dict[str, float] = field(default_factory=dict)    # operator -> summed median ms of non-layer nodes
    # layer -> ms of the integer Clips and requantizations that make its input's grid (4-bit inputs)
    inputs: dict[str, float] = field(default_factory=dict)

    @property
    def layers_ms(self) -> float:
        return sum(self.layers.values())

    @property
    def nodes_ms(self) -> float:
        return self.layers_ms + sum(self.inputs.values()) + sum(self.other.values())

    def to_json(self) -> dict:
        return {"batch_size": self.batch_size, "threads": self.threads, "runs": self.runs, "run_ms": self.run_ms,
                "layers_ms": self.layers_ms, "nodes_ms": self.nodes_ms, "layers": self.layers,
                "kernels": self.kernels, "other": self.other, "inputs": self.inputs}


def random_feed(session, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of each input's type and shape (symbolic dimensions after the batch: 1)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for i in session.get_inputs():
        shape = [batch_size] + [d if isinstance(d, int) and d > 0 else 1 for d in list(i.shape)[1:]]
        if i.type == "tensor(uint8)":
            feed[i.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif i.type in ("tensor(int64)", "tensor(int32)"):
            feed[i.name] = np.ones(shape, NUMPY_TYPES[i.type])
        else:
            feed[i.name] = rng.standard_normal(shape).astype(NUMPY_TYPES.get(i.type, np.float32))
    return feed


def layer_times(path: str | Path, *, batch_size: int = 1, threads: int = 2, runs: int = 100,
                warmup: int = 10, feed: dict[str, np.ndarray] | None = None) -> LayerTimes:
    """Each layer's kernel time in ``path`` running whole under ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    from hawq_onnx.core.ort_session import open_session, session_options

    if batch_size < 1 or threads < 1 or runs < 1 or warmup < 0:
        raise OptionError(f"{{batch_size}}, {{threads}} and {{runs}} must be at least 1 and {{warmup}} at least 0 "
                          f"(got {batch_size}, {threads}, {runs}, {warmup})", "batch_size", "threads", "runs", "warmup")
    original = load_onnx(path)
    with tempfile.TemporaryDirectory(prefix="hawq-layer-times-") as tmp:
        # The profiler keys its events by node name, and the exporter leaves Q/DQ nodes unnamed
        # (bytes): a named copy keeps them apart.
        named = Path(tmp) / "named.onnx"
        taken = {n.name for n in original.graph.node}
        for k, node in enumerate(original.graph.node):
            if not node.name:
                node.name = next(c for c in (f"n{k}", f"n{k}_") if c not in taken)
        onnx.save(original, str(named))
        options = session_options(threads, str(Path(tmp) / "optimized.onnx"), ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = open_session(named, options)
        inputs = feed if feed is not None else random_feed(session, batch_size)
        for _ in range(warmup + runs):
            session.run(None, inputs)
        events = json.loads(Path(session.end_profiling()).read_text())
        optimized = onnx.load(str(Path(tmp) / "optimized.onnx"), load_external_data=False).graph

    per_node: dict[str, list[float]] = {}
    op_of: dict[str, str] = {}
    run_times = []
    for e in events:
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            run_times.append(e["dur"] / 1000.0)
        elif e.get("cat") == "Node" and str(e.get("name", "")).endswith(KERNEL_SUFFIX):
            name = e["name"][:-len(KERNEL_SUFFIX)]
            per_node.setdefault(name, []).append(e["dur"] / 1000.0)
            op_of[name] = e.get("args", {}).get("op_name", "?")
    # Each node ran warmup + runs times, in order: the first ``warmup`` are warm-up.
    median = {n: float(np.median(t[warmup:] or t)) for n, t in per_node.items()}

    result = LayerTimes(batch_size=batch_size, threads=threads, runs=runs,
                        run_ms=float(np.median(run_times[warmup:] or run_times)) if run_times else 0.0)
    owner: dict[str, str] = {}  # optimized node -> the layer it runs
    for wp, match in match_layers(original.graph, optimized):
        if match is None:
            continue
        layer = owner[match.node.name] = layer_name(wp.root, node_key(wp.node))
        if match.node.name in median:
            result.layers[layer] = result.layers.get(layer, 0.0) + median[match.node.name]
            result.kernels[layer] = match.node.op_type
    nodes = {n.name: n for n in optimized.node}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in optimized.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    for name, ms in median.items():
        if name in owner:
            continue  # a layer's own kernel, counted above
        layer = _input_step_of(nodes.get(name), readers, owner)
        if layer is not None:
            result.inputs[layer] = result.inputs.get(layer, 0.0) + ms
        else:
            op = op_of[name]
            result.other[op] = result.other.get(op, 0.0) + ms
    return result


INPUT_STEPS = frozenset({"Clip", "QLinearLeakyRelu", "LeakyRelu"})


def _input_step_of(node: onnx.NodeProto | None, readers: dict[str, list[onnx.NodeProto]],
                   owner: dict[str, str]) -> str | None:
    """The one layer a Clip or requantization node feeds (through others of its kind), else None."""
    if node is None or node.op_type not in INPUT_STEPS:
        return None
    found, frontier, seen = set(), [node], set()
    while frontier:
        step = frontier.pop()
        for out in step.output:
            for reader in readers.get(out, []):
                if reader.name in owner:
                    found.add(owner[reader.name])
                elif reader.op_type in INPUT_STEPS and reader.name not in seen:
                    seen.add(reader.name)
                    frontier.append(reader)
                else:
                    return None  # it also feeds something that is no layer
    return found.pop() if len(found) == 1 else None
