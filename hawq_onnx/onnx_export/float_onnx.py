"""torch -> float ONNX: one self-contained file, parameter names kept, dynamic batch.

BatchNorm is folded in PyTorch first (:mod:`hawq_onnx.core.bn_fold`), so the ONNX initializer
``layer1.0.conv1.weight`` holds exactly the tensor the plan's scales were computed on.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn

from hawq_onnx.errors import HawqError
from hawq_onnx.io.atomic import write_bytes

log = logging.getLogger(__name__)
# torch's exporter logs a warning per missing torchvision operator on first use; not ours to show.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

FLOAT_OPSET = 21
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def _strip_metadata(model: onnx.ModelProto) -> None:
    """The exporter adds ~60 KB of per-node metadata; deployment needs none of it."""
    del model.metadata_props[:]
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        del value.metadata_props[:]
    for init in model.graph.initializer:
        del init.metadata_props[:]
    model.graph.doc_string = ""
    model.doc_string = ""


def _export_dynamo(model: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset, external_data=False,
                                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                dynamic_shapes=({0: batch},), verbose=False, optimize=True)
    return program.model_proto


def _export_torchscript(model: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=min(opset, 20),
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                      do_constant_folding=True, keep_initializers_as_inputs=False)
    proto = onnx.load_from_string(buf.getvalue())
    if opset > min(opset, 20):
        from onnx import version_converter
        proto = version_converter.convert_version(proto, opset)
    return proto


def float_onnx(model: nn.Module, input_shape: tuple[int, ...], opset: int = FLOAT_OPSET) -> onnx.ModelProto:
    """Export a (BN-folded, eval-mode) model to an in-memory ONNX model and check it."""
    model = model.eval().cpu()
    example = torch.randn((2,) + tuple(input_shape), generator=torch.Generator().manual_seed(0))
    quiet = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            try:
                proto = _export_dynamo(model, example, opset)
            except Exception as exc:
                log.info("dynamo export failed (%s); using the TorchScript exporter", exc.__class__.__name__)
                proto = _export_torchscript(model, example, opset)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise HawqError(f"torch could not export the model to ONNX: {exc.__class__.__name__}: {msg}") from None
    _strip_metadata(proto)
    proto.producer_name = "hawq-onnx"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise HawqError(f"the exported float model fails onnx.checker: {str(exc).splitlines()[0]}") from None
    return proto


def save_onnx(proto: onnx.ModelProto, path: str | Path) -> Path:
    """One self-contained file, written atomically."""
    if proto.ByteSize() >= 2 ** 31:
        raise HawqError("the model is over 2 GB: ONNX protobuf files cannot hold it in one file")
    return write_bytes(path, proto.SerializeToString())
