"""The layout shows the pipeline: imports point down the stage order only, and none form a cycle.

Every ``import`` in the package counts, those inside functions too: a deferred import is still a
dependency, and a cycle through one is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folders of the installed package (passes/ and models/ install as hawq_onnx.passes/.models).
SOURCES = {"hawq_onnx": ROOT / "hawq_onnx", "hawq_onnx.passes": ROOT / "passes", "hawq_onnx.models": ROOT / "models"}
# Lower levels are imported by higher ones, never the other way; one level may not import another
# of the same number unless it is the same group.
LEVELS = {
    "errors": 0, "models": 0, "options": 0.5,
    "core": 1,
    "passes": 2,
    "io": 3,
    "sources": 4,
    "sensitivity": 5,
    "allocation": 6,
    "qat": 7,
    "onnx_export": 8,
    "validation": 9,
    "deploy": 10,
    "results": 11,
    "preparation": 11.5,
    "api": 12,
    "pipeline": 13,
    "cli": 14,
    "__init__": 15,
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if package == "hawq_onnx" and parts and parts[0] in ("passes", "models"):
                continue
            found[name] = path
    return found


MODULES = _modules()


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{a.name}" for a in node.names]  # the module itself where a.name is not one
        else:
            continue
        for name in names:
            # The longest known module the name starts with: `from hawq_onnx.qat import fake_quant`.
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and name.startswith("hawq_onnx"):
                out.add(name)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_module_has_a_level():
    assert {_group(m) for m in MODULES} <= set(LEVELS), {_group(m) for m in MODULES} - set(LEVELS)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    mine = _group(module)
    upward = [dep for dep in GRAPH[module]
              if _group(dep) != mine and LEVELS[_group(dep)] >= LEVELS[mine]]
    assert not upward, f"{module} imports {upward}: a module may import only lower levels ({LEVELS})"


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(GRAPH[m]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_the_graph_sees_imports():
    """The checks above would pass on an empty graph: make sure the parser finds real edges."""
    assert "hawq_onnx.core.grid" in GRAPH["hawq_onnx.qat.fake_quant"]
    assert "hawq_onnx.qat.fake_quant" in GRAPH["hawq_onnx.qat.region_grids"]
    assert "hawq_onnx.passes.graph_edit" in GRAPH["hawq_onnx.passes.integer_pad"]
