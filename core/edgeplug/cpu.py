"""What the CPU can do for int8 inference: VNNI on x86, dotprod/i8mm on ARM."""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path
from typing import Any

INTERESTING = (
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
)


@lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """{'machine', 'model', 'flags': [...], 'int8_dot': bool} read from /proc/cpuinfo where it exists, with
    the x86 flags checked against what this process sees through CPUID (see `runtime_checked`)."""
    machine = platform.machine().lower()
    flags: set[str] = set()
    model = platform.processor() or machine
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("flags", "features"):
                flags.update(value.split())
            elif key in ("model name", "cpu model") and value.strip():
                model = value.strip()
    except OSError:
        pass
    flags, hidden = runtime_checked(flags & set(INTERESTING), machine, runtime_features())
    x86_dot = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    arm_dot = "asimddp" in flags
    info: dict[str, Any] = {
        "machine": machine,
        "model": model,
        "flags": sorted(flags),
        "int8_dot": x86_dot or arm_dot,
        "vnni": x86_dot,
        "dotprod": arm_dot,
    }
    if hidden:
        info["hidden_flags"] = sorted(hidden)
    return info


def runtime_features() -> dict[str, bool] | None:
    """The instruction sets this process can use, from CPUID (numpy's dispatch table; None if unreadable)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features
        except ImportError:
            return None
    return dict(features)


def runtime_checked(
    flags: set[str], machine: str, runtime: dict[str, bool] | None
) -> tuple[set[str], set[str]]:
    """/proc/cpuinfo describes the host; an emulator (qemu-x86_64 -cpu Haswell) or a VM that masks features
    runs this process, and onnxruntime's kernels, on less. On x86, a flag CPUID does not confirm is dropped;
    when CPUID hides AVX-512 that /proc shows, the process runs on a masked CPU and AVX-VNNI and AMX, which
    numpy cannot confirm, are dropped too. Returns (flags, dropped)."""
    if runtime is None or machine not in ("x86_64", "amd64", "i686", "x86"):
        return flags, set()
    confirm = {"avx2": "AVX2", "avx512f": "AVX512F", "avx512bw": "AVX512BW", "avx512_vnni": "AVX512VNNI"}
    dropped = {f for f, key in confirm.items() if f in flags and key in runtime and not runtime[key]}
    if "avx512f" in dropped:
        dropped |= flags & {"avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"}  # all need what is masked
    return flags - dropped, dropped
