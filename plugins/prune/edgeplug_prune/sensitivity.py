"""Per-group sensitivity of structured pruning: the output cosine after pruning one channel group alone.

`edgeplug search` proposes per-stage widths from it (less sensitive stages lose more channels)."""

from __future__ import annotations

import dataclasses
from typing import Any

from edgeplug import Model, RunContext
from edgeplug.plugin_api import cosine

from .settings import PruneSettings
from .structured import prune_channels

SAMPLES = 16


def channel_sensitivity(
    model: Model, cfg: PruneSettings, sparsity: float, ctx: RunContext
) -> list[dict[str, Any]]:
    """For each prunable group: the worst per-sample cosine of the outputs when only that group loses
    `sparsity` of its channels (no reconstruction), on at most 16 validation samples."""
    samples = ctx.data.validation[:SAMPLES]
    reference = {name: value[:SAMPLES] for name, value in ctx.previous.items()}  # held by the core
    groups = prune_channels(model.proto, cfg, sparsity, log=_silent).groups
    prunable = [g for g in groups if g["kept"] < g["channels"]]
    names = [name for g in groups for name in g["producers"]]
    rows = []
    for group in ctx.progress(prunable, "sensitivity"):
        mine = set(group["producers"])
        overrides = [f"{n}:{sparsity if n in mine else 0.0}" for n in names]
        only = dataclasses.replace(cfg, overrides=overrides)
        pruned = prune_channels(model.proto, only, sparsity, log=_silent).proto
        outputs = ctx.evaluate(model.replace(pruned), samples)
        worst = min(
            cosine(r, g) for name in reference for r, g in zip(_rows(reference[name]), _rows(outputs[name]))
        )
        rows.append(
            {
                "producers": group["producers"],
                "channels": group["channels"],
                "fraction": sparsity,
                "cosine": worst,
            }
        )
    return rows


def _rows(array: Any) -> list[Any]:
    return list(array) if getattr(array, "ndim", 0) else [array]


def _silent(message: str) -> None:
    del message
