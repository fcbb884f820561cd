"""A float ONNX file as the model: converted to PyTorch with onnx2torch (``pip install 'hawq-onnx[onnx-input]'``).

onnx2torch imports torchvision when it is imported, only for its NonMaxSuppression and RoiAlign
converters; torchvision builds must match the installed torch exactly (the registry's is a CUDA
build that does not import beside a CPU-only torch). Where torchvision does not import,
onnx2torch is imported with a placeholder ``torchvision`` in ``sys.modules`` for the duration
of that import only, and a model using either operator is a one-line error naming it.

onnx2torch 1.5 converts operators up to their opset-17 versions (no ReduceMean-18, whose axes
are an input) and refuses ``Reshape(allowzero=1)``, both of which torch's own exporter writes:
a model it cannot convert as it is is converted again after ONNX's version converter has taken
it to opset 17, with ``allowzero`` dropped where the target shape is a constant without zeros
(the only case where the flag changes nothing).

The converted model takes the file's inputs, under their names where they are Python
identifiers (the export then names its inputs the same); one floating-point input is exported
as ``input``, and outputs take the exporter's names (not the file's).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import re
import sys
import types
from collections.abc import Iterator
from keyword import iskeyword
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch.nn as nn

from hawq_onnx.core import model_inputs
from hawq_onnx.core.model_inputs import InputShape, InputSpec, Signature
from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.models.spec import ModelSpec
from hawq_onnx.sources.model_sources import optional_import

TORCHVISION_OPS = ("NonMaxSuppression", "RoiAlign")
DOWNGRADE_OPSET = 17
# The normalisation hawq-onnx's exporter records (validation.data_spec reads the same keys).
MEAN_KEY, STD_KEY = "hawq_onnx.mean", "hawq_onnx.std"
_MISSING = re.compile(r"operation_type='([^']+)', version=(\d+)")


class _NoTorchvision(types.ModuleType):
    """Stands in for torchvision while onnx2torch imports; nothing of it runs (TORCHVISION_OPS are
    refused before conversion), and if anything did, it would say why instead of failing obscurely."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args: Any, **kwargs: Any) -> Any:
            raise HawqError(f"torchvision.{name} is needed here, but torchvision does not import")
        return unavailable


@contextlib.contextmanager
def _placeholder_torchvision() -> Iterator[None]:
    keys = ("torchvision", "torchvision.ops")
    saved = {k: sys.modules[k] for k in keys if k in sys.modules}
    root, ops = _NoTorchvision("torchvision"), _NoTorchvision("torchvision.ops")
    root.ops = ops  # type: ignore[attr-defined]
    sys.modules.update({"torchvision": root, "torchvision.ops": ops})
    try:
        yield
    finally:
        for k in keys:
            sys.modules.pop(k, None)
        sys.modules.update(saved)


_imported: tuple[Any, bool] | None = None


def import_onnx2torch() -> tuple[Any, bool]:
    """onnx2torch, and whether the real torchvision is behind it."""
    global _imported
    if _imported is None:
        try:
            importlib.import_module("torchvision")
            has_torchvision = True
        except Exception:  # absent, or a build for another torch: onnx2torch only needs it for two ops
            has_torchvision = False
        if has_torchvision:
            module = optional_import("onnx2torch", "onnx-input", "an ONNX file as the model")
        else:
            with _placeholder_torchvision():
                module = optional_import("onnx2torch", "onnx-input", "an ONNX file as the model")
        _imported = (module, has_torchvision)
    return _imported


def _read(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise HawqError(f"ONNX model {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise HawqError(f"{path} is not a readable ONNX model ({exc.__class__.__name__})") from None


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _drop_needless_allowzero(model: onnx.ModelProto) -> None:
    consts = {t.name: t for t in model.graph.initializer}
    consts.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in consts:
            continue
        if 0 in onnx.numpy_helper.to_array(consts[node.input[1]]).tolist():
            continue
        kept = [a for a in node.attribute if a.name != "allowzero"]
        del node.attribute[:]
        node.attribute.extend(kept)


def _downgraded(model: onnx.ModelProto) -> onnx.ModelProto | None:
    if _opset(model) <= DOWNGRADE_OPSET:
        return None
    try:
        return onnx.version_converter.convert_version(model, DOWNGRADE_OPSET)
    except Exception:  # no adapter for some op: the original's error is the one to report
        return None


def _conversion_error(path: Path, exc: BaseException) -> HawqError:
    found = _MISSING.search(str(exc))
    if found:
        return HawqError(f"{path}: onnx2torch cannot convert the ONNX operator {found[1]} (opset {found[2]}), so "
                         "this file cannot be the model; export it from PyTorch, or give the PyTorch model itself")
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return HawqError(f"{path}: onnx2torch cannot convert this model ({exc.__class__.__name__}: {first})")


def convert(path: Path, model: onnx.ModelProto) -> nn.Module:
    onnx2torch, has_torchvision = import_onnx2torch()
    if not has_torchvision:
        used = sorted({n.op_type for n in model.graph.node} & set(TORCHVISION_OPS))
        if used:
            raise HawqError(f"{path} uses the ONNX operator {used[0]}, which onnx2torch converts with torchvision, "
                            "and torchvision does not import here: pip install torchvision (the build for your torch)")
    names = [i.name for i in _graph_inputs(model)]
    keep_names = all(n.isidentifier() and not iskeyword(n) for n in names)
    first_error: BaseException | None = None
    for candidate in (model, _downgraded(model)):
        if candidate is None:
            continue
        candidate = copy.deepcopy(candidate)
        _drop_needless_allowzero(candidate)
        try:
            return onnx2torch.convert(candidate, save_input_names=keep_names)
        except Exception as exc:
            first_error = first_error or exc
    raise _conversion_error(path, first_error) from None


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _dtype(elem_type: int) -> str:
    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)))
    except Exception:
        return "float32"


