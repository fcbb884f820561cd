"""``hf:DIR``: a Hugging Face model from a local folder, never downloaded.

The folder holds ``config.json`` and, where the model was trained, ``model.safetensors`` or
``pytorch_model.bin`` (sharded: their ``.index.json``). The class is ``class=NAME`` (any
transformers model class), else ``task=sequence-classification`` or ``task=image-classification``
(the matching ``AutoModelFor...``), else the config's ``architectures[0]``. Other keywords set
config fields (``num_labels=4``, ``hidden_dropout_prob=0``), except ``attn_implementation``,
which picks the attention kernel (default ``eager``, see :data:`DEFAULT_ATTENTION`).

Inputs: a vision model (``main_input_name`` ``pixel_values``) takes one (C, H, W) tensor, from
the data or the config's ``image_size``; a text model takes ``input_ids`` and ``attention_mask``
(int64, one sequence each): the data's named arrays where there are any, else a sequence length
given as a one-dimensional input shape, else :data:`DEFAULT_SEQ_LEN` tokens.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from hawq_onnx.core.model_inputs import InputShape, InputSpec, Signature
from hawq_onnx.errors import HawqError
from hawq_onnx.models.spec import ModelSpec
from hawq_onnx.sources.model_sources import optional_import

log = logging.getLogger(__name__)

# "eager" attention is plain matmuls and softmax: the same function as transformers' default
# "sdpa", the path the export's layer binding and the tests cover, and one whose double backward
# exists without the analysis having to reroute the fused kernel (which it does, through
# PyTorch's math backend, when attn_implementation=sdpa overrides this).
DEFAULT_ATTENTION = "eager"
RANDOM_INIT_SEED = 0  # a folder without weights: the same random model in every stage
DEFAULT_SEQ_LEN = 128
TASKS = {"sequence-classification": "AutoModelForSequenceClassification",
         "image-classification": "AutoModelForImageClassification"}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TEXT_INPUTS = ("input_ids", "attention_mask")


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Hugging Face's offline switches for the call. ``local_files_only`` is what guarantees no
    download (huggingface_hub reads its environment once, at import); these cover any library
    code that checks the environment itself."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0][:200] if text else ''}"


def _model_class(transformers: Any, ref: str, config: Any, kwargs: dict[str, Any]) -> Any:
    name, task = kwargs.pop("class", None), kwargs.pop("task", None)
    if name is not None and task is not None:
        raise HawqError(f"model {ref!r}: give class= or task=, not both")
    if task is not None:
        if task not in TASKS:
            raise HawqError(f"model {ref!r}: unknown task {task!r}; use one of {', '.join(TASKS)} (or class=NAME)")
        name = TASKS[task]
    elif name is None:
        archs = getattr(config, "architectures", None) or []
        if not archs:
            raise HawqError(f"model {ref!r}: config.json names no architectures; add ,task=sequence-classification, "
                            ",task=image-classification or ,class=NAME (a transformers model class)")
        name = archs[0]
    try:
        cls = getattr(transformers, str(name))
    except Exception:
        cls = None
    if cls is None or not isinstance(cls, type) or not hasattr(cls, "from_pretrained"):
        raise HawqError(f"model {ref!r}: transformers {transformers.__version__} has no model class {name!r}")
    return cls


def _config(transformers: Any, ref: str, folder: Path, kwargs: dict[str, Any]) -> Any:
    try:
        config, unused = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True,
                                                                 return_unused_kwargs=True, **kwargs)
    except Exception as exc:
        raise HawqError(f"model {ref!r}: {folder / 'config.json'} cannot be read ({_first_line(exc)})") from None
    if unused:
        names = ", ".join(sorted(unused))
        raise HawqError(f"model {ref!r}: {type(config).__name__} has no setting {names}; keywords other than "
                        "class, task and attn_implementation set config fields")
    return config


def _image_shape(config: Any) -> tuple[int, int, int]:
    size = getattr(config, "image_size", None) or 224  # ResNet configs carry none: ImageNet's
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[-1]))
    return (int(getattr(config, "num_channels", 3) or 3), int(h), int(w))


def _text_signature(ref: str, config: Any, input_shape: InputShape | None,
                    data_shape: InputShape | None) -> InputShape:
    if isinstance(input_shape, Signature):
        return input_shape
    if input_shape is not None:
        if len(input_shape) != 1:
            raise HawqError(f"model {ref!r} takes token ids: its input shape is the sequence length (one number), "
                            f"not {tuple(input_shape)}")
        length = int(input_shape[0])
    elif data_shape is not None:
        return data_shape
    else:
        limit = int(getattr(config, "max_position_embeddings", DEFAULT_SEQ_LEN) or DEFAULT_SEQ_LEN)
        length = min(DEFAULT_SEQ_LEN, limit)
        log.info("model %s: no data to take the sequence length from: using %d tokens", ref, length)
    return Signature(tuple(InputSpec(n, (length,), "int64") for n in TEXT_INPUTS), "keyword")


def _normalisation(folder: Path) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """The image processor's mean and std, where the folder has a preprocessor_config.json."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return None, None
    try:
        cfg = json.loads(path.read_text())
        mean, std = cfg.get("image_mean"), cfg.get("image_std")
        if mean is None or std is None or not cfg.get("do_normalize", True):
            return None, None
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (ValueError, TypeError, AttributeError) as exc:
        raise HawqError(f"{path} is not a readable image processor config ({_first_line(exc)})") from None


