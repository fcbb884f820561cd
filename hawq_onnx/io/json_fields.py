"""Typed reading of the JSON records hawq-onnx writes, for the ``from_json`` of its result types.

Every failure is a :class:`ValueError` whose message names the key and what was wrong, so that a
loader can wrap it into one :class:`~hawq_onnx.errors.HawqError` line naming its file; nothing
malformed gets into a dataclass, where it would fail far later (in a report, a sum) as a traceback.
"""

from __future__ import annotations

import math
from typing import Any, Callable, TypeVar

T = TypeVar("T")

# kind -> (check, converted value, what the message calls it)
_KINDS: dict[str, tuple[Callable[[Any], bool], Callable[[Any], Any], str]] = {
    # bool is an int to Python but never a count or a figure in a record
    "int": (lambda x: isinstance(x, int) and not isinstance(x, bool), int, "an integer"),
    "number": (lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x), float,
               "a finite number"),
    "str": (lambda x: isinstance(x, str), str, "a string"),
    "bool": (lambda x: isinstance(x, bool), bool, "true or false"),
    "dict": (lambda x: isinstance(x, dict), dict, "an object"),
    "list": (lambda x: isinstance(x, list), list, "a list"),
}


def value(x: Any, kind: str, name: str, *, optional: bool = False) -> Any:
    """``x`` as ``kind`` (int, number, str, bool, dict, list); None passes where ``optional``."""
    if x is None and optional:
        return None
    check, convert, what = _KINDS[kind]
    try:
        if check(x):
            return convert(x)
    except OverflowError:  # an integer beyond any float, where a number is due
        pass
    raise ValueError(f"{name} is not {what}{' or null' if optional else ''} (got {_short(x)})")


def get(obj: Any, key: str, kind: str, *, optional: bool = False) -> Any:
    """``obj[key]`` as ``kind``; a missing key is an error even where null is allowed, since
    ``to_json`` always writes every key."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object holding {key!r}, got {_short(obj)}")
    if key not in obj:
        raise ValueError(f"the key {key!r} is missing")
    return value(obj[key], kind, repr(key), optional=optional)


def mapping(x: Any, name: str, read: Callable[[Any], T], *, int_keys: bool = False) -> dict:
    """``x``, an object whose values are each read by ``read``; its keys as ints where ``int_keys``
    (JSON keys are strings: batch sizes are written as "1", "64")."""
    return {_key(k, name, int_keys): read(v) for k, v in value(x, "dict", name).items()}


def table(obj: Any, key: str, kind: str, *, int_keys: bool = False) -> dict:
    """``obj[key]``, an object whose values are all ``kind``."""
    return {_key(k, key, int_keys): value(v, kind, f"{key}[{k!r}]") for k, v in get(obj, key, "dict").items()}


def objects(obj: Any, key: str, read: Callable[[Any], T], *, int_keys: bool = False) -> dict:
    """``obj[key]``, an object of records, each read by ``read``."""
    return mapping(get(obj, key, "dict"), repr(key), read, int_keys=int_keys)


def items(obj: Any, key: str, read: Callable[[Any], T]) -> list:
    """``obj[key]``, a list of records, each read by ``read``."""
    return [read(x) for x in get(obj, key, "list")]


def _key(k: str, key: str, as_int: bool) -> Any:
    if not as_int:
        return k
    if not (k.isascii() and k.isdigit()):
        raise ValueError(f"{key} has the key {k!r}, not a whole number")
    return int(k)


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."
