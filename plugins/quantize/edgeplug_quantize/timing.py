"""How auto times its candidates: the core's bench (a fresh process per measurement, the run's thread count),
candidates alternated round by round so that a slow moment of a shared machine hits all of them alike.

The seam for tests is `timer_for(ctx)`: a Timer is any callable `(model_path, inputs) -> milliseconds`, so a
test replaces it with a deterministic one (tests/quant/test_auto.py) instead of reading the machine's clock.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from edgeplug.plugin_api import RunContext, measure_latency

Timer = Callable[[Path, Mapping[str, np.ndarray]], float]
T = TypeVar("T")

ROUNDS = 3  # rounds of alternated measurements; the median per candidate is kept
RUNS = 20  # timed runs per measurement (after WARMUP)
WARMUP = 3
# Latencies within this fraction of each other are a tie, broken by the order of preference (the plan's order):
# on a shared machine the median of three rounds still moves by a few percent between runs, and a choice that
# flips with it would make the same command give different models.
NOISE = 0.05
# ... and differences below this many milliseconds, whatever the ratio: a fresh process's call overhead
# dominates models that run in tens of microseconds (the digits CNN: float 0.021 ms, int8 0.027 ms on a
# loaded machine, 0.03 vs 0.05 ms on a quiet one), so their order there is noise.
FLOOR_MS = 0.05


def bench_timer(threads: int, runs: int = RUNS, warmup: int = WARMUP) -> Timer:
    """p50 latency in ms from edgeplug's bench, in a child process at `threads` intra-op threads."""

    def measure(path: Path, inputs: Mapping[str, np.ndarray]) -> float:
        result = measure_latency(Path(path), threads, runs, warmup, inputs=dict(inputs))
        return float(result["p50_ms"])

    return measure


def timer_for(ctx: RunContext) -> Timer:
    """The timer auto uses in this run (tests replace this function)."""
    return bench_timer(ctx.threads)


def time_models(
    paths: Sequence[Path], inputs: Mapping[str, np.ndarray], timer: Timer, rounds: int = ROUNDS
) -> list[float]:
    """Median latency of each model over `rounds` rounds, the models alternated within each round."""
    if not paths:
        return []
    samples: list[list[float]] = [[] for _ in paths]
    for _ in range(max(1, rounds)):
        for i, path in enumerate(paths):
            samples[i].append(float(timer(path, inputs)))
    return [statistics.median(s) for s in samples]


def clearly_faster(latency: float, than: float, noise: float = NOISE) -> bool:
    """`latency` beats `than` by more than the measurement noise."""
    return latency < than * (1.0 - noise) and than - latency > FLOOR_MS


def by_speed(items: Sequence[T], latency: Callable[[T], float | None], noise: float = NOISE) -> list[T]:
    """Fastest first; items within `noise` of the fastest remaining one keep their given order (preference),
    untimed items last in their given order."""
    timed = [x for x in items if latency(x) is not None]
    ordered: list[T] = []
    while timed:
        fastest = min(float(latency(x)) for x in timed)  # type: ignore[arg-type]
        bound = max(fastest * (1.0 + noise), fastest + FLOOR_MS)
        group = [x for x in timed if float(latency(x)) <= bound]  # type: ignore[arg-type]
        ordered += group
        timed = [x for x in timed if all(x is not g for g in group)]
    return ordered + [x for x in items if latency(x) is None]
