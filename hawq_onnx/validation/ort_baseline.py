"""The yardstick: ONNX Runtime's own post-training int8 quantization of the float model.

``quantize_static`` with the settings ONNX Runtime recommends for x86 CPUs: QDQ format, uint8
activations, int8 per-channel weights, MinMax calibration, on the same calibration split that
hawq-onnx calibrates on (a fixed subset of the training data, never the evaluation data).

The quantizer opens ONNX Runtime sessions of its own with per-session thread pools; it fails in
a process where a global thread pool exists, so it must run before any such pool is created
(hawq-onnx only creates one in the latency child process).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

import numpy as np

from hawq_onnx.core import model_inputs
from hawq_onnx.errors import HawqError
from hawq_onnx.sources.splits import Split
from hawq_onnx.validation.ort_eval import ModelIO

CALIBRATION_BATCH = 64


class _Advice(logging.Filter):
    """The quantizer advises on the root logger to pre-process the model; not a problem here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()


@contextlib.contextmanager
def _quiet_advice() -> Iterator[None]:
    root = logging.getLogger()
    advice = _Advice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def ort_int8(float_path: str | Path, calib: Split, out_path: str | Path, io: ModelIO) -> Path:
    """Write ONNX Runtime's QDQ int8 quantization of ``float_path`` to ``out_path``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(range(0, len(calib), CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self._batches, None)
            if i is None:
                return None
            return io.feed(model_inputs.take(calib.x, slice(i, i + CALIBRATION_BATCH)))

    if len(calib) == 0:
        raise HawqError("the calibration split is empty: the ort-int8 baseline needs calibration data")
    try:
        with _quiet_advice():
            quantize_static(str(float_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            reduce_range=False, calibrate_method=CalibrationMethod.MinMax)
    except HawqError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise HawqError(f"ONNX Runtime's quantize_static failed on {float_path}: {first}") from None
    return Path(out_path)
