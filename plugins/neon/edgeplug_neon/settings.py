"""The neon plugin's options, declared once: the core parses `-o neon.KEY=VALUE` and `[neon]` tables into
`NeonSettings`, checks types, choices and bounds, and hands the instance to the plugin as `ctx.settings`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgeplug import option


@dataclass(frozen=True)
class NeonSettings:
    """Which builds to make, with which compilers, and how the aarch64 build is checked under qemu."""

    target: Literal["aarch64", "host", "both"] = option("both", "which builds to make: aarch64, host or both")
    verify: bool = option(
        True,
        "run the aarch64 build under qemu on the validation inputs and compare it with the model (the core "
        "checks the host library itself)",
    )
    qemu_samples: int = option(
        64,
        "at most this many validation samples run under qemu (emulation is slow); 0 = all of them",
        minimum=0,
    )
    dotprod: bool = option(True, "build aarch64 for armv8.2-a+dotprod (int8 vdotq); false: armv8-a")
    cc: str = option("cc", "host C compiler")
    cross_cc: str = option("aarch64-linux-gnu-gcc", "aarch64 cross compiler")
    int8_min_cosine: float = option(
        0.99,
        "cosine budget used instead of rtol/atol for quantized (QDQ) models",
        minimum=-1.0,
        maximum=1.0,
    )
    # float kernels reorder sums (blocked GEMM, FMA): not bit-exact with onnxruntime
    rtol: float = option(1e-3, "relative tolerance of each build against the model (float32 models)")
    atol: float = option(1e-4, "absolute tolerance of each build against the model (float32 models)")
