"""Plan + BN-folded weights + calibration data -> one mixed-precision QDQ ONNX model.

Steps (each an ONNX-to-ONNX pass list from ``hawq_onnx.passes.pipelines``):
1. the float export of the folded model (``export.float_onnx``), prepared by the float stage,
   which also raises the opset to what the weights need (INT2: 25);
2. plan layers bound to nodes by parameter name (``passes.layer_binding``): a quantized plan
   layer that is not found is an error, a weighted node the plan does not cover a warning;
3. weights and biases quantized with the plan's scales;
4. the target's region structure (ONNX Runtime: shared residual Adds computed twice);
5. calibration: the tensors between layers that ONNX Runtime's integer kernels need quantized
   (conv outputs, residual Add inputs and outputs, pooling) get 8-bit ranges observed by
   running ONNX Runtime on the partially quantized model (the plan's own Q/DQ in place), so
   the ranges see the quantized upstream;
6. activation Q/DQ, the target's rewrites and clean-up;
7. the grids of step 5 named in PyTorch (``hawq_onnx.qat.region_grids``): the returned plan carries
   them, and ``fake_quant.quantize_model`` of that plan computes what the file computes.

The plan must be calibrated (weight scales and input ranges, written by ``finetune``); an
uncalibrated plan is refused with the command that calibrates it. The same inputs give the same
bytes: calibration runs single-threaded without graph optimizations, names come from tensors.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import torch
import torch.nn as nn
from hawq_onnx.core.progress import progress_bar

from hawq_onnx.core import model_inputs
from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.io.plan import Plan, RegionGrid
from hawq_onnx.onnx_export.float_onnx import float_onnx
from hawq_onnx.passes import pipelines
from hawq_onnx.passes.convert_opset import required_opset
from hawq_onnx.passes.target_profiles import METADATA_KEY
from hawq_onnx.passes.insert_activation_qdq import EdgeQuant, QParams, calibration_sites, off_plan_grids, place
from hawq_onnx.passes.layer_binding import BoundLayer, LayerRequest, bind_layers
from hawq_onnx.passes.quantize_weights import WeightQuantSpec

log = logging.getLogger(__name__)

CALIBRATION_BATCH = 64
REGION_PROBE_SAMPLES = 8  # inputs on which ONNX tensors and PyTorch nodes are matched by value
PRODUCER = "hawq-onnx"


@dataclass
class QuantizedExport:
    model: onnx.ModelProto
    target: str
    opset: int
    bound: list[BoundLayer]
    bits: dict[str, tuple[int | None, int | None]]   # layer -> (w_bits, a_bits) as exported
    unplanned: list[str]                              # weighted nodes the plan does not cover
    calibration_sites: int
    calibration_samples: int
    warnings: list[str] = field(default_factory=list)
    plan: Plan | None = None  # the plan exported, with its region grids: the PyTorch reference of the file

    @property
    def file_bytes(self) -> int:
        return self.model.ByteSize()

    def bits_histogram(self) -> dict[str, int]:
        """``w4a8`` -> number of layers (``float`` for layers left unquantized)."""
        counts: Counter[str] = Counter()
        for w, a in self.bits.values():
            counts["float" if w is None and a is None else f"w{w or 'f'}a{a or 'f'}"] += 1
        return dict(sorted(counts.items()))


def _check_plan(plan: Plan) -> None:
    uncalibrated = [lp.name for lp in plan.layers if not lp.calibrated]
    if uncalibrated:
        raise OptionError(f"the plan is not calibrated ({len(uncalibrated)} layer(s) lack weight scales or input "
                          f"ranges, e.g. {uncalibrated[0]}): finetune it first (order ptq only calibrates) and "
                          "export the plan that writes, or pass {quantized}", "quantized")
    for lp in plan.layers:
        if lp.input_quant is not None and lp.a_bits is not None and lp.input_quant.bits != lp.a_bits:
            raise HawqError(f"plan layer {lp.name}: input_quant has {lp.input_quant.bits} bits "
                            f"but a_bits is {lp.a_bits}")


def layer_weights(module: nn.Module, plan: Plan) -> dict[str, np.ndarray]:
    """The folded PyTorch weight of each plan layer that exists in the module."""
    modules = dict(module.named_modules())
    out = {}
    for lp in plan.layers:
        m = modules.get(lp.name)
        if m is not None and isinstance(getattr(m, "weight", None), torch.Tensor):
            out[lp.name] = m.weight.detach().cpu().float().numpy()
    return out


def _specs(plan: Plan, bound: list[BoundLayer]) -> tuple[list[WeightQuantSpec], list[EdgeQuant]]:
    specs, edges = [], []
    for b in bound:
        lp = plan.layer(b.layer)
        input_scale = lp.input_quant.scale if lp.a_bits is not None and lp.input_quant is not None else None
        if lp.w_bits is not None:
            specs.append(WeightQuantSpec(b.node, b.layer, lp.w_bits, tuple(float(s) for s in lp.weight_scale),
                                         b.channel_axis, input_scale, plan.weight_range))
        if lp.a_bits is not None:
            q = lp.input_quant
            edges.append(EdgeQuant(b.node, 0, b.layer, QParams(q.bits, float(np.float32(q.scale)), int(q.zero_point))))
    return specs, edges


def _copy(model: ir.Model) -> ir.Model:
    return ir.from_proto(ir.to_proto(model))


def _session_with_outputs(model: ir.Model, tensors: list[str]):
    """An ONNX Runtime session (1 thread, no graph optimization) that also outputs ``tensors``."""
    import onnxruntime as ort

    proto = ir.to_proto(model)
    existing = {o.name for o in proto.graph.output}
    for name in tensors:
        if name not in existing:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # failures become our one-line error
    try:
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise HawqError(f"ONNX Runtime cannot load the partially quantized model: {str(exc).splitlines()[0]}") from None
    return session


def _run(session, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return session.run(outputs, feeds)
    except Exception as exc:  # ONNX Runtime raises its own types for shape and type errors at run time
        raise HawqError(f"ONNX Runtime cannot run the partially quantized model on the calibration data: "
                        f"{str(exc).splitlines()[0][:300]}") from None


def _feed(session, x: model_inputs.Arrays) -> dict[str, np.ndarray]:
    """The session's feed for a batch of inputs: by name for a dict, else by position."""
    names = [i.name for i in session.get_inputs()]
    values = [x[n] for n in names] if isinstance(x, dict) else model_inputs.leaves(x)
    return {n: np.ascontiguousarray(v, np.float32 if np.asarray(v).dtype.kind == "f" else None)
            for n, v in zip(names, values)}


