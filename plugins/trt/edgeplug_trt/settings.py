"""The trt plugin's options, declared once: the core parses `-o trt.KEY=VALUE` and `[trt]` tables into
`TrtSettings`, checks types, choices and bounds, and hands the instance to the plugin as `ctx.settings`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgeplug import option

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class TrtSettings:
    """How the engine is built. The min/opt/max shapes are `NAME:1x3x224x224` items (profiles.py parses them
    and checks them against the model's inputs)."""

    precision: Literal["fp32", "fp16", "int8"] = option(
        "fp32",
        "engine precision; int8 needs a symmetric s8 Q/DQ model (from the input, or from an earlier step "
        "that produces int8 Q/DQ)",
    )
    # option() returns a dataclasses.field (RUF009 cannot see that)
    min_shapes: list[str] | None = option(
        None, "optimization profile minimum shapes, NAME:1x3x224x224[,NAME2:...]"
    )
    opt_shapes: list[str] | None = option(
        None, "optimization profile shapes TensorRT tunes for, NAME:1x3x224x224"
    )
    max_shapes: list[str] | None = option(None, "optimization profile maximum shapes, NAME:8x3x224x224")
    max_batch: int = option(
        8, "largest batch of the derived profile when the batch axis is dynamic", minimum=1
    )
    workspace_mb: int = option(1024, "builder workspace memory pool limit in MiB", minimum=1)
    timing_cache: Path | None = option(
        None, "timing cache file, reused across builds (default: the output folder)"
    )
    fold_constants: bool = option(True, "fold constant subgraphs before building (Q/DQ nodes kept)")
    tf32: bool = option(False, "let FP32 layers use TF32 tensor cores (off: FP32 stays FP32)")
    optimization_level: int = option(
        3, "builder optimization level (higher: slower build, faster engine)", minimum=0, maximum=5
    )
