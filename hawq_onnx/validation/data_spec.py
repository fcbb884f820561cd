"""What ``validate`` feeds a float ONNX file it did not make: the input shape (from ``model`` when
given, else from the file, ``input_shape`` where it is symbolic) and the normalisation (the
model's spec, else the file's ``hawq_onnx.mean``/``hawq_onnx.std`` metadata, which the exporter
writes, else none: inputs in [0, 1])."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import onnx

from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.models.spec import ModelSpec

MEAN_KEY = "hawq_onnx.mean"
STD_KEY = "hawq_onnx.std"
NO_NORMALISATION = "none (inputs in [0, 1]; no --model and no ONNX metadata)"


def _floats(text: str, key: str, path: str | Path) -> tuple[float, ...]:
    try:
        value = json.loads(text) if text.strip().startswith("[") else [float(v) for v in text.split(",")]
        out = tuple(float(v) for v in value)
    except (ValueError, TypeError):
        raise HawqError(f"{path}: metadata {key}={text!r} is not a list of numbers") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise HawqError(f"{path}: metadata {key}={text!r} is not a list of finite numbers")
    return out


def _onnx_input_shape(model: onnx.ModelProto) -> tuple[int | None, ...]:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise HawqError(f"the float model has {len(inputs)} inputs; validate needs a classifier with one input")
    dims = inputs[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims[1:])


def _model_spec(model_ref: str, input_shape: tuple[int, ...] | None) -> ModelSpec:
    from hawq_onnx.models.registry import ZOO
    from hawq_onnx.sources.model import load_model

    if model_ref in ZOO:
        spec = ZOO[model_ref]
    else:  # a user's model: building it is the only way to read its declared spec
        with _quiet("hawq_onnx.sources.model"):
            spec = load_model(model_ref, None, input_shape).spec
    return replace(spec, input_shape=input_shape) if input_shape else spec


def default_data(float_model: onnx.ModelProto, float_path: str | Path, model_ref: str | None = None,
                 input_shape: tuple[int, ...] | None = None) -> tuple[str, str | None]:
    """The data to evaluate when none is given, and the model to normalise it as.

    As every other stage: the model's own data, and without ``model_ref`` the default model's
    (whose normalisation applies unless the file carries its own), provided the file takes
    that data's inputs."""
    from hawq_onnx.models.registry import DEFAULT_MODEL
    from hawq_onnx.sources.data import resolve_source

    spec = _model_spec(model_ref or DEFAULT_MODEL, input_shape)
    source = resolve_source(None, spec)
    if model_ref is not None:
        return source, model_ref
    shape = _onnx_input_shape(float_model)
    if len(shape) != len(spec.input_shape) or any(d not in (None, s) for d, s in zip(shape, spec.input_shape)):
        shown = ", ".join("?" if d is None else str(d) for d in shape)
        raise OptionError(f"{float_path} takes inputs of shape (N, {shown}), not those of the default model's data "
                          f"({source}, for {DEFAULT_MODEL}): pass {{data}} (and {{model}} for its normalisation)",
                          "data", "model")
    has_own = any(p.key == MEAN_KEY for p in float_model.metadata_props)
    return source, None if has_own else DEFAULT_MODEL


def data_spec(float_model: onnx.ModelProto, float_path: str | Path, model_ref: str | None = None,
              input_shape: tuple[int, ...] | None = None) -> tuple[ModelSpec, str]:
    """The spec that ``load_data`` needs, and a note of where the normalisation came from."""
    if model_ref is not None:
        spec = _model_spec(model_ref, input_shape)
        return spec, f"--model {model_ref}" if spec.mean is not None else "none (--model declares none)"
    shape = _onnx_input_shape(float_model)
    if input_shape is None:
        if not shape or any(d is None for d in shape):
            shown = ", ".join("?" if d is None else str(d) for d in shape)
            raise OptionError(f"{float_path} has a dynamic input shape (N, {shown}): pass {{input_shape}} (C, H, W) or "
                              "{model}", "input_shape", "model")
        input_shape = tuple(int(d) for d in shape)
    meta = {p.key: p.value for p in float_model.metadata_props}
    mean = _floats(meta[MEAN_KEY], MEAN_KEY, float_path) if MEAN_KEY in meta else None
    std = _floats(meta[STD_KEY], STD_KEY, float_path) if STD_KEY in meta else None
    if (mean is None) != (std is None):
        raise HawqError(f"{float_path}: metadata has only one of {MEAN_KEY} and {STD_KEY}; it needs both or neither")
    if std is not None and any(s == 0 for s in std):
        raise HawqError(f"{float_path}: metadata {STD_KEY} holds a zero")
    outputs = float_model.graph.output
    dims = outputs[0].type.tensor_type.shape.dim if outputs else []
    classes = dims[-1].dim_value if len(dims) >= 2 and dims[-1].HasField("dim_value") else 0
    spec = ModelSpec(name=Path(float_path).stem, factory=lambda: None, input_shape=input_shape, mean=mean, std=std,
                     class_names=tuple(str(i) for i in range(classes)) if classes > 0 else None)
    if mean is None:
        return spec, NO_NORMALISATION
    return spec, f"ONNX metadata {MEAN_KEY}/{STD_KEY}"


@contextlib.contextmanager
def _quiet(logger: str):
    lg = logging.getLogger(logger)
    level = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(level)
