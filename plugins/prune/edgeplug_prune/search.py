"""The highest sparsity that meets a user's budget, by bisection on the validation data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

STEPS = 7


def bisect_sparsity(
    passes: Callable[[float], tuple[bool, dict[str, Any]]],
    low: float = 0.0,
    high: float = 0.95,
    steps: int = STEPS,
) -> tuple[float | None, list[dict[str, Any]]]:
    """Largest sparsity in (low, high] for which `passes` holds, assuming quality falls as sparsity rises;
    None when even the smallest tried fails. Returns it with the trace of every evaluation."""
    trace: list[dict[str, Any]] = []

    def attempt(value: float) -> bool:
        ok, metrics = passes(value)
        trace.append({"sparsity": round(value, 6), "passed": ok, **metrics})
        return ok

    if attempt(high):
        return high, trace
    best: float | None = None
    for _ in range(steps):
        mid = (low + high) / 2
        if attempt(mid):
            best, low = mid, mid
        else:
            high = mid
    return best, trace
