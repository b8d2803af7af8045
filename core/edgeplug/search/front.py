"""The Pareto front of trials: lower objective and higher metric, drawn per kind of node (latency is
comparable only between trials measured on the same kind of CPU)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def pareto(trials: Sequence[dict[str, Any]], objective: str, metric: str) -> dict[str, list[dict[str, Any]]]:
    """Per node kind: the trials no other trial beats on both the objective (lower) and the metric (higher)."""
    fronts: dict[str, list[dict[str, Any]]] = {}
    usable = [
        t
        for t in trials
        if t.get(objective) is not None and t.get("metric") is not None and t.get("origin") != "probe"
    ]
    for kind in sorted({t["node_kind"] for t in usable}):
        points = [t for t in usable if t["node_kind"] == kind]
        front = [
            t
            for t in points
            if not any(
                o[objective] <= t[objective]
                and o["metric"] >= t["metric"]
                and (o[objective] < t[objective] or o["metric"] > t["metric"])
                for o in points
            )
        ]
        front.sort(key=lambda t: t[objective])
        fronts[kind] = [
            {
                "trial": t["id"],
                "label": t["label"],
                objective: t[objective],
                "metric": t["metric"],
                "passed": t["passed"],
            }
            for t in front
        ]
    return fronts