def observe_ranges(model: ir.Model, tensors: list[str], x: model_inputs.Arrays,
                   batch_size: int = CALIBRATION_BATCH, progress: bool = False) -> dict[str, tuple[float, float]]:
    """Min and max of each tensor over ``x``, run by ONNX Runtime (1 thread, no graph optimization)."""
    if not tensors:
        return {}
    if model_inputs.count(x) == 0:
        raise HawqError("calibration needs at least one sample; the calibration split is empty")
    session = _session_with_outputs(model, tensors)
    lo = {t: np.inf for t in tensors}
    hi = {t: -np.inf for t in tensors}
    starts = range(0, model_inputs.count(x), batch_size)
    for i in progress_bar(starts, desc="calibrate", unit="batch", enabled=progress, leave=False):
        outs = _run(session, tensors, _feed(session, model_inputs.take(x, slice(i, i + batch_size))))
        for t, arr in zip(tensors, outs):
            lo[t] = min(lo[t], float(arr.min()))
            hi[t] = max(hi[t], float(arr.max()))
    return {t: (lo[t], hi[t]) for t in tensors}


@dataclass
class PreparedModel:
    """The float graph with the plan's weights quantized, and what the activation stage needs."""

    model: ir.Model
    opset: int
    bound: list[BoundLayer]
    unplanned: list[str]
    edges: list[EdgeQuant]


def prepare(module: nn.Module, input_shape: model_inputs.InputShape, plan: Plan,
            float_model: onnx.ModelProto | None = None) -> PreparedModel:
    """Float stage, layer binding and weight quantization (steps 1-3 of the module docstring)."""
    _check_plan(plan)
    opset = required_opset(lp.w_bits for lp in plan.layers)
    if float_model is None:
        float_model = float_onnx(module, input_shape)
    model = pipelines.float_stage(opset)(ir.from_proto(float_model)).model
    requests = [LayerRequest(lp.name, lp.out_channels, lp.w_bits is not None or lp.a_bits is not None)
                for lp in plan.layers]
    bound, unplanned = bind_layers(model.graph, requests, layer_weights(module, plan))
    specs, edges = _specs(plan, bound)
    model = pipelines.weight_stage(specs)(model).model
    model.graph.sort()
    return PreparedModel(model, opset, bound, unplanned, edges)


