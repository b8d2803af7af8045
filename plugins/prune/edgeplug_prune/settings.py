"""The prune plugin's options, declared once: the core parses `-o prune.KEY=VALUE` and `[prune]` tables
into `PruneSettings`, checks types, choices and bounds, and hands the instance to the plugin as
`ctx.settings`. Only the structured values (`nm`, `overrides`) are parsed here."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from edgeplug import OptionError, option

DEFAULT_SPARSITY = 0.5
# the largest fraction of weights (or channels) a layer may lose: 1 would remove it whole
MAX_SPARSITY = 0.999
# Pruning changes what the model computes: the default budget only catches a broken result (a trained
# classifier pruned 50% by magnitude keeps its logits' cosine well above 0.9); users tighten it.
DEFAULT_MIN_COSINE = 0.9


@dataclass(frozen=True)
class Override:
    pattern: str
    sparsity: float


@dataclass(frozen=True)
class PruneSettings:
    """The prune options; `sparsity` None means "not given by the user" (0.5, or searched for a budget)."""

    mode: Literal["unstructured", "nm", "structured"] = option(
        "unstructured",
        "unstructured (magnitude), nm (N:M pattern) or structured (remove whole Conv output channels)",
    )
    sparsity: float | None = option(
        None,
        "fraction of weights (of channels when structured) to remove; "
        "default: 0.5, lowered by bisection while it misses the step's budget; with a budget the user "
        "sets (-o prune.min_<metric>, --budget), the highest sparsity that meets it",
        minimum=0.0,
        maximum=MAX_SPARSITY,
    )
    nm: str = option("2:4", "N:M pattern for mode=nm: keep N of every M weights along input channels")
    scope: Literal["layer", "global"] = option(
        "layer", "unstructured: rank magnitudes per layer or globally over all layers"
    )
    reconstruct: bool | None = option(
        None,
        "structured: least-squares reconstruction of the next layers "
        "on calibration data (default: true when --data is a file)",
    )
    storage: Literal["sparse", "dense"] = option(
        "sparse",
        "sparse: store a pruned weight as a sparse tensor where that is "
        "smaller than dense (only when prune is the last step); dense: keep dense",
    )
    criterion: Literal["l1", "l2", "bn"] = option(
        "l1",
        "structured: channel importance, L1 or L2 norm of the filter, or the |gamma| of the BatchNorm after it",
    )
    depthwise_sparsity: float | None = option(
        None,
        "unstructured: sparsity of depthwise convolutions (default: the same as sparsity)",
        minimum=0.0,
        maximum=MAX_SPARSITY,
    )
    skip_first_last: bool = option(True, "spare the first and the last weight layer")
    overrides: list[str] = option(
        [], "per-layer sparsity by name pattern, e.g. conv1*:0.2,fc:0 (0 spares the layer)"
    )
    sensitivity: bool = option(
        False,
        "structured: also measure each channel group's sensitivity (output cosine when only it is pruned)",
    )
    epochs: int = option(2, "Keras models: fine-tuning epochs while pruning with tfmot", minimum=1)
    batch_size: int = option(32, "Keras models: fine-tuning batch size", minimum=1)
    min_cosine: float = option(DEFAULT_MIN_COSINE, "smallest cosine similarity of the outputs allowed")
    # the whole-output cosine is blind to a detector whose score rows moved while its boxes kept the cosine:
    # YOLOv8n at 50% kept cosine 0.985 and lost every box (mAP 0.000); one score row moved by 1.68 of its range
    max_slice_error: float = option(
        0.5,
        "largest error of any output slice (row, channel, class) relative to its reference range",
        minimum=0.0,
    )

    def checked(self) -> PruneSettings:
        """Parse the structured values once, so that a bad one is refused before any work."""
        parse_nm(self.nm)
        parse_overrides(self.overrides)
        return self

    @property
    def pattern(self) -> tuple[int, int]:
        """`nm` as (N, M): keep N of every M."""
        return parse_nm(self.nm)

    def override_for(self, names: Iterable[str]) -> float | None:
        """The sparsity of the first override whose pattern matches one of a layer's names."""
        candidates = name_variants(names)
        for item in parse_overrides(self.overrides):
            if any(fnmatch.fnmatchcase(c, item.pattern) for c in candidates):
                return item.sparsity
        return None


def parse_nm(text: str) -> tuple[int, int]:
    """`2:4` into (2, 4): keep N of every M."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
    n, m = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not 0 < n < m:
        raise OptionError(
            f"bad value {text!r} for prune.nm: expected N:M with 1 <= N < M, e.g. 2:4 (keep 2 of every 4 weights)"
        )
    return n, m


def parse_overrides(items: Iterable[str]) -> tuple[Override, ...]:
    """`["conv1*:0.2", "fc:0"]` into Overrides (pattern, sparsity)."""
    result = []
    for item in items:
        pattern, sep, value = str(item).rpartition(":")
        try:
            sparsity = float(value) if sep and pattern.strip() else float("nan")
        except ValueError:
            sparsity = float("nan")
        if not 0.0 <= sparsity <= MAX_SPARSITY:  # NaN fails too
            raise OptionError(
                f"bad value {item!r} for prune.overrides: expected PATTERN:SPARSITY items with a sparsity from "
                f"0 to {MAX_SPARSITY:g}, e.g. conv1*:0.2,fc:0"
            )
        result.append(Override(pattern.strip(), sparsity))
    return tuple(result)


def name_variants(names: Iterable[str]) -> list[str]:
    """A layer's names as patterns see them: the full names, without `.weight`, and every trailing
    dotted or slashed part (so `conv1*` matches `layers.0.conv1.weight` and `fc` matches `fc.weight`)."""
    out: list[str] = []
    for name in names:
        if not name:
            continue
        base = re.sub(r"[./](weight|bias|kernel)$", "", name)
        for text in {name, base}:
            out.append(text)
            parts = [p for p in re.split(r"[./]", text) if p]
            for i in range(1, len(parts)):
                out.append(".".join(parts[i:]))
                out.append("/".join(parts[i:]))
    return list(dict.fromkeys(out))
