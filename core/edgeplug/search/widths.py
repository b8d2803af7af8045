"""Width proposals for structured pruning (the architecture search): per-stage channel fractions, drawn so
that stages whose channel groups hurt the output least when pruned (prune's sensitivity table) lose more
channels, then mutated around the trials that met the budget at the lowest measured objective."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .space import TrialSpec, Width, split_stages


def stage_sensitivity(
    sensitivity: Sequence[dict[str, Any]], stages: int
) -> tuple[list[list[str]], list[float]]:
    """Stages of producer names (graph order) and each stage's mean loss of cosine when one group is pruned."""
    groups = [row["producers"] for row in sensitivity]
    names = split_stages(groups, stages)
    loss = {p: 1.0 - float(row["cosine"]) for row in sensitivity for p in row["producers"]}
    return names, [float(np.mean([loss[n] for n in stage])) for stage in names]


def width_spec(chain: tuple[str, ...], stages: list[list[str]], fractions: Sequence[float]) -> TrialSpec:
    overrides = [f"{name}:{fraction:g}" for stage, fraction in zip(stages, fractions) for name in stage]
    return TrialSpec(
        chain, {"prune": {"mode": "structured", "sparsity": 0.0, "overrides": overrides}}, "width"
    )


def propose_widths(
    width: Width,
    chains: Sequence[tuple[str, ...]],
    sensitivity: Sequence[dict[str, Any]],
    trials: Sequence[dict[str, Any]],
    objective: str,
    count: int,
    seed: int,
) -> list[TrialSpec]:
    """`count` new width trials per chain: mutations of the best passing width trials when there are some,
    else draws biased by sensitivity (robust stages toward the larger fractions)."""
    if count <= 0:
        return []
    rng = np.random.default_rng(seed)
    stages, loss = stage_sensitivity(sensitivity, width.stages)
    levels = sorted(width.fractions)
    spread = max(loss) - min(loss)
    robust = [1.0 - (v - min(loss)) / spread if spread > 0 else 0.5 for v in loss]
    tried = {t["label"] for t in trials}
    proposals: list[TrialSpec] = []
    for chain in chains:
        parents = [
            t
            for t in trials
            if t.get("origin") == "width"
            and t.get("passed")
            and tuple(t["chain"]) == chain
            and t.get(objective)
        ]
        parents.sort(key=lambda t: t[objective])
        for _ in range(count * 20):
            if sum(1 for p in proposals if p.chain == chain) >= count:
                break
            if parents:
                index = _levels_of(parents[int(rng.integers(min(3, len(parents))))], stages, levels)
                stage = int(rng.choice(len(stages), p=_normalise([r + 0.1 for r in robust])))
                index[stage] = int(
                    np.clip(index[stage] + (1 if rng.random() < 0.75 else -1), 0, len(levels) - 1)
                )
            else:
                index = [
                    int(np.clip(round(r * (len(levels) - 1) + rng.normal(0, 0.75)), 0, len(levels) - 1))
                    for r in robust
                ]
            spec = width_spec(chain, stages, [levels[i] for i in index])
            if spec.label() not in tried and all(spec.label() != p.label() for p in proposals):
                proposals.append(spec)
    return proposals


def _levels_of(trial: dict[str, Any], stages: list[list[str]], levels: list[float]) -> list[int]:
    fractions = {
        item.rpartition(":")[0]: float(item.rpartition(":")[2])
        for item in trial["options"]["prune"]["overrides"]
    }
    return [int(np.argmin([abs(fractions.get(stage[0], 0.0) - lv) for lv in levels])) for stage in stages]


def _normalise(weights: Sequence[float]) -> np.ndarray:
    arr = np.asarray(weights, float)
    return arr / arr.sum()
