"""Models named by a source prefix: ``hf:DIR``, ``torchvision:NAME``, ``timm:NAME``, and an ONNX file.

Every source takes constructor keyword arguments after its name, separated by commas:
``torchvision:resnet18,num_classes=10``, ``timm:resnet18,num_classes=10,drop_rate=0.1``,
``hf:path/to/folder,num_labels=4``. Values are read as int, float, bool (``true``/``false``),
``none``, or else text (quote a value, ``name='10'``, to keep it text). A comma was chosen over
``?`` or ``[...]`` because those are glob characters: zsh refuses an unmatched glob, so the
spec would need quoting in every shell command.

The packages behind these sources are optional extras (``pip install 'hawq-onnx[hf]'``,
``[vision]``, ``[onnx-input]``) imported only when such a model is named; one that does not
import is a one-line error naming the package, the extra and the reason.
"""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from hawq_onnx.core.model_inputs import InputShape
from hawq_onnx.errors import HawqError
from hawq_onnx.models.spec import ModelSpec

log = logging.getLogger(__name__)

PREFIXES = ("hf", "torchvision", "timm")
# ImageNet's statistics: what torchvision's and timm's classifiers were trained on.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SHAPE = (3, 224, 224)
SYNTAX = "SOURCE:NAME[,KEY=VALUE...] (e.g. torchvision:resnet18,num_classes=10)"
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_value(text: str) -> Any:
    """A keyword's value: int, float, bool, None, or the text itself (quotes force text)."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_kwargs(text: str, ref: str) -> dict[str, Any]:
    """``a=1,b=x`` as keyword arguments, or a one-line error naming the bad part."""
    out: dict[str, Any] = {}
    if not text:
        return out
    for part in text.split(","):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not _KEY.match(key):
            raise HawqError(f"model {ref!r}: {part!r} is not KEY=VALUE; write {SYNTAX}")
        if key in out:
            raise HawqError(f"model {ref!r}: keyword {key!r} is given twice")
        out[key] = parse_value(value.strip())
    return out


def split_spec(ref: str) -> tuple[str, str, dict[str, Any]] | None:
    """``(source, name, kwargs)`` for a prefixed spec, None for anything else (zoo, factory, file)."""
    source, colon, rest = ref.partition(":")
    if not colon or source not in PREFIXES:
        return None
    if source == "hf" and rest and Path(rest).is_dir():  # a folder whose name holds a comma, as it is
        return source, rest, {}
    name, _, kwargs = rest.partition(",")
    if not name:
        raise HawqError(f"model {ref!r} names no {'folder' if source == 'hf' else 'model'}; write {SYNTAX}")
    return source, name, parse_kwargs(kwargs, ref)


def is_onnx_file(ref: str) -> bool:
    return ref.lower().endswith(".onnx") and ":" not in Path(ref).name


def optional_import(package: str, extra: str, purpose: str) -> Any:
    """``package`` imported, or a one-line error saying which package failed, why, and how to install it."""
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] != package.split(".")[0]:
            reason = f"it needs {exc.name}, which is not installed"
        else:
            reason = "it is not installed"
        raise HawqError(f"{purpose} needs the Python package {package}, but {reason}: "
                        f"pip install 'hawq-onnx[{extra}]'") from None
    except Exception as exc:
        # e.g. the registry's torchvision is a CUDA build that fails beside a CPU-only torch
        # ("operator torchvision::nms does not exist"): the first line says which case it is.
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise HawqError(f"{purpose} needs the Python package {package}, which is installed but does not import "
                        f"({exc.__class__.__name__}: {first}); install a build that matches your torch") from None


def construct(fn: Callable[..., Any], kwargs: dict[str, Any], what: str) -> Any:
    """``fn(**kwargs)`` with a one-line error for an unknown keyword or a failing constructor."""
    try:
        return fn(**kwargs)
    except HawqError:
        raise
    except TypeError as exc:
        bad = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if bad:
            raise HawqError(f"{what} takes no keyword {bad[1]!r}") from None
        raise HawqError(f"{what} failed: TypeError: {str(exc).splitlines()[0][:200]}") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise HawqError(f"{what} failed: {exc.__class__.__name__}: {first}") from None


def _image_spec(ref: str, name: str, shape: InputShape, factory: Callable[[], nn.Module],
                mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> ModelSpec:
    return ModelSpec(name=name, factory=factory, input_shape=shape, mean=mean, std=std,
                     description=f"{ref} (its own random initialisation unless weights are given)")


def _shape(ref: str, input_shape: InputShape | None, data_shape: InputShape | None,
           default: InputShape) -> InputShape:
    if input_shape is not None:
        return input_shape
    if data_shape is not None:
        return data_shape
    log.info("model %s: no input shape given and no data to take one from: using %s", ref, default)
    return default


def torchvision_model(ref: str, name: str, kwargs: dict[str, Any], input_shape: InputShape | None,
                      data_shape: InputShape | None) -> tuple[nn.Module, ModelSpec]:
    optional_import("torchvision", "vision", f"model {ref!r}")
    models = importlib.import_module("torchvision.models")
    known = set(models.list_models())
    if name not in known:
        near = sorted(k for k in known if name.lower()[:4] in k)[:6]
        hint = f" (similar: {', '.join(near)})" if near else " (torchvision.models.list_models() names them all)"
        raise HawqError(f"torchvision has no model {name!r}{hint}")

    def factory() -> nn.Module:
        return construct(lambda **kw: models.get_model(name, **kw), kwargs, f"torchvision model {name}")

    module = factory()
    shape = _shape(ref, input_shape, data_shape, IMAGENET_SHAPE)
    return module, _image_spec(ref, name, shape, factory, IMAGENET_MEAN, IMAGENET_STD)


def timm_model(ref: str, name: str, kwargs: dict[str, Any], input_shape: InputShape | None,
               data_shape: InputShape | None) -> tuple[nn.Module, ModelSpec]:
    timm = optional_import("timm", "vision", f"model {ref!r}")
    if not timm.is_model(name):
        near = timm.list_models(f"*{name[:4]}*")[:6]
        hint = f" (similar: {', '.join(near)})" if near else " (timm.list_models() names them all)"
        raise HawqError(f"timm has no model {name!r}{hint}")

    def factory() -> nn.Module:
        return construct(lambda **kw: timm.create_model(name, **kw), kwargs, f"timm model {name}")

    module = factory()
    cfg = dict(getattr(module, "pretrained_cfg", None) or {})
    default = tuple(int(d) for d in cfg.get("input_size", IMAGENET_SHAPE))
    shape = _shape(ref, input_shape, data_shape, default)
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    return module, _image_spec(ref, name, shape, factory, mean, std)
