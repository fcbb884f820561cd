"""The pass lists behind each export target: which passes run, in which order.

What each target needs is data (``target_profiles``): ``ort-vnni`` / ``ort-avx2`` (ONNX
Runtime's CPU integer kernels; ``ort-cpu`` picks one for this CPU), ``openvino`` and
``compact``. Sub-byte weights stay packed on disk, widened by a Cast the runtime folds at load;
4-bit activations are uint8 Q -> Clip(0, 15) -> DQ (ONNX Runtime) or a float Clip before an
8-bit Q (OpenVINO); a requantization between grids gets an identity LeakyRelu (alpha 1) that
both runtimes run on the integers, and a zero Pad between Q/DQ runs on the integers.

Stages: ``float_stage`` prepares the exported float graph (names, onnxsim, BatchNorm folding,
pooling canonical form, the opset the weights need); ``weight_stage`` quantizes the planned
weights; ``region_stage`` shapes the graph for the target's integer regions (ONNX Runtime: a
residual Add shared by a sub-8-bit layer and others is computed twice); ``activation_stage``
inserts activation Q/DQ and the target's rewrites;
``cleanup_stage`` removes what became unused, deduplicates small constants, sorts, gives the
added Q/DQ tensors short names, runs
the full checker (which infers and checks every type and shape) and drops the intermediate
shapes from the file. The exporter calibrates between the region and activation
stages (see ``hawq_onnx.onnx_export.qdq``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import onnx_ir as ir
import onnx_ir.passes.common as common
from hawq_onnx.passes.clip_sub_byte_activations import ClipSubByteActivationsPass
from hawq_onnx.passes.compact_names import CompactNamesPass
from hawq_onnx.passes.computed_bias_scale import ComputedBiasScalePass
from hawq_onnx.passes.convert_opset import ConvertOpsetPass
from hawq_onnx.passes.drop_default_attributes import DropDefaultAttributesPass
from hawq_onnx.passes.drop_intermediate_shapes import DropIntermediateShapesPass
from hawq_onnx.passes.fold_batchnorm import FoldBatchNormPass
from hawq_onnx.passes.global_average_pool import ReduceMeanToGlobalAveragePoolPass
from hawq_onnx.passes.insert_activation_qdq import EdgeQuant, InsertActivationQDQPass
from hawq_onnx.passes.integer_pad import IntegerPadPass
from hawq_onnx.passes.integer_requantize import IntegerRequantizePass
from hawq_onnx.passes.onnx_simplify import OnnxSimplifyPass
from hawq_onnx.passes.quantize_weights import QuantizeWeightsPass, WeightQuantSpec
from hawq_onnx.passes.split_shared_add import SplitSharedAddPass
from hawq_onnx.passes.target_profiles import AUTO, TARGETS, TargetProfile, resolve
from hawq_onnx.passes.two_bit_as_int4 import TwoBitAsInt4Pass
from hawq_onnx.passes.unsigned_wide_input_weights import UnsignedWideInputWeightsPass
from hawq_onnx.passes.widen_sub_byte_weights import WidenSubByteWeightsPass

__all__ = ["TARGETS", "DEFAULT_TARGET", "resolve", "float_stage", "weight_stage", "region_stage",
           "activation_stage", "cleanup_stage", "quantize_pipeline"]

DEFAULT_TARGET = AUTO
# Constants up to this many elements are merged when equal (zero points, Clip bounds, scales).
DEDUP_SIZE_LIMIT = 1024


def _profile(target: str | TargetProfile) -> TargetProfile:
    return target if isinstance(target, TargetProfile) else resolve(target)


def float_stage(target_opset: int) -> ir.passes.PassManager:
    return ir.passes.PassManager([
        common.NameFixPass(),
        OnnxSimplifyPass(),
        FoldBatchNormPass(),
        ReduceMeanToGlobalAveragePoolPass(),
        ConvertOpsetPass(target_opset),
        common.ShapeInferencePass(),
    ])


def weight_stage(specs: Sequence[WeightQuantSpec]) -> ir.passes.PassManager:
    return ir.passes.PassManager([QuantizeWeightsPass(specs)])


def region_stage(target: str | TargetProfile, edges: Sequence[EdgeQuant]) -> ir.passes.PassManager:
    """Structure for the target's integer regions, before calibration (it changes which tensors exist)."""
    passes: list[ir.passes.PassBase] = [common.TopologicalSortPass()]
    if _profile(target).split_shared_adds:
        passes.insert(0, SplitSharedAddPass(edges))
    return ir.passes.PassManager(passes)


def activation_stage(target: str | TargetProfile, edges: Sequence[EdgeQuant],
                     ranges: Mapping[str, tuple[float, float]] | None) -> ir.passes.PassManager:
    profile = _profile(target)
    passes: list[ir.passes.PassBase] = [InsertActivationQDQPass(edges, ranges)]
    if profile.sub_byte_activations != "native":
        passes.append(ClipSubByteActivationsPass(on_integers=profile.sub_byte_activations == "integer-clip"))
    if profile.integer_rewrites and ranges is not None:
        # Not on the calibration model: a padded tensor would turn uint8 where the
        # calibration reads floats.
        passes += [IntegerRequantizePass(), IntegerPadPass()]
    if profile.two_bit_as_int4:
        passes.append(TwoBitAsInt4Pass())
    if profile.widen_sub_byte_weights:
        passes.append(WidenSubByteWeightsPass())
    if profile.unsigned_wide_input_weights:
        passes.append(UnsignedWideInputWeightsPass())
    if ranges is not None:
        passes.append(ComputedBiasScalePass())  # the deployed file only: the bytes, not the values, change
    return ir.passes.PassManager(passes)


def cleanup_stage() -> ir.passes.PassManager:
    return ir.passes.PassManager([
        common.RemoveUnusedNodesPass(),
        common.DeduplicateInitializersPass(size_limit=DEDUP_SIZE_LIMIT),
        common.RemoveUnusedOpsetsPass(),
        common.TopologicalSortPass(),
        CompactNamesPass(),  # in graph order, after the sort: the same names every time
        DropDefaultAttributesPass(),
        common.ClearMetadataAndDocStringPass(),
        # The full check runs strict shape and type inference over the whole graph (and writes
        # what it inferred back into it): the shapes are checked, then dropped from the file.
        common.CheckerPass(full_check=True),
        DropIntermediateShapesPass(),
    ])


def quantize_pipeline(target: str | TargetProfile, specs: Sequence[WeightQuantSpec], edges: Sequence[EdgeQuant],
                      ranges: Mapping[str, tuple[float, float]] | None) -> ir.passes.PassManager:
    """Weights, activations, target rewrites and clean-up in one manager (ranges already known)."""
    return ir.passes.PassManager([weight_stage(specs), region_stage(target, edges),
                                  activation_stage(target, edges, ranges), cleanup_stage()])
