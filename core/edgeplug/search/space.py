"""The search space: which chains, which option values, and the per-stage widths of structured pruning.

A TOML file (`--space`):

    chains = ["fuse", "fuse,quant", "fuse,prune,quant"]
    [quant]
    mode = ["auto", "dynamic"]
    [prune]
    sparsity = [0.3, 0.5]
    [width]                 # per-stage channel fractions of structured pruning (the architecture search)
    stages = 4
    fractions = [0.0, 0.25, 0.5, 0.625]
    proposals = 6           # width proposals after the grid

Without a file: the useful chains of the installed plugins and a small grid per plugin (DEFAULT_GRID).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OptionError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CHAINS = ("fuse", "fuse,quant", "fuse,prune,quant", "fuse,prune,distill,quant")
DEFAULT_GRID: dict[str, dict[str, list[Any]]] = {
    "prune": {"mode": ["structured"], "sparsity": [0.25, 0.5]},
}
DEFAULT_WIDTH = {"stages": 4, "fractions": [0.0, 0.25, 0.5, 0.625], "proposals": 6}


@dataclass(frozen=True)
class TrialSpec:
    """One point of the space: a chain and the options of its plugins."""

    chain: tuple[str, ...]
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    origin: str = "grid"  # grid | width

    def label(self) -> str:
        opts = " ".join(
            f"{p}.{k}={_text(v)}" for p, kv in sorted(self.options.items()) for k, v in sorted(kv.items())
        )
        return ",".join(self.chain) + (f" {opts}" if opts else "")

    def as_dict(self) -> dict[str, Any]:
        return {"chain": list(self.chain), "options": self.options, "origin": self.origin}


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


@dataclass(frozen=True)
class Width:
    stages: int
    fractions: tuple[float, ...]
    proposals: int


@dataclass(frozen=True)
class SearchSpace:
    chains: tuple[tuple[str, ...], ...]
    grid: dict[str, dict[str, list[Any]]]
    width: Width | None

    def trials(self) -> list[TrialSpec]:
        """The grid: every chain with every combination of its plugins' option values."""
        specs = []
        for chain in self.chains:
            axes = [(p, k, vals) for p in chain for k, vals in self.grid.get(p, {}).items()]
            for combo in itertools.product(*(vals for _, _, vals in axes)):
                options: dict[str, dict[str, Any]] = {}
                for (plugin, key, _), value in zip(axes, combo):
                    options.setdefault(plugin, {})[key] = value
                specs.append(TrialSpec(chain, options))
        return specs


def load_space(
    path: Path | None, installed: Iterable[str], broken: Mapping[str, str] | None = None
) -> SearchSpace:
    """The space from `--space FILE.toml`, or the defaults for the installed plugins; refused when empty."""
    installed = set(installed)
    broken = broken or {}
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise OptionError(f"space file {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, IsADirectoryError) as exc:
            raise OptionError(f"space file {path} is not valid TOML: {exc}") from None
    raw_chains = data.get("chains", None if path else list(DEFAULT_CHAINS))
    if raw_chains is None:
        raw_chains = list(DEFAULT_CHAINS)
    if not isinstance(raw_chains, list):
        raise OptionError("space: `chains` must be a list of comma-separated plugin lists")
    chains = []
    for text in raw_chains:
        chain = tuple(p.strip() for p in str(text).split(",") if p.strip())
        unknown = [p for p in chain if p not in installed]
        if path is not None and unknown:
            raise OptionError(
                f"space: chain {text!r} names plugins that are not installed: {', '.join(unknown)}"
            )
        if chain and not unknown:
            chains.append(chain)
    grid = {k: dict(v) for k, v in DEFAULT_GRID.items()} if path is None else {}
    for plugin, table in data.items():
        if plugin in ("chains", "width"):
            continue
        if not isinstance(table, dict):
            raise OptionError(f"space: [{plugin}] must be a table of option = [values]")
        for key, values in table.items():
            grid.setdefault(plugin, {})[key] = values if isinstance(values, list) else [values]
            if not grid[plugin][key]:
                raise OptionError(f"space: {plugin}.{key} lists no value")
    width_table = data.get("width", DEFAULT_WIDTH if path is None else None)
    width = _width(width_table) if width_table else None
    space = SearchSpace(tuple(dict.fromkeys(chains)), grid, width)
    if not space.chains:
        raise OptionError(
            "the search space is empty: no chain whose plugins are all installed"
            + (f" in {path}" if path else "")
        )
    return space


def _width(table: Mapping[str, Any]) -> Width:
    try:
        stages = int(table.get("stages", DEFAULT_WIDTH["stages"]))
        fractions = tuple(float(f) for f in table.get("fractions", DEFAULT_WIDTH["fractions"]))
        proposals = int(table.get("proposals", DEFAULT_WIDTH["proposals"]))
    except (TypeError, ValueError):
        raise OptionError(
            "space: [width] takes stages (int), fractions (list of numbers), proposals (int)"
        ) from None
    if stages < 1 or not fractions or any(not 0 <= f < 1 for f in fractions) or proposals < 0:
        raise OptionError("space: [width] needs stages >= 1, fractions in [0, 1), proposals >= 0")
    return Width(stages, fractions, proposals)


def split_stages(groups: Sequence[Sequence[str]], stages: int) -> list[list[str]]:
    """Channel groups (their producer node names, in graph order) into `stages` consecutive stages."""
    count = max(1, min(stages, len(groups)))
    size = -(-len(groups) // count)
    return [[name for g in groups[i : i + size] for name in g] for i in range(0, len(groups), size)]
