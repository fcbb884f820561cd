"""Resolve ``--model`` / ``--weights`` / ``--input-shape`` into a ready PyTorch model.

A model is named as a zoo name (``resnet20-cifar10``), a file and factory
(``path/to/file.py:make_model``), a module and factory (``package.module:make_model``), either
with keyword arguments for the factory (``file.py:make_model,depth=20``), or through a source of
:mod:`hawq_onnx.sources.model_sources`: ``hf:DIR``, ``torchvision:NAME``, ``timm:NAME`` or a
float ``.onnx`` file.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import logging
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

from hawq_onnx.core import model_inputs
from hawq_onnx.core.layers import run_once
from hawq_onnx.core.model_inputs import InputShape
from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.models.registry import DEFAULT_MODEL, ZOO
from hawq_onnx.models.spec import ModelSpec
from hawq_onnx.sources import model_sources
from hawq_onnx.sources.hf_model import hf_model
from hawq_onnx.sources.model_sources import construct, parse_kwargs
from hawq_onnx.sources.onnx_model import onnx_model

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    module: nn.Module
    spec: ModelSpec
    reference: str
    weights: str | None

    @property
    def input_shape(self) -> InputShape:
        return self.spec.input_shape


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """'3,32,32' or '1x3x32x32' (a leading batch of 1 is dropped)."""
    if text is None or text == "":
        return None
    parts = text.replace("x", ",").replace(" ", "").split(",")
    try:
        dims = tuple(int(p) for p in parts if p)
    except ValueError:
        raise HawqError(f"--input-shape {text!r} is not a list of integers such as 3,32,32") from None
    if not dims or any(d <= 0 for d in dims):
        raise HawqError(f"--input-shape {text!r} must be positive integers such as 3,32,32")
    check_input_shape(dims, f"--input-shape {text!r}")
    return dims


# One sample of at most this many elements (8 GiB of float32): anything larger is a typo, and
# allocating it would end the run with an out-of-memory error rather than a message.
MAX_SAMPLE_ELEMENTS = 1 << 31


def check_input_shape(shape: InputShape, where: str) -> None:
    elements = model_inputs.elements(shape)
    if elements > MAX_SAMPLE_ELEMENTS:
        raise HawqError(f"{where}: one sample would hold {elements:,} values (more than {MAX_SAMPLE_ELEMENTS:,}); "
                        "give the shape of one input without the batch, such as 3,32,32")


def _split_factory(ref: str) -> tuple[str, dict]:
    """``FILE.py:factory,depth=20`` as the factory reference and its keyword arguments (the comma
    is looked for after the last colon only, so a path may hold commas)."""
    target, colon, attr = ref.rpartition(":")
    name, comma, rest = attr.partition(",")
    if not colon or not comma:
        return ref, {}
    return f"{target}:{name}", parse_kwargs(rest, ref)


def _import_factory(ref: str):
    target, _, attr = ref.rpartition(":")
    if not target or not attr:
        known = ", ".join(sorted(ZOO))
        raise HawqError(f"unknown model {ref!r}: use a zoo name ({known}), FILE.py:factory, package.module:factory, "
                        "hf:DIR, torchvision:NAME, timm:NAME or FILE.onnx")
    try:
        if target.endswith(".py") or "/" in target or "\\" in target:
            path = Path(target)
            if not path.is_file():
                raise HawqError(f"model file {path} does not exist")
            name = "hawq_user_model_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise HawqError(f"cannot import {path} as a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except HawqError:
        raise
    except SystemExit as exc:  # user code must not end the run silently, with its own status
        raise HawqError(f"importing model {target!r} called sys.exit({exc.code!r}); hawq-onnx stops here") from None
    except Exception as exc:  # user code: any failure is their input's problem
        raise HawqError(f"importing model {target!r} failed: {exc.__class__.__name__}: {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise HawqError(f"model module {target!r} has no callable {attr!r}")
    return factory


def _build(factory, ref: str, kwargs: dict | None = None) -> nn.Module:
    try:
        model = construct(factory, kwargs, f"model factory {ref!r}") if kwargs else factory()
    except HawqError:
        raise
    except SystemExit as exc:
        raise HawqError(f"model factory {ref!r} called sys.exit({exc.code!r}); hawq-onnx stops here") from None
    except Exception as exc:
        raise HawqError(f"model factory {ref!r} raised {exc.__class__.__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise HawqError(f"model factory {ref!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint as a flat state_dict: plain, ``{"state_dict": ...}``, DataParallel prefixes stripped."""
    p = Path(path)
    if not p.is_file():
        raise HawqError(f"weights file {p} does not exist")
    if p.stat().st_size == 0:
        raise HawqError(f"weights file {p} is empty")
    try:
        with warnings.catch_warnings():  # torch warns about legacy pickles before failing: the error says it all
            warnings.simplefilter("ignore")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HawqError(f"weights file {p} is not a readable torch checkpoint ({exc.__class__.__name__})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise HawqError(f"weights file {p} holds no state_dict (a dict of tensors)")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def apply_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    # num_batches_tracked is bookkeeping that some checkpoints omit.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
             for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"wrong shape {len(wrong)} (e.g. {'; '.join(wrong[:2])})")
        raise HawqError(f"weights {source} do not fit the model: {'; '.join(parts)}")
    model.load_state_dict(state, strict=False)
    check_finite(model, source)


def check_finite(model: nn.Module, source: str) -> None:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise HawqError(f"{source}: parameter {name} holds NaN or Inf values; fix or retrain the weights")


