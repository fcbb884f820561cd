"""Fuzz the commands that read sensitivity.json, plan.json and validation reports with broken files.

    python fuzz/fuzz_json.py [--cases 3000] [--seed 0] [--timeout 30] [--targets allocate,export,finetune,package]

Seeds: the digits CNN's real sensitivity.json, plan.json, calibrated plan (``seed_artifacts.py``)
and validation report. Targets, through the command line:

- ``allocate --sensitivity BROKEN --budget 6x``: a plan written must load;
- ``export --plan BROKEN`` (a calibrated plan): a model written must pass the checker and load
  in ONNX Runtime;
- ``finetune --plan BROKEN --order ptq``: quantized.pt and its plan must load;
- ``package model.qdq.onnx --report BROKEN`` (a `validate --json` report): a bundle written must
  read back.

Counts per target as in ``harness.py``; exit status 1 when anything but ok/clean occurred.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Report, fuzz_main, run_cases, run_cli  # noqa: E402
from json_mutations import mutate  # noqa: E402
from seed_artifacts import Artifacts  # noqa: E402

TARGETS = ("allocate", "export", "finetune", "package")


def validation_report(art: Artifacts) -> Path:
    """report.json of `validate` on the artefacts (made once, beside them)."""
    report = art.folder / "report.json"
    if not report.exists():
        run_cli(["validate", "--float", str(art.float_onnx), "--quant", str(art.qdq_onnx), "--data", "digits",
                 "--model", "digits-cnn", "--runs", "0", "--limit", "40", "--json", str(report)], [report],
                art.folder)
    return report


def seed_file(art: Artifacts, target: str) -> Path:
    if target == "package":
        return validation_report(art)
    return {"allocate": art.sensitivity, "export": art.calibrated_plan, "finetune": art.plan}[target]


def run_target(target: str, path: Path, art: Artifacts) -> str:
    """One broken file through one command, in a fresh output folder beside it."""
    out = Path(tempfile.mkdtemp(prefix="out-", dir=path.parent))
    if target == "allocate":
        from hawq_onnx.io.plan import load_plan

        plan = out / "plan.json"
        return run_cli(["allocate", "--sensitivity", str(path), "--budget", "6x", "--out", str(plan)], [plan], out,
                       lambda: load_plan(plan))
    if target == "export":
        from hawq_onnx.core.ort_session import open_session

        model = out / "q.onnx"
        return run_cli(["export", "--plan", str(path), "--out", str(model)], [model], out,
                       lambda: open_session(model))
    if target == "finetune":
        from hawq_onnx.io.plan import load_plan
        from hawq_onnx.io.quantized_checkpoint import load_quantized

        q, p = out / "q.pt", out / "q.plan.json"
        return run_cli(["finetune", "--plan", str(path), "--order", "ptq", "--out", str(q)], [q, p], out,
                       lambda: (load_quantized(q), load_plan(p)))
    if target == "package":
        from hawq_onnx.deploy.bundle import read_bundle

        bundle = out / "bundle"
        return run_cli(["package", str(art.qdq_onnx), "--report", str(path), "--out", str(bundle)], [bundle], out,
                       lambda: read_bundle(bundle))
    raise ValueError(target)


def cases(seed: bytes, count: int, rng: np.random.Generator):
    for _ in range(count):
        yield mutate(seed, rng)


def fuzz(target: str, art: Artifacts, count: int, seed: int, timeout: float, forked: bool = True) -> Report:
    rng = np.random.default_rng(seed)
    data = seed_file(art, target).read_bytes()
    return run_cases(cases(data, count, rng), lambda p: run_target(target, p, art), timeout=timeout, suffix=".json",
                     forked=forked)


if __name__ == "__main__":
    fuzz_main(TARGETS, fuzz, default_timeout=30.0)
