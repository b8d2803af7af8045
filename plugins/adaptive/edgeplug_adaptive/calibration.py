"""Choosing the gate's thresholds on the selection samples: every candidate threshold (one per model but
the last) is judged, by the core's verdict, against the largest model's outputs; the cheapest candidate
that meets the budget wins. The table of all candidates goes in the report."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from edgeplug.plugin_api import PluginError, Verdict

from .gates import Gate
from .manifest import json_number
from .routing import combine, expected_cost, reached, route

MAX_CANDIDATES = 4096  # threshold combinations judged at most (cascades of three or more models)
TABLE_ROWS = 200  # a longer table keeps only the rows no other row beats on both cost and margin


@dataclass(frozen=True)
class Row:
    """One candidate: its thresholds, the share of inputs each model runs on and answers, the budget's
    metric values against the largest model, the expected cost per input, and whether it passes."""

    thresholds: tuple[float, ...]
    runs: tuple[float, ...]
    answers: tuple[float, ...]
    values: dict[str, float | None]
    minimums: dict[str, float]
    expected_ms: float
    passed: bool
    margin: float
    failures: tuple[str, ...] = ()

    @property
    def escalated(self) -> float:
        """The share of inputs sent past the first model."""
        return 1.0 - self.answers[0]

    def as_dict(self) -> dict[str, Any]:
        return {
            "thresholds": [json_number(t) for t in self.thresholds],
            "share_escalated": round(self.escalated, 6),
            "share_run": [round(s, 6) for s in self.runs],
            "share_answered": [round(s, 6) for s in self.answers],
            **{k: (None if v is None else round(v, 6)) for k, v in self.values.items()},
            "expected_ms": round(self.expected_ms, 6),
            "margin": None if math.isnan(self.margin) else round(self.margin, 6),
            "passed": self.passed,
        }


@dataclass(frozen=True)
class Calibration:
    chosen: Row
    rows: list[Row]
    candidates: int

    def table(self) -> list[dict[str, Any]]:
        """The report's table: every row, or the rows no other row beats on both cost and margin."""
        rows = self.rows if len(self.rows) <= TABLE_ROWS else _frontier(self.rows, self.chosen)
        return [row.as_dict() | {"chosen": row is self.chosen} for row in rows]


Judge = Callable[[dict[str, Any]], Verdict]


def candidates(gate: Gate, scores: np.ndarray, count: int) -> list[float]:
    """Thresholds worth trying: never and always sending inputs on (the two infinities), and the midpoints
    between neighbouring scores (at most `count`, spread over the scores' quantiles)."""
    values = np.unique(np.asarray(scores, np.float64))
    if len(values) > count:
        values = np.unique(np.quantile(values, np.linspace(0.0, 1.0, count), method="nearest"))
    middles = ((values[:-1] + values[1:]) / 2).tolist()
    return [-math.inf, *middles, math.inf]


def search(
    gate: Gate,
    scores: Sequence[np.ndarray],
    outputs: Sequence[Mapping[str, Any]],
    costs: Sequence[float],
    judge: Judge,
    margin: float | None,
    count: int,
) -> Calibration:
    """Judge every combination of candidate thresholds and keep the cheapest that passes with `margin`
    to spare above every budget (None: budget/n for n samples, the conformal risk control correction);
    PluginError when none does (not even sending every input to the largest model)."""
    samples = len(scores[0]) if len(scores) else 0
    stages = len(outputs) - 1
    per_stage = max(2, min(count, int(MAX_CANDIDATES ** (1.0 / stages)))) if stages > 1 else count
    grids = [candidates(gate, scores[k], per_stage) for k in range(stages)]
    verdicts: dict[bytes, Verdict] = {}
    rows: list[Row] = []
    for thresholds in itertools.product(*grids):
        answered = route(gate, thresholds, scores)
        key = answered.tobytes()
        if key not in verdicts:
            verdicts[key] = judge(combine(outputs, answered))
        verdict = verdicts[key]
        runs = reached(answered, len(outputs), gate)
        answers = [float(np.mean(answered == k)) for k in range(len(outputs))]
        spare = verdict.margin() if verdict.budgets else math.nan
        rows.append(
            Row(
                thresholds=tuple(float(t) for t in thresholds),
                runs=tuple(runs),
                answers=tuple(answers),
                values={m: verdict.value(m) for m in verdict.budgets},
                minimums={m: float(entry["min"]) for m, entry in verdict.budgets.items()},
                expected_ms=expected_cost(runs, costs),
                passed=verdict.passed and _spared(verdict, margin, samples),
                margin=spare,
                failures=tuple(verdict.failures),
            )
        )
    passing = [r for r in rows if r.passed]
    if not passing:
        largest = next((r for r in rows if r.answers[-1] == 1.0), rows[-1])  # the largest model alone
        raise PluginError(
            f"adaptive: no gate threshold meets the budget with its margin on the {samples} selection "
            f"samples, not even sending every input to the largest model ({_why(largest, margin, samples)})"
        )
    chosen = min(passing, key=lambda r: (r.expected_ms, -r.margin, r.escalated))
    return Calibration(chosen, rows, len(rows))


def _why(largest: Row, margin: float | None, samples: int) -> str:
    """Why even the largest model alone does not pass, and what to change."""
    if largest.failures:
        return "; ".join(largest.failures) + "; lower the budget"
    for metric, value in largest.values.items():
        minimum = largest.minimums[metric]
        bar = minimum + required_margin(minimum, margin, samples)
        if value is not None and value < bar:
            if margin is None and minimum >= 1.0:
                return f"a {metric} budget of {minimum:g} leaves no room for the margin budget/n; -o adaptive.margin=0"
            if margin is None and bar > 1.0:
                return (
                    f"{metric} {value:.4g} is below {minimum:g} + the margin budget/n = {bar:.4g}, which no "
                    f"model can reach: it takes at least {math.ceil(minimum / (1.0 - minimum))} selection "
                    "samples (more calibration data, or a larger adaptive.selection), or -o adaptive.margin"
                )
            return f"{metric} {value:.4g} is below {minimum:g} + margin = {bar:.4g}; lower the budget or the margin"
    return "it misses a budget"


def required_margin(minimum: float, margin: float | None, samples: int) -> float:
    """How far above `minimum` a metric must score on the selection samples."""
    if margin is not None:
        return margin
    return abs(minimum) / samples if samples else 0.0


def _spared(verdict: Verdict, margin: float | None, samples: int) -> bool:
    """Every budget the verdict could check is met with the required margin to spare."""
    for entry in verdict.budgets.values():
        spare = entry.get("margin")
        if spare is not None and spare < required_margin(entry["min"], margin, samples):
            return False
    return True


def _frontier(rows: Sequence[Row], chosen: Row) -> list[Row]:
    kept = [
        r
        for r in rows
        if r is chosen
        or not any(
            o.expected_ms <= r.expected_ms
            and o.margin >= r.margin
            and (o.expected_ms, o.margin) != (r.expected_ms, r.margin)
            for o in rows
        )
    ]
    return sorted(kept, key=lambda r: r.expected_ms)