def load_source(ref: str, input_shape: InputShape | None,
                data_shape: InputShape | None) -> tuple[nn.Module, ModelSpec, str | None] | None:
    """The model of a prefixed spec (``hf:``, ``torchvision:``, ``timm:``) or ONNX file, its spec,
    and the file its weights came from (None where it keeps its random initialisation); None
    for any other reference."""
    if model_sources.is_onnx_file(ref):
        return onnx_model(ref, input_shape, data_shape)
    parsed = model_sources.split_spec(ref)
    if parsed is None:
        return None
    source, name, kwargs = parsed
    if source == "hf":
        return hf_model(ref, name, kwargs, input_shape, data_shape)
    build = model_sources.torchvision_model if source == "torchvision" else model_sources.timm_model
    module, spec = build(ref, name, kwargs, input_shape, data_shape)
    return module, spec, None


def load_model(ref: str | None = None, weights: str | None = None,
               input_shape: InputShape | None = None,
               data_shape: InputShape | None = None) -> LoadedModel:
    """Build the model, load its weights, check them, and put it in eval mode.

    The input shape is ``input_shape``, else the model's own, else ``data_shape`` (one sample of
    the data it will see, ``data.sample_shape``)."""
    ref = ref or DEFAULT_MODEL
    source = None if ref in ZOO else load_source(ref, input_shape, data_shape)
    own_weights = None  # the file a source's weights came from (a Hugging Face folder's, an ONNX file)
    if source is not None:
        model, spec, own_weights = source
    elif ref in ZOO:
        spec = ZOO[ref]
        model = _build(spec.factory, ref)
    else:
        factory_ref, kwargs = _split_factory(ref)
        factory = _import_factory(factory_ref)
        model = _build(factory, factory_ref, kwargs)
        declared = getattr(model, "input_shape", None) or getattr(factory, "input_shape", None)
        shape = input_shape or (tuple(int(d) for d in declared) if declared else None)
        if shape is None and data_shape:
            shape = data_shape
            log.info("model %s declares no input shape: using the data's, %s", ref, shape)
        if shape is None:
            raise OptionError(f"model {ref!r} declares no input shape: pass {{input_shape}} (C, H, W)", "input_shape")
        classes = getattr(model, "class_names", None)
        spec = ModelSpec(name=factory_ref.rpartition(":")[2],
                         factory=(lambda: factory(**kwargs)) if kwargs else factory, input_shape=shape,
                         mean=getattr(model, "input_mean", None), std=getattr(model, "input_std", None),
                         class_names=tuple(classes) if classes else None)
    # A source reads input_shape itself (for a text model it is the sequence length).
    if source is None and input_shape is not None and input_shape != spec.input_shape:
        spec = replace(spec, input_shape=input_shape)
    weights = weights or spec.default_weights
    if weights:
        apply_weights(model, load_state_dict_file(weights), str(weights))
    elif own_weights is None:
        log.warning("model %s: no weights given, so it keeps its random initialisation", ref)
    weights = weights or own_weights
    check_finite(model, str(weights or ref))
    check_input_shape(spec.input_shape, f"model {ref}")
    model.eval()
    # Every command needs a model that runs on its input shape: say so now, in one line, rather
    # than from deep inside an export or a training loop.
    run_once(model, spec.input_shape)
    return LoadedModel(model, spec, ref, str(weights) if weights else None)


def model_fingerprint(model: nn.Module) -> str:
    """Identifies the architecture (parameter names and shapes), not the values."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(f"{name}:{tuple(p.shape)};".encode())
    return h.hexdigest()[:16]


def from_module(module: nn.Module, input_shape: InputShape | None = None,
                data_shape: InputShape | None = None, name: str | None = None) -> LoadedModel:
    """A user's ``nn.Module`` as the stages take it: a private eval-mode copy (the user's module,
    its mode and its weights are never touched), checked to run on its input shape.

    The input shape is ``input_shape``, else the module's ``input_shape`` attribute, else
    ``data_shape`` (one sample of the data). Inputs are taken as the data gives them: no
    normalisation is added (``input_mean``/``input_std`` attributes, where present, are recorded).
    """
    if not isinstance(module, nn.Module):
        raise HawqError(f"model must be a torch.nn.Module, a zoo name or FILE.py:factory; got {type(module).__name__}")
    declared = getattr(module, "input_shape", None)
    shape = input_shape or (tuple(int(d) for d in declared) if declared else None) or data_shape
    if shape is None:
        raise HawqError(f"{type(module).__name__} declares no input shape and there is no data to take one from: "
                        "pass input_shape=(C, H, W)")
    try:
        copy_ = copy.deepcopy(module).cpu()
    except Exception as exc:
        raise HawqError(f"the model cannot be copied ({exc.__class__.__name__}: {exc}); hawq-onnx works on a copy "
                        "so that your module is never modified") from None
    check_finite(copy_, type(module).__name__)
    if model_inputs.is_single(shape):
        shape = tuple(int(d) for d in shape)
    check_input_shape(shape, f"input_shape {model_inputs.describe(shape)}")
    copy_.eval()
    run_once(copy_, shape)
    label = name or type(module).__name__
    classes = getattr(module, "class_names", None)
    spec = ModelSpec(name=label, factory=lambda: copy.deepcopy(copy_), input_shape=shape,
                     mean=getattr(module, "input_mean", None), std=getattr(module, "input_std", None),
                     class_names=tuple(classes) if classes else None)
    return LoadedModel(copy_, spec, f"python:{label}", None)
