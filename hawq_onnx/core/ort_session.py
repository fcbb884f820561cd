"""Opening ONNX Runtime sessions with one-line errors instead of runtime tracebacks."""

from __future__ import annotations

import os

import onnx
import onnxruntime as ort

from hawq_onnx.core.onnx_inspect import load_onnx
from hawq_onnx.errors import HawqError

ort.set_default_logger_severity(3)  # errors only; our one-line message says what went wrong


def session_options(threads: int = 2, optimized_path: str | None = None,
                    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                    global_pool: bool = False) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    # Fatal only: ORT's warnings are not the user's business, and its errors reach the user as
    # our one-line message (a logged copy would be a second, noisier line).
    opts.log_severity_level = 4
    if global_pool:
        opts.use_per_session_threads = False
    else:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    return opts


def open_session(source: str | os.PathLike | onnx.ModelProto, options: ort.SessionOptions | None = None,
                 providers: list[str] | None = None, what: str = "model") -> ort.InferenceSession:
    """Check the model (onnx.checker) and open it in ONNX Runtime, or raise HawqError."""
    if isinstance(source, onnx.ModelProto):
        payload, name = source.SerializeToString(), what
    else:
        load_onnx(source)  # clear errors for missing, empty, truncated, non-ONNX, checker failures
        payload, name = str(source), str(source)
    try:
        return ort.InferenceSession(payload, sess_options=options or session_options(),
                                    providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise HawqError(f"ONNX Runtime cannot load {name}: {first[:300]}") from None