def signature(path: Path, model: onnx.ModelProto, data_shape: InputShape | None) -> InputShape:
    """The model's input shape from the graph's inputs, dynamic dimensions (past the batch) from the data."""
    graph = []
    for value in _graph_inputs(model):
        dims = value.type.tensor_type.shape.dim
        graph.append((value.name, [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                                   for d in dims[1:]], _dtype(value.type.tensor_type.elem_type)))
    if not graph:
        raise HawqError(f"{path} has no inputs")
    given: list[tuple[int, ...]] | None = None
    keyword = all(n.isidentifier() and not iskeyword(n) for n, _, _ in graph)
    if data_shape is not None:
        specs = data_shape.inputs if isinstance(data_shape, Signature) else (
            InputSpec(model_inputs.SINGLE_NAME, tuple(data_shape), "float32"),)
        if len(specs) != len(graph):
            raise HawqError(f"{path} takes {len(graph)} inputs ({', '.join(n for n, _, _ in graph)}), the data gives "
                            f"{len(specs)} ({model_inputs.describe(data_shape)})")
        if isinstance(data_shape, Signature) and data_shape.form == "keyword":
            by_name = {s.name: s for s in specs}
            if set(by_name) != {n for n, _, _ in graph}:
                raise HawqError(f"{path} takes inputs {', '.join(n for n, _, _ in graph)}, the data names "
                                f"{', '.join(by_name)}")
            specs = tuple(by_name[n] for n, _, _ in graph)
        else:
            keyword = keyword and isinstance(data_shape, Signature) and data_shape.form != "positional"
        given = [s.shape for s in specs]
    inputs = []
    for i, (name, dims, dtype) in enumerate(graph):
        if given is not None and len(given[i]) == len(dims):
            dims = [g if d is None else d for d, g in zip(dims, given[i])]
        if any(d is None for d in dims):
            shown = ", ".join("?" if d is None else str(d) for d in dims)
            raise OptionError(f"{path}: input {name} has dynamic dimensions (N, {shown}); give data to take them "
                              "from, or {input_shape}", "input_shape")
        inputs.append(InputSpec(name, tuple(int(d) for d in dims), dtype))
    if len(inputs) == 1 and np.dtype(inputs[0].dtype).kind == "f":
        return inputs[0].shape
    form = "single" if len(inputs) == 1 else "keyword" if keyword else "positional"
    return Signature(tuple(inputs), form)


def _metadata_floats(model: onnx.ModelProto, key: str) -> tuple[float, ...] | None:
    text = next((p.value for p in model.metadata_props if p.key == key), None)
    if text is None:
        return None
    try:
        values = json.loads(text) if text.strip().startswith("[") else text.split(",")
        return tuple(float(v) for v in values)
    except (ValueError, TypeError):
        return None  # validate reports malformed metadata; here it only means no normalisation


def onnx_model(ref: str, input_shape: InputShape | None,
               data_shape: InputShape | None) -> tuple[nn.Module, ModelSpec, str | None]:
    path = Path(ref)
    model = _read(path)
    shape = input_shape if input_shape is not None else signature(path, model, data_shape)
    module = convert(path, model)
    mean, std = _metadata_floats(model, MEAN_KEY), _metadata_floats(model, STD_KEY)
    if mean is None or std is None:
        mean = std = None
    spec = ModelSpec(name=path.stem, factory=lambda: copy.deepcopy(module), input_shape=shape, mean=mean, std=std,
                     description=f"converted from {path} by onnx2torch")
    return module, spec, str(path)
