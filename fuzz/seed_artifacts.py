"""Real, small artefacts of every kind hawq-onnx reads, for the robustness tests and fuzzers.

``build_artifacts(folder)`` writes, for the zoo's digits CNN (seconds on one core):

- ``sensitivity.json``: the schema ``analyze`` writes, with each layer's real weight
  perturbations on the BN-folded weights and synthetic curvatures (no Hessian is computed:
  the files only have to be valid, and belong to this model);
- ``plan.json``: ``allocation.allocate`` of that report at 4x;
- ``quantized.pt`` and ``quantized.plan.json``: ``finetune(order="ptq")`` of the plan;
- ``model.float.onnx``: the float export; ``model.qdq.onnx``: the quantized export when the
  exporter is there (else absent);
- ``weights.pt``: the digits CNN's own state_dict, as a user's ``--weights`` file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TRACES = (0.8, 0.05, 0.02, 0.3, 0.01, 0.5, 0.1, 0.4)  # per layer, cycled: any positive numbers


@dataclass
class Artifacts:
    folder: Path
    weights: Path
    sensitivity: Path
    plan: Path
    quantized: Path
    calibrated_plan: Path
    float_onnx: Path
    qdq_onnx: Path | None


def sensitivity_report(loaded):
    """A valid sensitivity report of ``loaded`` (a LoadedModel): real perturbations, synthetic traces."""
    from hawq_onnx.core.bn_fold import fold_copy
    from hawq_onnx.core.grid import WEIGHT_BITS, weight_perturbation
    from hawq_onnx.core.layers import describe_layers
    from hawq_onnx.io.sensitivity_report import LayerSensitivity, Sensitivity
    from hawq_onnx.sources.model import model_fingerprint

    folded = fold_copy(loaded.module, loaded.input_shape)
    modules = dict(folded.named_modules())
    layers = []
    for k, info in enumerate(describe_layers(folded, loaded.input_shape)):
        w = modules[info.name].weight.detach().numpy()
        pert = {m: {str(b): weight_perturbation(w, b, m) for b in WEIGHT_BITS} for m in ("maxabs", "mse")}
        trace = TRACES[k % len(TRACES)] * info.params
        layers.append(LayerSensitivity(
            name=info.name, kind=info.kind, params=info.params, out_channels=info.out_channels, macs=info.macs,
            top_eigenvalue=10 * TRACES[k % len(TRACES)], eigen_iterations=5, eigen_converged=True, trace=trace,
            trace_std_error=0.01 * trace, trace_probes=8, trace_converged=True, seconds=0.0, perturbation=pert))
    return Sensitivity(model=loaded.reference, fingerprint=model_fingerprint(folded), data="digits",
                             settings={"synthetic": True}, layers=layers,
                             float_weight_bytes=4 * sum(layer.params for layer in layers))


def build_artifacts(folder: str | Path, budget: str = "4x", qdq: bool = True) -> Artifacts:
    import torch

    from hawq_onnx.allocation.solve import allocate
    from hawq_onnx.core.bn_fold import fold_copy
    from hawq_onnx.io.atomic import sha256_file
    from hawq_onnx.io.plan import save_plan
    from hawq_onnx.io.sensitivity_report import save_sensitivity
    from hawq_onnx.onnx_export.float_onnx import float_onnx, save_onnx
    from hawq_onnx.qat.checkpoint import save_quantized
    from hawq_onnx.qat.finetune import finetune
    from hawq_onnx.sources.data import load_data
    from hawq_onnx.sources.model import load_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    loaded = load_model("digits-cnn")
    dataset = load_data("digits", loaded.spec)
    weights = folder / "weights.pt"
    torch.save(loaded.module.state_dict(), weights)
    report = sensitivity_report(loaded)
    sens = save_sensitivity(report, folder / "sensitivity.json")
    plan = allocate(report, budget, w_bits=(2, 4, 8), a_bits=(4, 8), sensitivity_sha256=sha256_file(sens))
    plan_path = save_plan(plan, folder / "plan.json")
    # minmax: the quickest observer; any calibrated plan will do here.
    result = finetune(loaded, plan, dataset, order="ptq", observer="minmax")
    quantized = save_quantized(result, folder / "quantized.pt")
    calibrated = save_plan(result.plan, folder / "quantized.plan.json")

    folded = fold_copy(loaded.module, loaded.input_shape)  # = quantized.pt's weights: ptq trains nothing
    proto = float_onnx(folded, loaded.input_shape)
    float_path = save_onnx(proto, folder / "model.float.onnx")
    qdq_path = None
    if qdq:
        from hawq_onnx.onnx_export.qdq import quantize_onnx

        exported = quantize_onnx(folded, loaded.input_shape, result.plan, dataset.calib.x, float_model=proto)
        qdq_path = save_onnx(exported.model, folder / "model.qdq.onnx")
    return Artifacts(folder, weights, Path(sens), Path(plan_path), Path(quantized), Path(calibrated),
                     Path(float_path), None if qdq_path is None else Path(qdq_path))


_CACHE: dict[str, Artifacts] = {}


def cached_artifacts() -> Artifacts:
    """``build_artifacts`` once per process (the test modules and fuzzers share it); read-only."""
    import atexit
    import shutil
    import tempfile

    if "digits" not in _CACHE:
        tmp = tempfile.mkdtemp(prefix="hawq-seed-artifacts-")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        _CACHE["digits"] = build_artifacts(Path(tmp) / "digits")
    return _CACHE["digits"]


def copy_artifacts(folder: str | Path) -> Artifacts:
    """The cached artefacts, copied into ``folder`` (a test may break or hash its copy)."""
    import shutil

    src = cached_artifacts()
    folder = Path(folder)
    shutil.copytree(src.folder, folder)
    moved = {k: (folder / v.name if isinstance(v, Path) else v) for k, v in vars(src).items() if k != "folder"}
    return Artifacts(folder=folder, **moved)


if __name__ == "__main__":
    import sys
    import time

    start = time.perf_counter()
    a = build_artifacts(sys.argv[1] if len(sys.argv) > 1 else "seed-artifacts")
    print(f"{a} in {time.perf_counter() - start:.1f} s")
