"""What a bundle's manifest says about the model: preprocessing, class names, validation figures.

Normalisation and class names come from ``--model``'s spec or the ONNX metadata, checked
against the model's input and output shapes; the accuracy / latency / size figures are copied
from a validation report.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import onnx

from hawq_onnx.errors import HawqError, OptionError
from hawq_onnx.io.atomic import read_json, sha256_file

log = logging.getLogger(__name__)

# ONNX metadata_props keys read for preprocessing and labels (the keys validate reads too);
# values are JSON lists or comma-separated.
META_MEAN = "hawq_onnx.mean"
META_STD = "hawq_onnx.std"
META_CLASS_NAMES = "hawq_onnx.class_names"


def _metadata_list(model: onnx.ModelProto, key: str, numbers: bool) -> list | None:
    """A metadata list: JSON (``[0.5]``, ``["cat", "dog"]``) or comma-separated, as validate reads it."""
    props = {p.key: p.value for p in model.metadata_props}
    if key not in props:
        return None
    text = props[key].strip()
    try:
        value = json.loads(text) if text.startswith("[") else [v.strip() for v in text.split(",")]
        if numbers:
            if not isinstance(value, list) or any(isinstance(v, bool) for v in value):
                raise TypeError(key)
            value = [float(v) for v in value]
            ok = bool(value) and all(math.isfinite(v) for v in value)
        else:
            ok = isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
    except (ValueError, TypeError, RecursionError):
        ok = False
    if not ok:
        what = "finite numbers" if numbers else "strings"
        raise HawqError(f"the model's metadata {key!r} is not a list of {what} (JSON or comma-separated): "
                        f"{text[:80]!r}")
    return list(value)


def _spec_for(model_ref: str, onnx_shape: tuple[int, ...] | None):
    """The model's spec (shape, normalisation, classes): the zoo entry, or the factory's model.

    A factory's model that declares no input shape takes the ONNX model's (without batch).
    """
    from hawq_onnx.models.registry import ZOO

    if model_ref in ZOO:
        return ZOO[model_ref]
    from hawq_onnx.sources.model import load_model

    quiet = logging.getLogger("hawq_onnx.sources.model")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "no weights" is expected: packaging needs only the spec
    try:
        return load_model(model_ref, None, onnx_shape).spec
    finally:
        quiet.setLevel(level)


def _static_dims(shape: list[Any]) -> list[Any]:
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def preprocessing_and_classes(model: onnx.ModelProto, inputs: list[dict[str, Any]],
                              outputs: list[dict[str, Any]], model_ref: str | None
                              ) -> tuple[dict[str, Any] | None, list[str] | None]:
    """Normalisation and class names: from ``--model``'s spec, else from the ONNX metadata."""
    meta_mean, meta_std = _metadata_list(model, META_MEAN, True), _metadata_list(model, META_STD, True)
    meta_classes = _metadata_list(model, META_CLASS_NAMES, False)
    mean = std = classes = None
    source = None
    if model_ref is not None:
        dims = _static_dims(inputs[0]["shape"])[1:] if len(inputs) == 1 else []
        spec = _spec_for(model_ref, tuple(dims) if dims and None not in dims else None)
        if len(inputs) == 1:
            fits = len(dims) == len(spec.input_shape) and all(
                d is None or d == s for d, s in zip(dims, spec.input_shape))
            if not fits:
                raise OptionError(f"{{model_ref}} {model_ref} takes input {'x'.join(map(str, spec.input_shape))} but "
                                  f"the ONNX model's input is {inputs[0]['shape']}: wrong {{model_ref}}?", "model_ref")
        mean, std = (list(spec.mean), list(spec.std)) if spec.mean and spec.std else (None, None)
        classes = list(spec.class_names) if spec.class_names else None
        source = f"--model {model_ref}"
        if (meta_mean and mean and meta_mean != mean) or (meta_classes and classes and meta_classes != classes):
            log.warning("the model's metadata disagrees with --model %s on normalisation or classes; using --model",
                        model_ref)
    if mean is None and meta_mean is not None and meta_std is not None:
        mean, std, source = meta_mean, meta_std, "onnx metadata"
    if classes is None and meta_classes is not None:
        classes = meta_classes
    if mean is not None and len(mean) != len(std):
        raise HawqError(f"normalisation mean has {len(mean)} values but std has {len(std)}")
    if mean is not None and any(s == 0 for s in std):
        raise HawqError("normalisation std holds a zero")
    channels = _static_dims(inputs[0]["shape"])[1:2] if len(inputs) == 1 else []
    if mean is not None and channels and channels[0] is not None and len(mean) not in (1, channels[0]):
        raise HawqError(f"normalisation has {len(mean)} values but the input has {channels[0]} channels "
                        f"(from {source})")
    if classes is not None and len(outputs) == 1:
        last = _static_dims(outputs[0]["shape"])[-1:]
        if last and last[0] is not None and last[0] != len(classes):
            raise HawqError(f"{len(classes)} class names but the output {outputs[0]['name']} has {last[0]} "
                            "values per sample: wrong --model?")
    pre = {"mean": mean, "std": std, "source": source,
           "note": "x_normalised = (x - mean) / std per channel, x scaled to [0, 1]"} if mean is not None else None
    return pre, classes