def _class_names(config: Any) -> tuple[str, ...] | None:
    labels = getattr(config, "id2label", None) or {}
    names = [str(labels[k]) for k in sorted(labels, key=int)]
    # transformers fills in LABEL_0, LABEL_1... where the config names none: not class names.
    if not names or all(re.fullmatch(rf"LABEL_{i}", n) for i, n in enumerate(names)):
        return None
    return tuple(names)


def hf_model(ref: str, folder_text: str, kwargs: dict[str, Any], input_shape: InputShape | None,
             data_shape: InputShape | None) -> tuple[nn.Module, ModelSpec, str | None]:
    folder = Path(folder_text)
    if not (folder / "config.json").is_file():
        what = "does not exist" if not folder.exists() else "has no config.json"
        raise HawqError(f"model {ref!r}: the folder {folder} {what} (hf:DIR takes a local Hugging Face model folder)")
    transformers = optional_import("transformers", "hf", f"model {ref!r}")
    kwargs = dict(kwargs)
    attention = kwargs.pop("attn_implementation", DEFAULT_ATTENTION)
    with _offline():
        config = _config(transformers, ref, folder, {k: v for k, v in kwargs.items() if k not in ("class", "task")})
        cls = _model_class(transformers, ref, config, kwargs)
        weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
        try:
            if weights is not None:
                module = cls.from_pretrained(str(folder), config=config, local_files_only=True,
                                             attn_implementation=attention)
            else:
                # Random weights from a fixed seed: every stage (each a separate command) must see
                # the same model, and the caller's random state is left as it was.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(RANDOM_INIT_SEED)
                    if hasattr(cls, "_from_config"):
                        module = cls._from_config(config, attn_implementation=attention)
                    else:  # an AutoModelFor... class
                        module = cls.from_config(config, attn_implementation=attention)
        except Exception as exc:
            raise HawqError(f"model {ref!r}: {cls.__name__} cannot be built from {folder} ({_first_line(exc)})") from None
    if not isinstance(module, nn.Module):
        raise HawqError(f"model {ref!r}: {cls.__name__} built a {type(module).__name__}, not a torch.nn.Module")
    main = getattr(module, "main_input_name", "input_ids")
    mean = std = None
    if main == "pixel_values":
        shape = input_shape or data_shape or _image_shape(config)
        mean, std = _normalisation(folder)
    elif main == "input_ids":
        shape = _text_signature(ref, config, input_shape, data_shape)
    else:
        shape = input_shape or data_shape
        if shape is None:
            raise HawqError(f"model {ref!r} takes {main}: give its input shape or data to take one from")
    spec = ModelSpec(name=folder.resolve().name, factory=lambda: copy.deepcopy(module), input_shape=shape,
                     mean=mean, std=std, class_names=_class_names(config),
                     description=f"{cls.__name__} from {folder}")
    return module, spec, str(weights) if weights is not None else None
