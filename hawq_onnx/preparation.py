"""A user's model and data as the stages take them: the private model copy with its input shape,
and the training, calibration and evaluation splits (``hawq_onnx.api`` and ``pipeline``)."""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from hawq_onnx.core import model_inputs
from hawq_onnx.core.layers import run_once
from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.qat.finetune import predict_scores
from hawq_onnx.sources import user_data
from hawq_onnx.sources.data import load_data, resolve_source, sample_shape
from hawq_onnx.sources.model import LoadedModel, from_module, load_model
from hawq_onnx.sources.splits import Dataset

PathLike = str | os.PathLike


def reiterable(data: Any) -> Any:
    """A one-shot iterator (a generator) read once into a list, so that every stage sees it all."""
    if data is not None and not isinstance(data, (str, bytes)) and hasattr(data, "__next__"):
        return list(data)
    return data


def _user_sample_shape(data: Any, input_fn: Callable | None) -> model_inputs.InputShape | None:
    if data is None:
        return None
    if isinstance(data, str):
        return sample_shape(data)
    return model_inputs.shape_of(user_data.first_inputs(data, 1, input_fn))


def prepare_model(model: nn.Module | str | LoadedModel | None, *, weights: PathLike | None = None,
                  input_shape: model_inputs.InputShape | None = None, data: Any = None,
                  input_fn: Callable | None = None) -> LoadedModel:
    """``model`` as the stages take it: a private copy in eval mode, its input shape known."""
    if isinstance(model, LoadedModel):
        return model
    shape = input_shape if input_shape is None or isinstance(input_shape, model_inputs.Signature) \
        else tuple(int(d) for d in input_shape)
    held = data is not None and not isinstance(data, (str, Dataset))
    data_shape = _user_sample_shape(data, input_fn) if held else None
    if model is None or isinstance(model, str):
        loaded = load_model(model, None if weights is None else str(weights), shape,
                            data_shape=data_shape or _user_sample_shape(data, input_fn))
    elif weights is not None:
        raise OptionError("{weights}: load weights into your nn.Module yourself ({weights} is for a model named by "
                          "string)", "weights")
    else:
        declared = getattr(model, "input_shape", None)
        loaded = from_module(model, shape, data_shape=None if shape or declared else data_shape)
    if data_shape is not None:
        _check_fits(loaded, data_shape)
    return loaded


def _check_fits(loaded: LoadedModel, data_shape: model_inputs.InputShape) -> None:
    """Data in another form than the model takes (named inputs it has no parameter for, integer
    inputs where it takes one float tensor) is a one-line error before any stage runs it. One
    float tensor of another size is left to the model: convolutional models take several."""
    if model_inputs.is_single(data_shape) and model_inputs.is_single(loaded.input_shape):
        return
    if data_shape != loaded.input_shape:
        raise HawqError(f"the data gives inputs {model_inputs.describe(data_shape)}, but the model takes "
                        f"{model_inputs.describe(loaded.input_shape)} (pass input_fn to say what the model takes, "
                        "or input_shape)")


def labeler(loaded: LoadedModel) -> Callable[[model_inputs.Arrays], np.ndarray]:
    def label(x: model_inputs.Arrays) -> np.ndarray:
        with torch.no_grad():
            return predict_scores(loaded.module, x).argmax(axis=1).astype(np.int64)
    return label


def num_classes(loaded: LoadedModel) -> int:
    out = run_once(loaded.module, loaded.input_shape)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise HawqError(f"the model's output must be one (batch, classes) tensor of scores, got "
                        f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    return int(out.shape[1])


def prepare_data(loaded: LoadedModel, data: Any, eval_data: Any = None, *, input_fn: Callable | None = None,
                 seed: int = 0) -> Dataset:
    """Training, calibration and evaluation splits for ``loaded`` from ``data`` (and ``eval_data``)."""
    if isinstance(data, Dataset):
        return data
    if data is None or isinstance(data, str):
        if eval_data is not None:
            raise OptionError("{eval_data}: a spec string (digits, cifar10:DIR, npz:FILE) brings its own test "
                              "split; give {eval_data} only with data held in Python", "eval_data")
        return load_data(resolve_source(data, loaded.spec), loaded.spec, seed=seed)
    return user_data.as_dataset(reiterable(data), reiterable(eval_data), num_classes=num_classes(loaded),
                                input_fn=input_fn, labeler=labeler(loaded), seed=seed)