# --- validation figures -----------------------------------------------------------------------

VALIDATION_FORMAT = "hawq-onnx-validation"  # what hawq_onnx.validation.validate writes
_CATEGORIES = (
    ("accuracy", ("accuracy", "acc", "top1", "top5", "drop", "agreement")),
    ("latency", ("latency", "ms", "throughput", "fps", "speedup")),
    ("size", ("size", "bytes", "compression")),
)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _validator_figures(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The figures of a ``hawq-onnx validate`` report, per model label (float, quantized, ...)."""
    figures: dict[str, dict[str, Any]] = {"accuracy": {}, "latency": {}, "size": {}}
    models = report.get("models")
    for label, m in (models.items() if isinstance(models, dict) else ()):
        if not isinstance(m, dict):
            continue
        acc = m.get("accuracy") if isinstance(m.get("accuracy"), dict) else {}
        for key, value in (("top1", acc.get("top1")), ("top5", acc.get("top5")), ("samples", acc.get("samples")),
                           ("drop_points", m.get("drop_points")), ("agreement", m.get("agreement"))):
            if _number(value):
                figures["accuracy"][f"{label}.{key}"] = value
        for key in ("file_bytes", "size_ratio"):
            if _number(m.get(key)):
                figures["size"][f"{label}.{key}"] = m[key]
        latency = m.get("latency") if isinstance(m.get("latency"), dict) else {}
        for batch, stats in latency.items():
            for key in ("median_ms", "p90_ms"):
                if isinstance(stats, dict) and _number(stats.get(key)):
                    figures["latency"][f"{label}.batch{batch}.{key}"] = stats[key]
        speedup = m.get("speedup") if isinstance(m.get("speedup"), dict) else {}
        for batch, value in speedup.items():
            if _number(value):
                figures["latency"][f"{label}.batch{batch}.speedup"] = value
    return figures


def _category(path: list[str]) -> str | None:
    for part in reversed(path):
        low = part.lower().replace("-", "_")
        words = low.split("_")
        for category, keys in _CATEGORIES:
            if low in keys or any(w in keys for w in words):
                return category
    return None


def _generic_figures(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Any other JSON: every number whose key (or an enclosing key) names accuracy, latency or size."""
    figures: dict[str, dict[str, Any]] = {c: {} for c, _ in _CATEGORIES}

    def walk(value: Any, path: list[str], depth: int) -> None:
        if depth > 6:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, path + [str(k)], depth + 1)
        elif isinstance(value, list):
            for i, v in enumerate(value[:64]):
                label = v.get("name") if isinstance(v, dict) and isinstance(v.get("name"), str) else str(i)
                walk(v, path + [label], depth + 1)
        elif _number(value):
            category = _category(path)
            if category is not None:
                figures[category][".".join(path)] = value

    walk(report, [], 0)
    return figures


def validation_figures(report_path: Path) -> dict[str, Any]:
    """The accuracy / latency / size figures of a validation report, copied with their keys.

    A ``hawq-onnx validate`` report gives ``<model label>.<figure>`` keys (``quantized.top1``,
    ``quantized.batch1.median_ms``, ``quantized.size_ratio``); any other JSON object gives every
    number under a key naming accuracy, latency or size, keyed by its dotted JSON path.
    """
    try:
        report = read_json(report_path, "validation report")
    except HawqError as exc:
        raise HawqError(f"{exc}; pass the file that hawq-onnx validate --json writes, not the Markdown "
                        "--report") from None
    if not isinstance(report, dict):
        raise HawqError(f"validation report {report_path} is JSON but not an object; pass the report.json "
                        "that hawq-onnx validate writes")
    if report.get("format") == VALIDATION_FORMAT:
        figures = _validator_figures(report)
        data = report.get("data") if isinstance(report.get("data"), dict) else {}
        gate = report.get("gate") if isinstance(report.get("gate"), dict) else {}
        extra = {"data": data.get("source"), "gate_passed": gate.get("passed"), "max_drop": gate.get("max_drop")}
    else:
        figures = _generic_figures(report)
        extra = {}
    if not any(figures.values()):
        log.warning("validation report %s holds no accuracy, latency or size figures", report_path)
    return {"source": report_path.name, "sha256": sha256_file(report_path), **figures,
            **{k: v for k, v in extra.items() if v is not None}}
