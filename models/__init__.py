"""Model zoo of hawq-onnx (installed as ``hawq_onnx.models``)."""

from hawq_onnx.models.registry import DEFAULT_MODEL, ZOO
from hawq_onnx.models.spec import ModelSpec

__all__ = ["DEFAULT_MODEL", "ZOO", "ModelSpec"]
