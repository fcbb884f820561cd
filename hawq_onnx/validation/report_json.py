"""Reading report.json back: the checked parts of a :class:`~hawq_onnx.validation.validate.ValidationReport`.

validate.py holds the report's dataclasses with their ``to_json`` and imports this module, which
therefore cannot import them back (a cycle): it reads the document into their keyword arguments,
and ``ValidationReport.from_json`` builds them. The nested types (Accuracy, KernelCensus,
LatencyStats, SpeedupStats, LatencyResult) read themselves, beside their ``to_json``.
"""

from __future__ import annotations

from typing import Any

from hawq_onnx.core import model_inputs
from hawq_onnx.errors import HawqError
from hawq_onnx.io.json_fields import get, items, objects, table, value
from hawq_onnx.validation.kernel_census import KernelCensus
from hawq_onnx.validation.latency import LatencyResult, LatencyStats, SpeedupStats
from hawq_onnx.validation.ort_eval import Accuracy

FORMAT = "hawq-onnx-validation"
VERSION = 1
FLOAT, QUANTIZED = "float", "quantized"

# LayerReport's fields: (name, JSON kind, may be null)
_LAYER_FIELDS = (("layer", "str", False), ("node", "str", False), ("op_type", "str", False),
                 ("storage", "str", False), ("bits", "int", False), ("act_bits", "int", True),
                 ("bytes", "int", False), ("float_bytes", "int", True), ("kernel", "str", False),
                 ("mode", "str", False), ("top_eigenvalue", "number", True), ("trace", "number", True),
                 ("trace_per_param", "number", True))


def _reasons(x: Any) -> list[str]:
    return [value(s, "str", "a slowdown reason") for s in value(x, "list", "a list of slowdown reasons")]


def model_fields(obj: Any) -> dict[str, Any]:
    """ModelResult's keyword arguments from its ``to_json``. Its census has no layers where the
    file predates them, and the model's path (or "") as its path."""
    kernels = get(obj, "kernels", "dict")
    path = get(obj, "path", "str", optional=True)
    return {"label": get(obj, "label", "str"), "path": path, "file_bytes": get(obj, "file_bytes", "int"),
            "bytes_by_type": table(obj, "bytes_by_type", "int"),
            "accuracy": Accuracy.from_json(get(obj, "accuracy", "dict")),
            "census": KernelCensus.from_json(kernels, path or ""),
            **{k: get(obj, k, "number", optional=True) for k in ("drop_points", "agreement", "size_ratio")},
            "latency": objects(obj, "latency", LatencyStats.from_json, int_keys=True),
            "speedup": table(obj, "speedup", "number", int_keys=True),
            "speedup_stats": objects(obj, "speedup_spread", SpeedupStats.from_json, int_keys=True),
            "slower_because": objects(obj, "slower_than_float_because", _reasons, int_keys=True),
            "kernel_agreement": get(kernels, "agreement_with_unoptimized", "number", optional=True)}


def layer_fields(obj: Any) -> dict[str, Any]:
    """LayerReport's keyword arguments."""
    return {k: get(obj, k, kind, optional=null) for k, kind, null in _LAYER_FIELDS}


def reference_fields(obj: Any) -> dict[str, Any]:
    """ReferenceAgreement's keyword arguments."""
    return {"samples": get(obj, "samples", "int"), "top1": get(obj, "top1", "number"),
            "p99_steps": get(obj, "p99_steps", "number")}


def _models(obj: Any) -> list[dict[str, Any]]:
    by_label = objects(obj, "models", model_fields)
    for label, m in by_label.items():
        if m["label"] != label:
            raise ValueError(f"the model under {label!r} is labelled {m['label']!r}")
    missing = [k for k in (FLOAT, QUANTIZED) if k not in by_label]
    if missing:
        raise ValueError(f"there is no {missing[0]} model")
    # The file's keys are sorted; a report lists the float model, the quantized one, then any baseline.
    return [by_label[FLOAT], by_label[QUANTIZED], *(m for k, m in by_label.items() if k not in (FLOAT, QUANTIZED))]


def _report_fields(obj: dict[str, Any]) -> dict[str, Any]:
    data = get(obj, "data", "dict")
    # A signature's dict, or a plain shape (whose dimensions shape_from_json would truncate or misread).
    shape = get(data, "input_shape", "dict") if isinstance(data.get("input_shape"), dict) \
        else items(data, "input_shape", lambda d: value(d, "int", "an input dimension"))
    models = _models(obj)
    latency = get(obj, "latency", "dict", optional=True)
    if latency is not None:  # the per-model stats are kept with each model, not under "latency"
        latency = LatencyResult.from_json(latency, {m["label"]: m["latency"] for m in models if m["latency"]})
    fake = get(obj, "fake_quant_agreement", "dict", optional=True)
    return {"data": get(data, "source", "str"), "samples": get(data, "samples", "int"),
            "num_classes": get(data, "num_classes", "int"), "input_name": get(data, "input_name", "str"),
            "input_shape": model_inputs.shape_from_json(shape), "normalisation": get(data, "normalisation", "str"),
            "models": models, "layers": items(obj, "layers", layer_fields), "latency": latency,
            "max_drop": get(get(obj, "gate", "dict"), "max_drop", "number", optional=True),
            "sensitivity": get(obj, "sensitivity", "str", optional=True),
            "fake_quant": None if fake is None else reference_fields(fake),
            # Reports from before OpenVINO was a runtime were all measured under ONNX Runtime.
            "runtime": get(obj, "runtime", "str") if "runtime" in obj else "ONNX Runtime"}


def report_fields(obj: Any, where: str = "validation report") -> dict[str, Any]:
    """ValidationReport's keyword arguments from its ``to_json``, with "models" a list of
    ModelResult's, "layers" of LayerReport's and "fake_quant" ReferenceAgreement's (or None).

    HawqError, one line naming ``where``, for anything that is not such a report.
    """
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else None
        raise HawqError(f"{where} is not a hawq-onnx validation report "
                        f"({f'its format is {found!r}' if isinstance(found, str) else 'no format field'}; "
                        "`hawq-onnx validate --json` writes one)")
    if not (type(obj.get("version")) is int and obj["version"] == VERSION):  # true == 1 to Python
        raise HawqError(f"{where} has version {obj.get('version')!r:.20}; this hawq-onnx reads version {VERSION}")
    try:
        return _report_fields(obj)
    except (ValueError, TypeError, KeyError, HawqError) as exc:  # HawqError: a malformed input signature
        detail = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        raise HawqError(f"{where} is malformed ({detail}); write it again with `hawq-onnx validate`") from None
