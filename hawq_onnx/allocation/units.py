"""Budgets, BOPs limits, bit widths and pins as text: parsing what the user types, formatting figures.

Budgets: ``13x`` is a compression ratio against the float32 weights of the quantizable layers;
sizes are bytes, with KB, MB, GB powers of 1000 and KiB, MiB, GiB powers of 1024
(``800KB`` = 800,000 bytes, ``1.2MiB`` = 1,258,291 bytes, ``819200`` = 819,200 bytes).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from hawq_onnx.core.grid import ACTIVATION_BITS, WEIGHT_BITS
from hawq_onnx.errors import HawqError

Bits = tuple[int | None, int | None]  # (w_bits, a_bits); None = float

_NUMBER = r"(?P<num>(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[+-]?[0-9]+)?)"
_BYTE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3,
               "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}
_SI = {"": 1, "k": 1000, "m": 1000 ** 2, "g": 1000 ** 3, "t": 1000 ** 4}


# --- parsing and formatting -----------------------------------------------------------------

def _number(text: str, units: Sequence[str], what: str, example: str) -> tuple[Decimal, str]:
    m = re.fullmatch(r"\s*" + _NUMBER + r"\s*(?P<unit>[a-z]*)\s*", text.lower())
    if m is None or m["unit"] not in units:
        raise HawqError(f"{what} {text!r} is not understood; give {example}")
    try:
        value = Decimal(m["num"])
    except InvalidOperation:
        raise HawqError(f"{what} {text!r} is not understood; give {example}") from None
    if not value.is_finite() or value <= 0:
        raise HawqError(f"{what} {text!r} must be a positive number; give {example}")
    return value, m["unit"]


def parse_budget(text: str, float_bytes: int) -> int:
    """Weight budget in bytes from a ratio against float32 (``13x``) or a size (``800KB``).

    A ratio r gives floor(float_bytes / r) bytes, so a plan within it compresses at least r
    times. Sizes: B or no unit = bytes, KB/MB/GB = 10^3/10^6/10^9, KiB/MiB/GiB = 2^10/2^20/2^30,
    case-insensitive; fractions of a byte are dropped.
    """
    example = "a compression ratio against float32 (13x, 13.11x) or a size (800KB, 0.8MB, 1.2MiB, 819200)"
    value, unit = _number(text, ("x", *_BYTE_UNITS), "budget", example)
    if unit == "x":
        if value < 1:
            raise HawqError(f"budget {text} asks for more than the float32 weights ({format_bytes(float_bytes)}); "
                            "give a compression ratio of at least 1x")
        n = math.floor(Decimal(float_bytes) / value)
    else:
        n = math.floor(value * _BYTE_UNITS[unit])
        if n > float_bytes:
            raise HawqError(f"budget {text} ({format_bytes(n)}) is larger than the float32 weights "
                            f"({format_bytes(float_bytes)}); give at most {float_bytes} bytes or a ratio >= 1x")
    if n < 1:
        raise HawqError(f"budget {text} is less than one byte; give a ratio or size the weights can fit")
    return n


def check_budget_text(text: str) -> None:
    """A budget's syntax, before the model's size is known (``parse_budget`` does the rest)."""
    example = "a compression ratio against float32 (13x, 13.11x) or a size (800KB, 0.8MB, 1.2MiB, 819200)"
    value, unit = _number(text, ("x", *_BYTE_UNITS), "budget", example)
    if unit == "x" and value < 1:
        raise HawqError(f"budget {text} asks for more than the float32 weights; give a compression ratio of at "
                        "least 1x")
    if unit != "x" and value * _BYTE_UNITS[unit] < 1:
        raise HawqError(f"budget {text} is less than one byte; give a ratio or size the weights can fit")


def parse_bops(text: str, float_bops: int) -> int:
    """BOPs limit from a count (``3e8``, ``300M``, ``0.3G``; k/M/G/T = 10^3..10^12,
    case-insensitive) or a reduction against float 32x32 BOPs (``40x`` = float BOPs / 40)."""
    example = "a count (0.3G, 300M, 3e8) or a reduction against float 32x32 BOPs (40x)"
    value, unit = _number(text, ("x", *_SI), "BOPs limit", example)
    if unit == "x":
        if float_bops <= 0:
            raise HawqError("the sensitivity file has no MACs, so a BOPs limit cannot be given as a ratio")
        return math.floor(Decimal(float_bops) / value)
    return math.floor(value * _SI[unit])


def parse_bits(text: str, allowed: Sequence[int], option: str) -> tuple[int, ...]:
    """``2,4,8`` -> (2, 4, 8), each one of ``allowed``."""
    out = set()
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) not in allowed:
            raise HawqError(f"{option} {text!r}: {part!r} is not one of {', '.join(map(str, allowed))}")
        out.add(int(part))
    return tuple(sorted(out))


def parse_pin(text: str) -> tuple[str, tuple[int, int]]:
    """``LAYER=W/A`` (LAYER may be a glob pattern) -> (LAYER, (W, A))."""
    m = re.fullmatch(r"\s*(?P<layer>[^=\s]+)\s*=\s*(?P<w>[0-9]+)\s*/\s*(?P<a>[0-9]+)\s*", text)
    if m is None:
        raise HawqError(f"--pin {text!r} is not LAYER=W/A (e.g. conv1=8/8)")
    bits = (int(m["w"]), int(m["a"]))
    check_bits((bits[0],), (bits[1],), f"--pin {text}")
    return m["layer"], bits


def format_bytes(n: float, *, up: bool = False) -> str:
    """3 significant digits, KB = 1000 bytes; ``up`` rounds up (for lower bounds a user may type)."""
    for unit, mult in (("GB", 1000 ** 3), ("MB", 1000 ** 2), ("KB", 1000), ("bytes", 1)):
        if n >= mult or unit == "bytes":
            v = n / mult
            decimals = 0 if unit == "bytes" or v >= 100 else 1 if v >= 10 else 2
            q = 10 ** decimals
            v = math.ceil(v * q - 1e-9) / q if up else round(v * q) / q
            return f"{v:.{decimals}f} {unit}"
    raise AssertionError("unreachable")


def format_ratio(r: float, *, down: bool = False) -> str:
    return f"{math.floor(r * 100 + 1e-9) / 100 if down else r:.2f}x"


def format_bits(bits: Bits) -> str:
    w, a = bits
    return "float" if w is None and a is None else f"{'f' if w is None else w}/{'f' if a is None else a}"


def format_bops(n: float, *, up: bool = False) -> str:
    for unit, mult in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1)):
        if n >= mult or unit == "":
            v = n / mult
            return f"{math.ceil(v * 1000 - 1e-9) / 1000 if up else v:.3f}{unit}".replace(".000", "")
    raise AssertionError("unreachable")


def check_bits(w_bits: Sequence[int], a_bits: Sequence[int], where: str) -> None:
    if not w_bits or not a_bits:
        raise HawqError("give at least one weight bit width and one activation bit width")
    for w in w_bits:
        if w not in WEIGHT_BITS:
            raise HawqError(f"{where}: weight bits {w} is not one of {', '.join(map(str, WEIGHT_BITS))}")
    for a in a_bits:
        if a not in ACTIVATION_BITS:
            raise HawqError(f"{where}: activation bits {a} is not one of {', '.join(map(str, ACTIVATION_BITS))}")
