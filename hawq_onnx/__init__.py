"""hawq-onnx: Hessian-aware mixed-precision quantization (HAWQ) from PyTorch to small, fast ONNX.

    import hawq_onnx as hq
    result = hq.quantize(model, train_loader, eval_data=test_loader, budget="8x", out="runs/my-model")

or stage by stage: ``analyze -> allocate -> finetune -> export -> validate -> package``
(see :mod:`hawq_onnx.api`). Options are the frozen dataclasses of :mod:`hawq_onnx.options`.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

# Where each public name lives. They are imported on first use, so that `import hawq_onnx.cli`
# (every command line) does not pay for torch and onnx before it needs them.
_PUBLIC = {
    **dict.fromkeys(["analyze", "allocate", "finetune", "export", "validate", "package", "inspect", "latency_tables"],
                    "hawq_onnx.api"),
    "LatencyTable": "hawq_onnx.io.latency_table",
    "quantize": "hawq_onnx.pipeline",
    "Sensitivity": "hawq_onnx.io.sensitivity_report",
    "Plan": "hawq_onnx.io.plan",
    **dict.fromkeys(["QuantizedModel", "ExportedModel", "QuantizeResult"], "hawq_onnx.results"),
    "ValidationReport": "hawq_onnx.validation.validate",
    "PackageResult": "hawq_onnx.deploy.package",
    "Bundle": "hawq_onnx.deploy.bundle",
    "Inspection": "hawq_onnx.core.onnx_inspect",
    **dict.fromkeys(["AnalyzeOptions", "AllocateOptions", "FinetuneOptions", "ExportOptions", "ValidateOptions",
                     "QuantizeOptions"], "hawq_onnx.options"),
    **dict.fromkeys(["HawqError", "GateFailure"], "hawq_onnx.errors"),
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports them
    from hawq_onnx.api import (  # noqa: F401
        allocate,
        analyze,
        export,
        finetune,
        inspect,
        latency_tables,
        package,
        validate,
    )
    from hawq_onnx.io.latency_table import LatencyTable  # noqa: F401
    from hawq_onnx.core.onnx_inspect import Inspection  # noqa: F401
    from hawq_onnx.deploy.bundle import Bundle  # noqa: F401
    from hawq_onnx.deploy.package import PackageResult  # noqa: F401
    from hawq_onnx.errors import GateFailure, HawqError  # noqa: F401
    from hawq_onnx.io.plan import Plan  # noqa: F401
    from hawq_onnx.io.sensitivity_report import Sensitivity  # noqa: F401
    from hawq_onnx.options import (  # noqa: F401
        AllocateOptions,
        AnalyzeOptions,
        ExportOptions,
        FinetuneOptions,
        QuantizeOptions,
        ValidateOptions,
    )
    from hawq_onnx.pipeline import quantize  # noqa: F401
    from hawq_onnx.results import ExportedModel, QuantizedModel, QuantizeResult  # noqa: F401
    from hawq_onnx.validation.validate import ValidationReport  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'hawq_onnx' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


try:
    __version__ = _version("hawq-onnx")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [*_PUBLIC, "__version__"]
