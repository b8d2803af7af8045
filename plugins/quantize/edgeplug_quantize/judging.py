"""Judging a quantized candidate exactly as the core's verification will (ctx.evaluate + ctx.judge), on all
validation samples or on a subset (the sensitivity ranking), and the one number searches rank verdicts by."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from edgeplug.plugin_api import Model, RunContext, Verdict

Sample = dict[str, np.ndarray]


def shortfall(verdict: Verdict) -> float:
    """How far a verdict is from passing (0: passed; lower is better): each missed budget by how much it is
    missed, plus 1 for every other failed criterion (a dead slice, a slice error, a non-finite output)."""
    if verdict.passed:
        return 0.0
    missed = 0.0
    budget_failures = 0
    for entry in verdict.budgets.values():
        margin = entry.get("margin")
        if margin is None:
            continue
        if margin < 0:
            missed += -margin
            budget_failures += 1
    others = max(0, len(verdict.failures) - budget_failures)
    return missed + others


def rank_key(verdict: Verdict) -> tuple[float, float]:
    """Sort key, best first: the smallest shortfall, then the largest margin."""
    margin = verdict.margin()
    return (shortfall(verdict), -(margin if math.isfinite(margin) else -1e9))


def metric_values(verdict: Verdict) -> dict[str, float | None]:
    """Every metric the verdict computed (against the original where the user's budget asks for that)."""
    values = {name: value.value for name, value in verdict.metrics.items()}
    values.update({name: value.value for name, value in verdict.metrics_vs_original.items()})
    return {k: (None if v is None else round(float(v), 6)) for k, v in values.items()}


def describe(verdict: Verdict) -> str:
    shown = ", ".join(f"{k} {v:.5g}" for k, v in metric_values(verdict).items() if v is not None)
    state = "within budget" if verdict.passed else "misses: " + "; ".join(verdict.failures[:3])
    return f"{shown} ({state})" if shown else state


@dataclass
class Judge:
    """Evaluates candidate protos with the run's evaluation mode and judges them with the step's tolerance.
    `subset` judges on the first `count` validation samples against the previous and original models' outputs
    on those samples (computed once)."""

    ctx: RunContext
    received: Model  # the model this step was given (the verification reference)
    evaluations: int = 0

    def __post_init__(self) -> None:
        self._subset: tuple[int, dict[str, Any], dict[str, Any] | None] | None = None

    def outputs(self, proto: onnx.ModelProto, samples: Sequence[Sample] | None = None) -> dict[str, Any]:
        self.evaluations += 1
        return self.ctx.evaluate(Model(proto), None if samples is None else list(samples))

    def full(self, proto: onnx.ModelProto) -> Verdict:
        """The verdict on every validation sample: what the core will decide."""
        return self.ctx.judge(self.outputs(proto))

    def subset(self, proto: onnx.ModelProto, count: int) -> Verdict:
        """The verdict on the first `count` validation samples (a cheaper ranking signal)."""
        validation = self.ctx.data.validation
        count = max(1, min(count, len(validation)))
        if count == len(validation):
            return self.full(proto)
        if self._subset is None or self._subset[0] != count:
            samples = validation[:count]
            reference = self.ctx.evaluate(self.received, samples)
            original = (
                self.ctx.evaluate(self.ctx.original, samples) if self.ctx.original is not None else None
            )
            self._subset = (count, reference, original)
        _, reference, original = self._subset
        labels = self.ctx.data.validation_labels
        if labels is not None:
            labels = labels[: count * _batch(validation)]
        return self.ctx.judge(
            self.outputs(proto, validation[:count]),
            reference=reference,
            original=original if original is not None else reference,
            labels=labels,
            samples=count,
        )


def worst_sample(verdict: Verdict) -> int:
    """The validation sample where the candidate is worst (per-sample cosine), 0 when unknown."""
    cosine = verdict.metrics.get("cosine")
    per = cosine.per_sample if cosine is not None else None
    if per:
        return int(np.argmin(per))
    worst = [m.get("worst_sample") for m in verdict.outputs.values() if isinstance(m, dict)]
    return next((w for w in worst if isinstance(w, int)), 0)


def _batch(samples: Sequence[Sample]) -> int:
    first = next(iter(samples[0].values())) if samples else None
    return int(first.shape[0]) if first is not None and np.ndim(first) else 1


__all__ = ["Judge", "describe", "metric_values", "rank_key", "shortfall", "worst_sample"]