def _finish(model: ir.Model) -> onnx.ModelProto:
    model = pipelines.cleanup_stage()(model).model
    proto = ir.to_proto(model)
    proto.producer_name = PRODUCER
    proto.producer_version = ""
    return proto


def plan_only_onnx(prepared: PreparedModel, target: str = pipelines.DEFAULT_TARGET) -> onnx.ModelProto:
    """The model with only the plan's own Q/DQ: what the PyTorch fake-quant reference computes.

    It is the model the inter-layer ranges are calibrated on. ONNX Runtime fuses fewer of its
    layers (residual adds and the tensors between layers stay float), so it is a check, not
    the deployment file.
    """
    return _finish(pipelines.activation_stage(target, prepared.edges, None)(_copy(prepared.model)).model)


def quantize_onnx(module: nn.Module, input_shape: model_inputs.InputShape, plan: Plan,
                  calibration_x: model_inputs.Arrays,
                  target: str = pipelines.DEFAULT_TARGET, progress: bool = False,
                  float_model: onnx.ModelProto | None = None) -> QuantizedExport:
    """The mixed-precision QDQ model of a BN-folded ``module`` under a calibrated ``plan``.

    ``calibration_x``: normalised inputs (N, *input_shape), or several (see core.model_inputs),
    for the inter-layer ranges.
    ``float_model``: ``export.float_onnx(module, input_shape)`` when the caller already has it.
    """
    if target not in pipelines.TARGETS:
        raise HawqError(f"unknown target {target!r}: use {' or '.join(pipelines.TARGETS)}")
    profile = pipelines.resolve(target)
    prepared = prepare(module, input_shape, plan, float_model)
    warnings = [f"layer {u} is not in the plan: it stays float" for u in prepared.unplanned]
    for w in warnings:
        log.warning(w)

    model = pipelines.region_stage(profile, prepared.edges)(prepared.model).model

    # Calibrate the inter-layer grids on the model with the plan's own Q/DQ in place.
    placements = place(model.graph, prepared.edges)
    sites = calibration_sites(placements)
    partial = pipelines.activation_stage(profile, prepared.edges, None)(_copy(model)).model
    ranges = observe_ranges(partial, sites, calibration_x, progress=progress)
    plan = replace(plan, region_grids=[])  # grids come from this calibration, not from an earlier export
    off_plan = off_plan_grids(model.graph, placements, prepared.edges, ranges)
    grids = _region_grids(module, plan, model, off_plan,
                          model_inputs.take(calibration_x, slice(0, REGION_PROBE_SAMPLES)), warnings)

    model = pipelines.activation_stage(profile, prepared.edges, ranges)(model).model
    proto = _finish(model)
    onnx.helper.set_model_props(proto, {METADATA_KEY: profile.name})  # what validate checks
    bits = {b.layer: (plan.layer(b.layer).w_bits, plan.layer(b.layer).a_bits) for b in prepared.bound}
    return QuantizedExport(proto, profile.name, prepared.opset, prepared.bound, bits, prepared.unplanned, len(sites),
                           model_inputs.count(calibration_x), warnings, replace(plan, region_grids=grids))


