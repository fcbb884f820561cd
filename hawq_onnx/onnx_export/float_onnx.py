"""torch -> float ONNX: one self-contained file, parameter names kept, dynamic batch.

BatchNorm is folded in PyTorch first (:mod:`hawq_onnx.core.bn_fold`), so the ONNX initializer
``layer1.0.conv1.weight`` holds exactly the tensor the plan's scales were computed on.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch
import torch.nn as nn

from hawq_onnx.core import model_inputs
from hawq_onnx.core.model_inputs import InputShape
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


def _call_args(example: model_inputs.Batch) -> tuple[tuple, dict]:
    if isinstance(example, dict):
        return (), dict(example)
    return (example if isinstance(example, tuple) else (example,)), {}


def _export_dynamo(model: nn.Module, example: model_inputs.Batch, names: list[str], opset: int) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=4096)
    args, kwargs = _call_args(example)
    per_input = [{0: batch} for _ in names]
    dynamic = dict(zip(names, per_input)) if kwargs else tuple(per_input)
    program = torch.onnx.export(model, args, kwargs=kwargs or None, dynamo=True, opset_version=opset,
                                external_data=False, input_names=names, output_names=[OUTPUT_NAME],
                                dynamic_shapes=dynamic, verbose=False, optimize=True)
    return program.model_proto


def _export_torchscript(model: nn.Module, example: model_inputs.Batch, names: list[str],
                        opset: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    args, kwargs = _call_args(example)
    if kwargs:
        args = (*args, kwargs)  # the TorchScript exporter takes keyword inputs as a trailing dict
    torch.onnx.export(model, args, buf, dynamo=False, opset_version=min(opset, 20),
                      input_names=names, output_names=[OUTPUT_NAME],
                      dynamic_axes={**{n: {0: "batch"} for n in names}, OUTPUT_NAME: {0: "batch"}},
                      do_constant_folding=True, keep_initializers_as_inputs=False)
    proto = onnx.load_from_string(buf.getvalue())
    if opset > min(opset, 20):
        from onnx import version_converter
        proto = version_converter.convert_version(proto, opset)
    return proto


@contextlib.contextmanager
def _scores_only(model: nn.Module) -> Iterator[None]:
    """The model's forward returns its class scores while the export runs, where it returns a
    structure (a Hugging Face output): the file's one output is the logits. The forward keeps
    its signature (the exporter binds inputs by parameter name) and its parameter names."""
    original = model.forward

    @functools.wraps(original)
    def forward(*args, **kwargs):
        return model_inputs.scores(original(*args, **kwargs))

    model.forward = forward
    try:
        yield
    finally:
        del model.forward


def float_onnx(model: nn.Module, input_shape: InputShape, opset: int = FLOAT_OPSET) -> onnx.ModelProto:
    """Export a (BN-folded, eval-mode) model to an in-memory ONNX model and check it.

    Inputs are named as the model takes them (``input`` for one tensor, the keywords of a dict
    input); every input's first dimension is the dynamic batch."""
    model = model.eval().cpu()
    example = model_inputs.example(input_shape, 2, seed=0)
    names = model_inputs.onnx_names(input_shape)
    with torch.no_grad():
        structured = not isinstance(model_inputs.call(model, example), torch.Tensor)
    quiet = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet), \
                (_scores_only(model) if structured else contextlib.nullcontext()):
            warnings.simplefilter("ignore")
            try:
                proto = _export_dynamo(model, example, names, opset)
            except Exception as exc:
                log.info("dynamo export failed (%s); using the TorchScript exporter", exc.__class__.__name__)
                proto = _export_torchscript(model, example, names, opset)
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
