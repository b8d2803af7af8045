"""The prune plugin's options: declarations and their parsed, validated form."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeplug import Option, OptionError

DEFAULT_SPARSITY = 0.5
# Pruning changes what the model computes: the default budget only catches a broken result (a trained
# classifier pruned 50% by magnitude keeps its logits' cosine well above 0.9); users tighten it.
DEFAULT_MIN_COSINE = 0.9
MODES = ("unstructured", "nm", "structured")


def options() -> list[Option]:
    """The options `edgeplug plugins` shows for prune."""
    return [
        Option(
            "mode",
            "str",
            "unstructured",
            "unstructured (magnitude), nm (N:M pattern) or structured (remove whole Conv output channels)",
            choices=MODES,
        ),
        Option(
            "sparsity",
            "float",
            None,
            "fraction of weights (of channels when structured) to remove; "
            "default 0.5, or searched when a min_cosine/min_top1 budget is given",
        ),
        Option("nm", "str", "2:4", "N:M pattern for mode=nm: keep N of every M weights along input channels"),
        Option(
            "scope",
            "str",
            "layer",
            "unstructured: rank magnitudes per layer or globally over all layers",
            choices=("layer", "global"),
        ),
        Option(
            "reconstruct",
            "bool",
            None,
            "structured: least-squares reconstruction of the next layers "
            "on calibration data (default: true when --data is a file)",
        ),
        Option(
            "storage",
            "str",
            "sparse",
            "sparse: store a pruned weight as a sparse tensor where that is "
            "smaller than dense (only when prune is the last step); dense: keep dense",
            choices=("sparse", "dense"),
        ),
        Option(
            "criterion",
            "str",
            "l1",
            "structured: channel importance, L1 or L2 norm of the filter, or "
            "the |gamma| of the BatchNorm after it",
            choices=("l1", "l2", "bn"),
        ),
        Option(
            "depthwise_sparsity",
            "float",
            None,
            "unstructured: sparsity of depthwise convolutions (default: the same as sparsity)",
        ),
        Option("skip_first_last", "bool", True, "spare the first and the last weight layer"),
        Option(
            "overrides",
            "list",
            [],
            "per-layer sparsity by name pattern, e.g. conv1*:0.2,fc:0 (0 spares the layer)",
        ),
        Option(
            "sensitivity",
            "bool",
            False,
            "structured: also measure each channel group's sensitivity (output cosine when only it is pruned)",
        ),
        Option("epochs", "int", 2, "Keras models: fine-tuning epochs while pruning with tfmot"),
        Option("batch_size", "int", 32, "Keras models: fine-tuning batch size"),
        Option(
            "min_cosine", "float", DEFAULT_MIN_COSINE, "smallest cosine similarity of the outputs allowed"
        ),
    ]


@dataclass(frozen=True)
class Override:
    pattern: str
    sparsity: float


@dataclass(frozen=True)
class PruneSettings:
    """Parsed options; `sparsity` None means "not given by the user"."""

    mode: str = "unstructured"
    sparsity: float | None = None
    nm: tuple[int, int] = (2, 4)
    scope: str = "layer"
    reconstruct: bool | None = None
    storage: str = "sparse"
    criterion: str = "l1"
    depthwise_sparsity: float | None = None
    skip_first_last: bool = True
    overrides: tuple[Override, ...] = field(default_factory=tuple)
    sensitivity: bool = False
    epochs: int = 2
    batch_size: int = 32

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> PruneSettings:
        mode = values.get("mode") or "unstructured"
        if mode not in MODES:
            raise OptionError(f"bad value {mode!r} for prune.mode: expected one of {', '.join(MODES)}")
        sparsity = values.get("sparsity")
        if sparsity is not None:
            check_fraction(sparsity, "prune.sparsity")
        dw = values.get("depthwise_sparsity")
        if dw is not None:
            check_fraction(dw, "prune.depthwise_sparsity")
        epochs, batch = int(values.get("epochs", 2)), int(values.get("batch_size", 32))
        if epochs < 1 or batch < 1:
            raise OptionError("prune.epochs and prune.batch_size must be at least 1")
        return cls(
            mode=mode,
            sparsity=sparsity,
            nm=parse_nm(values.get("nm") or "2:4"),
            scope=values.get("scope") or "layer",
            reconstruct=values.get("reconstruct"),
            storage=values.get("storage") or "sparse",
            criterion=values.get("criterion") or "l1",
            depthwise_sparsity=dw,
            skip_first_last=bool(values.get("skip_first_last", True)),
            overrides=parse_overrides(values.get("overrides") or []),
            sensitivity=bool(values.get("sensitivity", False)),
            epochs=epochs,
            batch_size=batch,
        )

    def override_for(self, names: Iterable[str]) -> float | None:
        """The sparsity of the first override whose pattern matches one of a layer's names."""
        candidates = name_variants(names)
        for item in self.overrides:
            if any(fnmatch.fnmatchcase(c, item.pattern) for c in candidates):
                return item.sparsity
        return None


def check_fraction(value: float, where: str) -> None:
    if not 0.0 <= value < 1.0:
        raise OptionError(f"{where} must be in [0, 1) (a fraction to remove), got {value:g}")


def parse_nm(text: str) -> tuple[int, int]:
    """`2:4` into (2, 4): keep N of every M."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
    if not match:
        raise OptionError(f"bad value {text!r} for prune.nm: write N:M, e.g. 2:4 (keep 2 of every 4 weights)")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise OptionError(f"bad value {text!r} for prune.nm: N must be at least 1 and smaller than M")
    return n, m


def parse_overrides(items: Iterable[str]) -> tuple[Override, ...]:
    """`["conv1*:0.2", "fc:0"]` into Overrides (pattern, sparsity)."""
    result = []
    for item in items:
        pattern, sep, value = str(item).rpartition(":")
        try:
            if not sep or not pattern:
                raise ValueError
            sparsity = float(value)
        except ValueError:
            raise OptionError(
                f"bad prune.overrides item {item!r}: write PATTERN:SPARSITY, e.g. conv1*:0.2,fc:0"
            ) from None
        check_fraction(sparsity, f"prune.overrides {pattern}")
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