def _region_grids(module: nn.Module, plan: Plan, weights_only: ir.Model, tensors: dict[str, QParams],
                  probe_x: model_inputs.Arrays, warnings: list[str]) -> list[RegionGrid]:
    """The region grids named in PyTorch: ONNX tensors matched by value to the fake-quant model's fx nodes.

    Both sides are matched with quantized weights and biases but float activations
    (``weights_only``; ``QuantLayer.quantize_input`` off): any rounding of an activation would
    make every tensor downstream differ between a model that has it and one that does not yet.
    The fx graph, and so its node names, is the one the grids are applied to.
    """
    from hawq_onnx.onnx_export import region_match
    from hawq_onnx.qat import fake_quant, region_grids

    if not tensors or model_inputs.count(probe_x) == 0:
        return []
    qmodel = fake_quant.quantize_model(module, plan)
    for q in fake_quant.quant_layers(qmodel).values():
        q.quantize_input = False
    try:
        gm = region_grids.trace(qmodel, list(probe_x) if isinstance(probe_x, dict) else None)
    except HawqError as exc:
        warnings.append(f"{exc}: the PyTorch fake-quant model keeps the {len(tensors)} tensor(s) the exporter "
                        "quantizes between layers float, so it differs slightly from the file")
        log.warning(warnings[-1])
        return []
    names = list(tensors)
    session = _session_with_outputs(weights_only, names)
    feed = _feed(session, probe_x)
    onnx_values = dict(zip(names, _run(session, names, feed)))
    values = [torch.from_numpy(v) for v in feed.values()]  # the same arrays in PyTorch, in the same form
    probe = dict(zip(feed, values)) if isinstance(probe_x, dict) else \
        tuple(values) if isinstance(probe_x, tuple) else values[0]
    matched = region_match.match(onnx_values, region_match.node_values(gm, probe))
    grids: dict[str, RegionGrid] = {}
    unmodelled = [t for t in names if t not in matched]
    for tensor in names:
        if tensor not in matched:
            continue
        qp = tensors[tensor]
        grid = RegionGrid(matched[tensor], tensor, qp.bits, qp.scale, qp.zero_point)
        known = grids.get(grid.node)
        if known is None:
            grids[grid.node] = grid
        elif (known.bits, known.scale, known.zero_point) != (grid.bits, grid.scale, grid.zero_point):
            unmodelled.append(tensor)  # one PyTorch tensor, two ONNX grids: only the first is modelled
    if unmodelled:
        warnings.append(f"{len(unmodelled)} tensor(s) the exporter quantizes between layers have no PyTorch "
                        f"counterpart (e.g. {unmodelled[0]}): the fake-quant model keeps them float")
        log.warning(warnings[-1])
    return list(grids.values())


def _consistent(plan: Plan, embedded: Plan, where: str) -> None:
    mine = {lp.name: (lp.w_bits, lp.a_bits) for lp in plan.layers}
    theirs = {lp.name: (lp.w_bits, lp.a_bits) for lp in embedded.layers}
    for name in sorted(set(mine) | set(theirs)):
        if mine.get(name) != theirs.get(name):
            raise OptionError(f"{{plan}} and {where} disagree on layer {name} (w_bits, a_bits): {mine.get(name)} "
                              f"vs {theirs.get(name)}; pass the plan the checkpoint was fine-tuned with, "
                              "or only {quantized}", "plan", "quantized")


def export_plan(model_ref: str | None, weights: str | None, input_shape: tuple[int, ...] | None,
                plan_path: str | Path | None, quantized_path: str | Path | None = None,
                target: str = pipelines.DEFAULT_TARGET, data: str | None = None,
                progress: bool = False) -> QuantizedExport:
    """Load the model and the plan (or quantized.pt), pick calibration data, and export.

    With ``quantized_path`` the fine-tuned weights and the calibrated plan come from the
    checkpoint (a ``plan_path`` given too must have the same bits). Calibration data: ``data``,
    else the data the plan was calibrated on, else the model's default.
    """
    from hawq_onnx.core.bn_fold import fold_copy
    from hawq_onnx.io.plan import load_plan
    from hawq_onnx.qat.checkpoint import restore_quantized
    from hawq_onnx.sources.data import load_data, resolve_source, sample_shape
    from hawq_onnx.sources.model import load_model, model_fingerprint

    if plan_path is None and quantized_path is None:
        raise OptionError("a quantized export needs {plan} (plan.json) or {quantized} (quantized.pt)", "plan",
                          "quantized")
    given = load_plan(plan_path) if plan_path is not None else None  # a bad file fails before the model loads
    calibrated_on = (given.calibration or {}).get("data") if given is not None else None
    loaded = load_model(model_ref, weights, input_shape, data_shape=sample_shape(data or calibrated_on))
    if quantized_path is not None:
        folded, plan = restore_quantized(loaded, quantized_path)
        if given is not None:
            _consistent(given, plan, f"the checkpoint {quantized_path}")
    else:
        folded = fold_copy(loaded.module, loaded.input_shape)
        plan = load_plan(plan_path, model_fingerprint(folded))  # plans name the folded model, as finetune does
    _check_plan(plan)  # before loading data: an uncalibrated plan fails fast
    source = data or (plan.calibration or {}).get("data") or resolve_source(None, loaded.spec)
    if source != "digits" and ":" not in source:
        raise OptionError(f"export calibrates the tensors between layers on data, and {source!r} names no files: "
                          f"pass {{data}} ({source}:DIR, npz:FILE or digits)", "data")
    dataset = load_data(source, loaded.spec)
    return quantize_onnx(folded, loaded.input_shape, plan, dataset.calib.x, target=target, progress=progress)
