"""What each file of a bundle costs on disk, and why the ``.ort`` outweighs the ``.onnx`` it came from.

A bundle is shipped to devices where every kilobyte is paid for, so ``package`` says what each
member takes and what it is there for. The ``.ort`` is usually the bulk and often larger than
the ``.onnx``: the ORT format has no 4-bit or 2-bit tensor type, so packed INT4/INT2 weights are
stored as int8, and ONNX Runtime's serializer keeps a type record for every tensor of the graph
it optimized, those that its QDQ fusions removed included. Both are ONNX Runtime's format, not
something a bundle can leave out; :func:`ort_size_note` measures them so the user is told.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from hawq_onnx.deploy.bundle import MANIFEST_NAME, ROLE_ONNX, ROLE_OPERATORS_CONFIG, ROLE_ORT
from hawq_onnx.deploy.ort_conversion import SUB_BYTE_TYPES, ort_initializer_bytes

ROLE_MANIFEST = "manifest"
PURPOSES = {
    ROLE_ORT: "the model a minimal ONNX Runtime build loads",
    ROLE_OPERATORS_CONFIG: "the operators that build must include",
    ROLE_MANIFEST: "inputs, outputs, preprocessing, per-layer precision, checksums",
    ROLE_ONNX: "the source model, for a full ONNX Runtime or a new conversion",
}


@dataclass(frozen=True)
class FileCost:
    name: str
    role: str
    bytes: int  # as stored: the file's size in a folder, its compressed size in a .zip
    share: float  # of the bundle's bytes on disk (a .zip's headers take the rest)
    purpose: str


def stored_sizes(dest: Path, as_zip: bool, sizes: dict[str, int]) -> tuple[dict[str, int], int]:
    """Each member's bytes as stored, and the whole bundle's bytes on disk."""
    if not as_zip:
        return dict(sizes), sum(sizes.values())
    with zipfile.ZipFile(dest) as zf:
        stored = {info.filename: info.compress_size for info in zf.infolist()}
    return stored, dest.stat().st_size


def file_costs(stored: dict[str, int], roles: dict[str, str], total: int) -> list[FileCost]:
    """The members, largest first; the manifest's role is implied by its name."""
    costs = []
    for name, size in stored.items():
        role = ROLE_MANIFEST if name == MANIFEST_NAME else roles[name]
        costs.append(FileCost(name, role, size, size / total if total else 0.0, PURPOSES[role]))
    return sorted(costs, key=lambda c: (-c.bytes, c.name))


def _initializer_bytes(model: onnx.ModelProto) -> tuple[int, bool]:
    """Weight bytes as the .onnx stores them, and whether any are packed 4-bit or 2-bit."""
    total, sub_byte = 0, False
    for t in model.graph.initializer:
        total += len(t.raw_data) if t.HasField("raw_data") else t.ByteSize()
        sub_byte = sub_byte or t.data_type in SUB_BYTE_TYPES
    return total, sub_byte


def ort_size_note(model: onnx.ModelProto, onnx_bytes: int, ort_name: str, ort_path: Path) -> str | None:
    """One sentence on why the .ort is larger than the .onnx, with its figures; None when it is not."""
    ort_bytes = ort_path.stat().st_size
    if ort_bytes <= onnx_bytes:
        return None
    onnx_weights, sub_byte = _initializer_bytes(model)
    ort_weights = ort_initializer_bytes(ort_path)
    ratio = f"{ort_name} is {ort_bytes / onnx_bytes:.1f}x the {onnx_bytes:,}-byte .onnx"
    if ort_weights is None:  # an ORT release whose format reader moved: say what is known
        return f"{ratio}: the ORT format stores the optimized graph with a type record for every tensor"
    widened = " (the ORT format has no 4- or 2-bit type: packed weights are stored as int8)" if sub_byte else ""
    return (f"{ratio}: its weights take {ort_weights:,} bytes against {onnx_weights:,}{widened}, and "
            f"{ort_bytes - ort_weights:,} bytes are the optimized graph with a type record for every tensor, "
            "those its fusions removed included")
