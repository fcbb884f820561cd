"""Fuzz `validate` and `package` with thousands of broken ONNX models, through the command line.

    python fuzz/fuzz_onnx_cli.py [--cases 3000] [--seed 0] [--timeout 60] [--targets validate,package]

`fuzz_onnx.py` covers `inspect` and the ONNX Runtime loading path as library calls; this one
runs whole commands on the mutated files (``onnx_mutations.py``) of the digits CNN's float and
quantized models, and checks what a user sees (``harness.py``): exit 0 with complete outputs,
or exit 2 with one error line and no output at all.

- ``validate --float F --quant Q --data digits --runs 0 --limit 40 --json out/r.json``: even
  cases break F (the quantized model intact), odd cases break Q; a report written must parse.
- ``package M --out out/bundle``: M is a broken float or quantized model; a bundle written
  must read back (``bundle.read_bundle`` checks every file against the manifest).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Report, fuzz_main, run_cases, run_cli  # noqa: E402
from onnx_mutations import mutate  # noqa: E402
from seed_artifacts import Artifacts  # noqa: E402

TARGETS = ("validate", "package")


def run_validate(art: Artifacts, path: Path, broken_float: bool) -> str:
    out = Path(tempfile.mkdtemp(prefix="out-", dir=path.parent))
    report = out / "r.json"
    float_path, quant_path = (path, art.qdq_onnx) if broken_float else (art.float_onnx, path)
    args = ["validate", "--float", str(float_path), "--quant", str(quant_path), "--data", "digits", "--runs", "0",
            "--limit", "40", "--json", str(report)]
    return run_cli(args, [report], out, lambda: json.loads(report.read_text())["models"]["quantized"])


def run_package(path: Path) -> str:
    from hawq_onnx.deploy.bundle import read_bundle

    out = Path(tempfile.mkdtemp(prefix="out-", dir=path.parent))
    bundle = out / "bundle"
    return run_cli(["package", str(path), "--out", str(bundle)], [bundle], out, lambda: read_bundle(bundle))


def fuzz(target: str, art: Artifacts, count: int, seed: int, timeout: float, forked: bool = True) -> Report:
    rng = np.random.default_rng(seed)
    seeds = [art.float_onnx.read_bytes(), art.qdq_onnx.read_bytes()]
    cases = (mutate(seeds[i % 2], rng) for i in range(count))

    def run_one(path: Path) -> str:
        if target == "validate":
            index = int(path.stem.removeprefix("case"))  # harness names the files case<i>
            return run_validate(art, path, broken_float=index % 2 == 0)
        return run_package(path)

    return run_cases(cases, run_one, timeout=timeout, suffix=".onnx", forked=forked)


if __name__ == "__main__":
    fuzz_main(TARGETS, fuzz, default_timeout=60.0)
