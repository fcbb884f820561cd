"""ONNX Runtime's ORT-format conversion of a bundle's model, and the check of its output.

Conversion settings, and why:

* ONNX Runtime's own ``onnxruntime.tools.convert_onnx_models_to_ort``, called through its Python
  API (in-process: a subprocess would re-import torch, which ``onnxruntime.tools`` imports, for
  2 s of CPU per bundle) on a copy of the model in a scratch folder; its prints are captured.
* Optimization style **Fixed**, level **all**, no target platform. A minimal build has no graph
  optimizers, so the optimizations that make a QDQ model fast (QDQ -> QLinearConv / QGemm /
  QLinearAdd, NHWC integer convolutions) must be baked into the ``.ort``; Fixed does that, and
  the ``.ort`` then runs as-is. Runtime style keeps the unfused QDQ graph and replays saved
  optimizations only in an *extended* minimal build with
  ``session.enable_saved_runtime_optimizations=1`` (the route for NNAPI / CoreML); in a plain
  minimal build its QDQ nodes run as float DequantizeLinear -> Conv -> QuantizeLinear, and its
  operator config must hold both graphs' operators. No target platform means the tool leaves
  out the x86-only NCHWc layout and sets ``session.qdqisint8allowed=0``: the ``.ort`` runs on
  x86 and ARM CPUs alike (uint8 activations, which hawq-onnx uses, fuse on both).
* No type reduction: the operators config is ``model.required_operators.config``. For 8-bit QDQ
  models the tool does write a type-reduced config, but nothing here can prove that a
  type-reduced build runs the model (it needs an ONNX Runtime source build), a type the tool's
  partial tracking misses (it tracks no types for QGemm or Reshape, and forces DequantizeLinear's
  in a TODO) fails only on the device, and its type pass raises KeyError on INT4/INT2 tensors.
  Operator reduction alone is the safe default; type reduction would be a further opt-in.
* The ORT format (v5, ONNX Runtime 1.32) has no 4-bit or 2-bit tensor type: a weight stored as
  INT4/INT2 and read directly by DequantizeLinear gives an ``.ort`` that ONNX Runtime refuses to
  load (the check below catches it and says so). The ``INT4 -> Cast(INT8) -> DequantizeLinear``
  form converts: the Cast is constant-folded, so the ``.ort`` holds that weight as int8 (bigger
  than the ``.onnx``, same kernels and speed).

The check before anything is kept: the ``.ort`` is loaded by ONNX Runtime with no further graph
optimization (as a minimal build runs it) and must give outputs byte-for-byte equal to the
``.onnx`` run with the conversion's own optimization settings, on a seeded standard-normal
input of batch 1 (every symbolic dimension set to 1). Against the ``.onnx`` with no
optimizations (a float reference) the difference is measured and recorded, not required to be
zero: fused integer kernels and float emulation of QDQ may round differently.

ONNX Runtime writes the ``.ort`` flatbuffer in hash-map order: converting the same model twice
gives equivalent files with different bytes, so the manifest's sha256 identifies one build.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hawq_onnx.errors import HawqError

log = logging.getLogger(__name__)

CONVERTER = "onnxruntime.tools.convert_onnx_models_to_ort"
OPTIMIZATION_STYLE = "Fixed"
OPTIMIZATION_LEVEL = "all"
LEVEL_VARIABLE = "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"
# What the converter does when no --target_platform is given (see its source): generic CPU.
DISABLED_OPTIMIZERS = ["NchwcTransformer"]
SESSION_CONFIG = {"session.qdqisint8allowed": "0"}

CHECK_SEED = 0


def _ort_tools():
    """onnxruntime.tools' converter and ORT-format reader, imported without their side effects.

    Importing them calls ``logging.basicConfig`` (a handler on the root logger that would print
    every library's log records in its format); the root logger's handlers are put back.
    """
    root = logging.getLogger()
    saved = root.handlers[:]
    try:
        from onnxruntime.tools import convert_onnx_models_to_ort as converter
        from onnxruntime.tools.ort_format_model import OrtFormatModelProcessor
    finally:
        root.handlers[:] = saved
    return converter, OrtFormatModelProcessor


@contextlib.contextmanager
def _environment(name: str, value: str):
    """The converter reads its optimization level from the environment; pin it for one call."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def convert_to_ort(onnx_path: Path, work_dir: Path) -> tuple[Path, Path]:
    """Run ONNX Runtime's converter on ``onnx_path``; returns (the .ort, the operators config)."""
    import onnxruntime as ort

    converter, _ = _ort_tools()
    out_dir = work_dir / "converted"
    printed = io.StringIO()  # the converter prints its progress
    # Its sessions log through ONNX Runtime's default logger, straight to the terminal: a failure
    # becomes our one-line error below, and its warnings are not the user's business.
    ort.set_default_logger_severity(4)
    try:
        with _environment(LEVEL_VARIABLE, OPTIMIZATION_LEVEL), contextlib.redirect_stdout(printed):
            converter.convert_onnx_models_to_ort(
                onnx_path, output_dir=out_dir, optimization_styles=[converter.OptimizationStyle[OPTIMIZATION_STYLE]],
                target_platform=None, enable_type_reduction=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise HawqError(f"ONNX Runtime could not convert the model to ORT format: {first[:400]}") from None
    finally:
        ort.set_default_logger_severity(3)
        log.debug("converter output:\n%s", printed.getvalue())
    ort_path = out_dir / f"{onnx_path.stem}.ort"
    config_path = out_dir / f"{onnx_path.stem}.required_operators.config"
    if not ort_path.is_file() or not config_path.is_file():
        raise HawqError(f"ONNX Runtime's converter wrote no {ort_path.name} or {config_path.name}: "
                        f"{printed.getvalue().strip()[-300:]}")
    return ort_path, config_path


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else exc.__class__.__name__


def _session(model: Path, level, ort_format: bool, use_conversion_settings: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 4  # fatal only: a failure becomes our one-line error, not a log line too
    so.graph_optimization_level = level
    if ort_format:
        so.add_session_config_entry("session.load_model_format", "ORT")
    disabled = None
    if use_conversion_settings:
        for key, value in SESSION_CONFIG.items():
            so.add_session_config_entry(key, value)
        disabled = DISABLED_OPTIMIZERS
    return ort.InferenceSession(str(model), sess_options=so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled)


def sample_inputs(session, seed: int = CHECK_SEED) -> dict[str, np.ndarray]:
    """A seeded random input per model input: batch 1, every symbolic dimension 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
        kind = arg.type  # 'tensor(float)'
        if kind in ("tensor(float)", "tensor(double)", "tensor(float16)"):
            dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}[kind]
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif kind == "tensor(bool)":
            feeds[arg.name] = rng.integers(0, 2, shape).astype(np.bool_)
        elif kind in ("tensor(int64)", "tensor(int32)", "tensor(int16)", "tensor(uint16)", "tensor(int8)",
                      "tensor(uint8)"):
            dtype = np.dtype(kind[len("tensor("):-1])
            feeds[arg.name] = rng.integers(0, 10, shape).astype(dtype)
        else:
            raise HawqError(f"cannot make a sample input for {arg.name} of type {kind}")
    return feeds


SUB_BYTE_TYPES = {getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "INT2", "UINT2")
                  if hasattr(onnx.TensorProto, name)}


def _sub_byte_hint(onnx_path: Path) -> str:
    """ORT format (v5) has no 4-bit or 2-bit tensor type: say so when that is the likely cause."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    if any(t.data_type in SUB_BYTE_TYPES for t in model.graph.initializer):
        return ("; the ORT format cannot hold INT4/INT2 tensors that stay in the optimized graph (a 4-bit "
                "weight read directly by DequantizeLinear): export with Cast to INT8 before DequantizeLinear, "
                "which the conversion folds")
    return ""


def check_ort_matches(onnx_path: Path, ort_path: Path) -> dict[str, Any]:
    """Load the .ort as a minimal build would and compare it with the .onnx on a sample input."""
    import onnxruntime as ort

    level = ort.GraphOptimizationLevel
    try:
        ort_session = _session(ort_path, level.ORT_DISABLE_ALL, ort_format=True, use_conversion_settings=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise HawqError(f"ONNX Runtime cannot load the converted .ort model: {first[:300].rstrip('.')}"
                        f"{_sub_byte_hint(onnx_path)}") from None
    try:  # the .onnx passed the checker, and can still fail in ONNX Runtime (a bad attribute value)
        reference = _session(onnx_path, level.ORT_ENABLE_ALL, ort_format=False, use_conversion_settings=True)
        unoptimized = _session(onnx_path, level.ORT_DISABLE_ALL, ort_format=False, use_conversion_settings=False)
    except Exception as exc:
        raise HawqError(f"ONNX Runtime cannot load the model: {_first_line(exc)}") from None
    feeds = sample_inputs(reference)
    ort_io = ([(i.name, i.type) for i in ort_session.get_inputs()], [o.name for o in ort_session.get_outputs()])
    ref_io = ([(i.name, i.type) for i in reference.get_inputs()], [o.name for o in reference.get_outputs()])
    if ort_io != ref_io:
        raise HawqError(f"the .ort model's inputs/outputs {ort_io} differ from the .onnx model's {ref_io}")
    try:
        got = ort_session.run(None, feeds)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise HawqError(f"the converted .ort model fails to run on a sample input: {first[:300]}") from None
    try:
        want = reference.run(None, feeds)
        plain = unoptimized.run(None, feeds)
    except Exception as exc:
        raise HawqError(f"the model fails to run in ONNX Runtime on a sample input: {_first_line(exc)}") from None
    names = ref_io[1]
    max_diff = 0.0
    for name, g, w, p in zip(names, got, want, plain):
        if g.dtype != w.dtype or g.shape != w.shape or g.tobytes() != w.tobytes():
            detail = (f"max |diff| {float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))):.3g}"
                      if g.shape == w.shape else f"shape {g.shape} vs {w.shape}")
            raise HawqError(f"the .ort model's output {name} differs from the .onnx model's ({detail}); "
                            "the conversion changed the model")
        if p.shape == g.shape and np.issubdtype(g.dtype, np.number):
            max_diff = max(max_diff, float(np.max(np.abs(g.astype(np.float64) - p.astype(np.float64)), initial=0.0)))
    return {
        "input": {name: list(a.shape) for name, a in feeds.items()},
        "input_distribution": ("standard normal" if all(a.dtype.kind == "f" for a in feeds.values())
                               else "seeded random"),
        "seed": CHECK_SEED,
        "reference": "the .onnx in ONNX Runtime with the conversion's graph optimizations",
        "ort_session": "the .ort with graph optimizations disabled (as a minimal build runs it)",
        "bitwise_equal": True,
        "max_abs_diff_vs_unoptimized_onnx": max_diff,
    }


def read_operator_config(path: Path) -> set[tuple[str, int, str]]:
    """(domain, since_version, op_type) for every operator line of a required-operators config."""
    ops = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        domain, opset, names = line.split(";", 2)
        ops.update((domain, int(opset), name) for name in names.split(",") if name)
    return ops


def ort_model_operators(ort_path: Path) -> set[tuple[str, int, str]]:
    """(domain, since_version, op_type) of every node in an ORT-format model, subgraphs included."""
    _, OrtFormatModelProcessor = _ort_tools()
    required: dict[str, dict[int, set[str]]] = {}
    try:
        OrtFormatModelProcessor(str(ort_path), required, None).process()
    except Exception as exc:
        raise HawqError(f"cannot read the operators of the .ort model: {exc.__class__.__name__}: {exc}") from None
    return {(domain, opset, op) for domain, by_opset in required.items() for opset, names in by_opset.items()
            for op in names}


def ort_initializer_bytes(ort_path: Path) -> int | None:
    """The raw bytes of an ORT-format model's weights; None if this ONNX Runtime's reader cannot say.

    The flatbuffer reader is ONNX Runtime's own (its tools package): a release that moves it costs
    the size explanation only, never the bundle.
    """
    _ort_tools()  # its import side effects, undone
    try:
        from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

        data = ort_path.read_bytes()
        graph = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(data, 0).Model().Graph()
        return sum(graph.Initializers(i).RawDataLength() for i in range(graph.InitializersLength()))
    except Exception as exc:  # a reader of another release: any failure only drops the figure
        log.debug("cannot read the .ort's initializers: %s", exc)
        return None
