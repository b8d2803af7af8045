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
    """{'machine', 'model', 'flags': [...], 'int8_dot': bool} read from /proc/cpuinfo where it exists."""
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
    x86_dot = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    arm_dot = "asimddp" in flags
    return {
        "machine": machine,
        "model": model,
        "flags": sorted(flags & set(INTERESTING)),
        "int8_dot": x86_dot or arm_dot,
        "vnni": x86_dot,
        "dotprod": arm_dot,
    }
