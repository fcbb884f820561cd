"""Broken variants of a real JSON artefact (plan.json, sensitivity.json), for the fuzzers.

Structural mutations edit the parsed document at a random place: a key removed, renamed or
added, a value replaced by one of another type or an extreme one (NaN, Inf, 2^70, -1, "", [],
{}, null, true), a number nudged, negated or zeroed, a list element removed, duplicated or
swapped. Textual mutations break the bytes: truncation, flipped bytes, garbage, not UTF-8.
Each takes the document's bytes and a numpy Generator and returns bytes.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import numpy as np

Mutation = Callable[[bytes, np.random.Generator], bytes]

EXTREMES: list[Any] = [None, True, False, 0, -1, 1, 2, 3, 4, 8, 16, 0.5, -0.5, 1e-45, 1e-300, 1e39, 1e308,
                       -1e308, 2 ** 31, 2 ** 63, 2 ** 70, math.nan, math.inf, -math.inf, "", "x", "4", "nan",
                       [], [1], [None], {}, {"a": 1}]


def _places(doc: Any, path: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) into ``doc``, the root included."""
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.extend(_places(v, path + (k,)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.extend(_places(v, path + (i,)))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


FOCUS = "layers"  # most mutations land in the per-layer records, which the commands act on
FOCUS_SHARE = 0.75


def _pick(doc: Any, rng: np.random.Generator, want=None) -> tuple | None:
    places = [p for p in _places(doc) if p and (want is None or want(_get(doc, p)))]
    focused = [p for p in places if p[0] == FOCUS]
    if focused and rng.random() < FOCUS_SHARE:
        places = focused
    return places[int(rng.integers(len(places)))] if places else None


def _structural(fn) -> Mutation:
    def mutation(data: bytes, rng: np.random.Generator) -> bytes:
        doc = json.loads(data)
        fn(doc, rng)
        return json.dumps(doc).encode()
    mutation.__name__ = fn.__name__
    return mutation


@_structural
def replace_value(doc, rng):
    path = _pick(doc, rng)
    if path:
        _get(doc, path[:-1])[path[-1]] = EXTREMES[int(rng.integers(len(EXTREMES)))]


@_structural
def nudge_number(doc, rng):
    path = _pick(doc, rng, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
    if path:
        parent, key = _get(doc, path[:-1]), path[-1]
        v = parent[key]
        op = int(rng.integers(6))
        parent[key] = [-v, 0, v + 1, v - 1, v * 1e6, float(v) + 0.5][op]


@_structural
def remove_key(doc, rng):
    path = _pick(doc, rng)
    if path:
        del _get(doc, path[:-1])[path[-1]]


@_structural
def rename_or_add_key(doc, rng):
    path = _pick(doc, rng, lambda v: isinstance(v, dict))
    target = _get(doc, path) if path else doc
    if not isinstance(target, dict):
        return
    if target and rng.random() < 0.5:
        key = sorted(target)[int(rng.integers(len(target)))]
        target[key + "_x"] = target.pop(key)
    else:
        target["unexpected"] = EXTREMES[int(rng.integers(len(EXTREMES)))]


@_structural
def edit_list(doc, rng):
    path = _pick(doc, rng, lambda v: isinstance(v, list) and v)
    if not path:
        return
    items = _get(doc, path)
    i, j = (int(x) for x in rng.integers(len(items), size=2))
    op = int(rng.integers(4))
    if op == 0:
        del items[i]
    elif op == 1:
        items.insert(i, json.loads(json.dumps(items[j])))
    elif op == 2:
        items[i], items[j] = items[j], items[i]
    else:
        items.clear()


@_structural
def retype_container(doc, rng):
    path = _pick(doc, rng, lambda v: isinstance(v, (dict, list)))
    if path:
        v = _get(doc, path)
        _get(doc, path[:-1])[path[-1]] = list(v.values()) if isinstance(v, dict) else {str(i): x for i, x in enumerate(v)}


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, len(data)))] if data else data


def flip_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    if not data:
        return b"\x00"
    buf = bytearray(data)
    for pos in rng.integers(0, len(buf), int(rng.integers(1, 6))):
        buf[pos] ^= int(rng.integers(1, 256))
    return bytes(buf)


def garbage(data: bytes, rng: np.random.Generator) -> bytes:
    choice = int(rng.integers(4))
    return [b"", b"\xff\xfe\x00{", b"[]", bytes(rng.integers(0, 256, 64, dtype=np.uint8))][choice]


MUTATIONS: dict[str, Mutation] = {
    "replace_value": replace_value,
    "nudge_number": nudge_number,
    "remove_key": remove_key,
    "rename_or_add_key": rename_or_add_key,
    "edit_list": edit_list,
    "retype_container": retype_container,
    "truncate": truncate,
    "flip_bytes": flip_bytes,
    "garbage": garbage,
}
# Mostly structural: a broken file is refused at once; a subtly wrong one goes deeper.
WEIGHTS = {"replace_value": 4, "nudge_number": 4, "remove_key": 2, "rename_or_add_key": 1, "edit_list": 2,
           "retype_container": 1, "truncate": 1, "flip_bytes": 1, "garbage": 0.5}


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One to three mutations (names joined with '+'); a textual one ends the chain."""
    names = sorted(MUTATIONS)
    p = np.array([WEIGHTS[n] for n in names], float)
    chosen = list(rng.choice(names, size=int(rng.integers(1, 4)), p=p / p.sum()))
    applied = []
    for name in chosen:
        try:
            data = MUTATIONS[name](data, rng)
        except (ValueError, UnicodeDecodeError):  # the bytes are no JSON any more: flip instead
            data = flip_bytes(data, rng)
            name = "flip_bytes"
        applied.append(name)
    return "+".join(applied), data
