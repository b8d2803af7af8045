"""Which model answers each input, given the gate's scores and thresholds; what that costs; the cascade's
outputs assembled from each model's. Shared by calibration (scores of every model on every input known)
and the runner (each model runs only on the inputs that reach it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from edgeplug.plugin_api import Ragged

from .gates import Gate


def route(gate: Gate, thresholds: Sequence[float], scores: Sequence[np.ndarray]) -> np.ndarray:
    """The index of the model that answers each input: stage k keeps the inputs its gate does not send
    on; the last model answers the rest. `scores[k]` are the gate's scores of stage k on every input."""
    count = len(scores[0]) if len(scores) else 0
    answered = np.full(count, len(thresholds), dtype=np.int64)
    pending = np.ones(count, dtype=bool)
    for stage, threshold in enumerate(thresholds):
        keep = pending & ~gate.escalates(scores[stage], threshold)
        answered[keep] = stage
        pending &= ~keep
    return answered


def reached(answered: np.ndarray, models: int, gate: Gate) -> list[float]:
    """The share of inputs each model runs on: every model up to the one that answers (a gate on the
    model's outputs), or only the one that answers (a gate on the input, decided before any model)."""
    if not len(answered):
        return [0.0] * models
    if gate.before_model:
        return [float(np.mean(answered == k)) for k in range(models)]
    return [float(np.mean(answered >= k)) for k in range(models)]


def expected_cost(shares: Sequence[float], costs: Sequence[float]) -> float:
    """Mean cost per input: the share of inputs each model runs on times its cost per input."""
    return float(sum(s * c for s, c in zip(shares, costs)))


def combine(outputs: Sequence[Mapping[str, Any]], answered: np.ndarray) -> dict[str, Any]:
    """The cascade's outputs: for each input, the rows of the model that answered it (each model's
    outputs cover every input)."""
    combined: dict[str, Any] = {}
    for name, first in outputs[0].items():
        if isinstance(first, Ragged) or any(isinstance(o[name], Ragged) for o in outputs):
            combined[name] = Ragged(outputs[k][name][i] for i, k in enumerate(answered))
            continue
        stacked = np.array(first, copy=True)
        for k in range(1, len(outputs)):
            rows = answered == k
            if rows.any():
                stacked[rows] = np.asarray(outputs[k][name])[rows]
        combined[name] = stacked
    return combined
