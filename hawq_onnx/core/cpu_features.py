"""What this machine's CPU can do that decides how an int8 layer should be stored.

ONNX Runtime's x86 integer kernels multiply uint8 activations by int8 weights. With VNNI
(``vpdpbusd``: AVX-512 VNNI, AVX-VNNI, and AMX machines have it) the products are summed in
int32 and are exact; without it (AVX2, AVX-512 without VNNI) ``vpmaddubsw`` sums pairs into a
saturating int16 first (see ``passes/unsigned_wide_input_weights.py``). ARM CPUs sum in int32.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
# Flags that decide which int8/float kernels ONNX Runtime and OpenVINO dispatch to.
KERNEL_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16",
                          "avx512_bf16", "asimd", "asimddp", "i8mm"})
X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


def _cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@lru_cache(maxsize=1)
def _this_cpu() -> tuple[str, str | None]:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = None
    return platform.machine(), cpuinfo


def int8_sums_exact(machine: str | None = None, cpuinfo: str | None = None) -> bool | None:
    """Whether ONNX Runtime's uint8 x int8 kernels sum exactly on this CPU (or the one described):
    True with VNNI or on a non-x86 CPU, False on x86 without VNNI, None where the x86 flags
    cannot be read."""
    if machine is None:
        machine, cpuinfo = _this_cpu()
    if machine.lower() not in X86:
        return True
    flags = _cpu_flags(cpuinfo or "")
    if not flags:
        return None
    return bool(flags & VNNI_FLAGS)


def fingerprint() -> str:
    """The CPU model and the instruction-set flags int8 kernels dispatch on: equal on machines
    that time int8 layers alike (a cache key, not an identity)."""
    machine, cpuinfo = _this_cpu()
    model = ""
    for line in (cpuinfo or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "CPU part"):
            model = value.strip()
            break
    flags = sorted(_cpu_flags(cpuinfo or "") & KERNEL_FLAGS)
    return f"{machine}|{model}|{','.join(flags)}"


def describe() -> str:
    """One phrase for reports: the machine and whether its int8 sums are exact."""
    exact = int8_sums_exact()
    kind = {True: "int32 int8 sums (VNNI or non-x86)", False: "x86 without VNNI (int16 pair sums)",
            None: "x86, instruction set unknown"}[exact]
    return f"{platform.machine() or 'unknown CPU'}, {kind}"
