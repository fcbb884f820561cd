"""pyproject.toml's promises: every folder that installs is declared, and the declared minimum
versions can read and run what hawq-onnx writes.

The package list is explicit (passes/ and models/ are remapped, which discovery cannot do), so a
new subpackage or data folder left out of it would install silently without its files, or make
setuptools print its "Package would be ignored" warning on every install.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from hawq_onnx.passes.convert_opset import OPSET_FOR_BITS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
# The lowest onnxruntime that loads and runs an opset-25 model with INT2 weights: 1.23.2 refuses
# it, 1.24.1 (the first 1.24 on PyPI) runs `quantize` and the README example (README, Requirements).
ONNXRUNTIME_MEASURED = Version("1.24.1")


def _minimum(name: str) -> Version:
    for spec in PYPROJECT["project"]["dependencies"]:
        req = Requirement(spec)
        if req.name == name:
            floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
            assert floors, f"{name} has no declared minimum"
            return max(floors)
    raise AssertionError(f"{name} is not a dependency")


def _installed_folders() -> dict[str, Path]:
    """Every source folder holding files, named as the package it installs as."""
    folders = {}
    for package, source in SETUPTOOLS["package-dir"].items():
        for folder in [ROOT / source, *(p for p in (ROOT / source).rglob("*") if p.is_dir())]:
            if folder.name == "__pycache__" or not any(f.is_file() for f in folder.iterdir() if f.suffix != ".pyc"):
                continue
            rel = folder.relative_to(ROOT / source).parts
            if package == "hawq_onnx" and rel and rel[0] in ("passes", "models"):
                continue
            folders[".".join([package, *rel])] = folder
    return folders


def test_every_installed_folder_is_a_declared_package():
    declared = set(SETUPTOOLS["packages"])
    folders = _installed_folders()
    assert sorted(set(folders) - declared) == []
    assert sorted(declared - set(folders)) == []


def test_data_files_are_package_data():
    """Folders without Python files (the zoo's weights) install only through package-data."""
    package_data = SETUPTOOLS["package-data"]
    for package, folder in _installed_folders().items():
        data = [f for f in folder.iterdir() if f.is_file() and f.suffix not in (".py", ".pyc")]
        for f in data:
            patterns = package_data.get(package, [])
            assert any(re.fullmatch(p.replace(".", r"\.").replace("*", "[^/]*"), f.name) for p in patterns), \
                f"{f.relative_to(ROOT)} is not package data of {package}"


def test_declared_onnx_minimum_knows_the_opset_hawq_onnx_writes():
    """onnx's release table: the first release with the opset INT2 weights need (25: onnx 1.20)."""
    import onnx.helper

    needed = max(OPSET_FOR_BITS.values())
    first = min(Version(release) for release, _, opset, *_ in onnx.helper.VERSION_TABLE if opset >= needed)
    assert _minimum("onnx") >= first


def test_declared_onnxruntime_minimum_runs_what_hawq_onnx_writes():
    assert _minimum("onnxruntime") >= ONNXRUNTIME_MEASURED
