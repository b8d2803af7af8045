"""The run's metrics and budgets: `--metric`, `--budget`, the `[core]` table, and each step's tolerance.

One syntax for the whole project: `min_<metric>` budgets one step (`-o quant.min_detection=0.9`),
`--budget NAME=VALUE` every step of a run, and a metric named with `--metric` but given no budget gets
its declared default (metrics.py). A budget the user set (any of the three) judges the step against the
chain's original model and replaces the plugin's default metric budgets (its numeric criteria stay:
a fusion stays exact, dead slices still fail); the plugin's defaults judge the step against the model
before it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .detection import LAYOUTS, DetectionSettings
from .errors import OptionError
from .metrics import Evidence, MetricSpec, UserMetric, builtin_specs, metric_name, resolve
from .options import Option, parse_budgets
from .options import resolve as resolve_options
from .tolerance import METRIC_PREFIX, Tolerance

CORE_OPTIONS = (
    Option("metric", "list", [], "metrics every step reports and is judged by (as --metric)"),
    Option("detection_conf", "float", 0.25, "detection metric: smallest box confidence kept"),
    Option("detection_nms_iou", "float", 0.45, "detection metric: IoU above which NMS drops a box"),
    Option("detection_match_iou", "float", 0.5, "detection metric: IoU that matches a box to the reference"),
    Option("detection_layout", "str", "auto", "detection metric: output layout", LAYOUTS),
)
CORE_BOUNDS = {
    "detection_conf": (0.0, 1.0),
    "detection_nms_iou": (0.0, 1.0),
    "detection_match_iou": (0.0, 1.0),
}


@dataclass
class RunMetrics:
    """The metrics a run computes, the budgets given for every step, and the metrics named with --metric."""

    specs: dict[str, MetricSpec]
    budgets: dict[str, float] = field(default_factory=dict)
    named: tuple[str, ...] = ()

    @classmethod
    def from_settings(
        cls,
        metrics: Sequence[str | UserMetric],
        budgets: Mapping[str, float] | Sequence[str],
        core_table: Mapping[str, Any],
    ) -> RunMetrics:
        """From `--metric`, `--budget` and the `[core]` table (`metric = [...]`, `budget = {top1 = 0.99}`,
        `detection_conf = 0.3`, ...; also `-o core.KEY=VALUE`). The command line adds to the file."""
        table = dict(core_table)
        file_budgets = table.pop("budget", None) or {}
        if not isinstance(file_budgets, Mapping):
            raise OptionError("[core] budget must be a table like budget = { top1 = 0.99 }")
        values, _ = resolve_options({"core": {o.name: o for o in CORE_OPTIONS}}, ["core"], {"core": table})
        core = values["core"]
        for key, (low, high) in CORE_BOUNDS.items():
            if not low < core[key] <= high:
                raise OptionError(
                    f"bad value {core[key]!r} for core.{key}: expected a number in ({low:g}, {high:g}]"
                )
        detection = DetectionSettings(
            conf=core["detection_conf"],
            nms_iou=core["detection_nms_iou"],
            match_iou=core["detection_match_iou"],
            layout=core["detection_layout"],
        )
        names = list(dict.fromkeys([*core["metric"], *metrics]))
        given = dict(parse_budgets(f"{k}={v}" for k, v in file_budgets.items()))
        given.update(budgets if isinstance(budgets, Mapping) else parse_budgets(budgets))
        specs = resolve([*names, *(b for b in given if b not in names)], detection)
        return cls(specs, given, tuple(metric_name(n) for n in names))

    @property
    def reported(self) -> dict[str, MetricSpec]:
        """What every step reports: cosine and top-1 agreement (where there are logits) always, then the
        metrics the run names."""
        defaults = {k: v for k, v in builtin_specs().items() if k in ("cosine", "top1")}
        return {**defaults, **self.specs}

    @property
    def user_metrics(self) -> list[str]:
        return [name for name, spec in self.specs.items() if not spec.builtin]

    def check_applicable(
        self, reference: Mapping[str, Any], labels: np.ndarray | None, samples: int
    ) -> dict[str, float | None]:
        """Refuse a named or budgeted metric that does not apply to the model's outputs (one line, exit 2);
        returns each metric's score of the reference against itself (the base of relative defaults)."""
        scores: dict[str, float | None] = {}
        for name in dict.fromkeys([*self.named, *self.budgets]):
            value = self.specs[name].compute(Evidence(reference, reference, labels, samples))
            if value.value is None:
                raise OptionError(f"metric {name!r} does not apply to this model: {value.note}")
            scores[name] = value.reference if value.reference is not None else value.value
        return scores

    def step_tolerance(
        self, declared: Tolerance, scores: Mapping[str, float | None]
    ) -> tuple[Tolerance, frozenset[str]]:
        """A step's tolerance: the plugin's declared one, the run's budgets where the step sets none, and
        the declared defaults of the metrics named with --metric. Returns it with the metrics whose budget
        the user set (judged against the original)."""
        budgets = dict(declared.metric_budgets)
        user = set(declared.user_set)
        chosen = {k[len(METRIC_PREFIX) :] for k in declared.user_set if k.startswith(METRIC_PREFIX)}
        for metric, value in self.budgets.items():
            if metric not in chosen:
                budgets[metric] = value
                user.add(f"{METRIC_PREFIX}{metric}")
                chosen.add(metric)
        for metric in self.named:
            if metric in chosen:
                continue
            default = self.specs[metric].default_budget(scores.get(metric))
            if default is not None:
                budgets[metric] = default
                chosen.add(metric)
        if chosen:  # the user's metrics judge the step: the plugin's default metric budgets give way
            budgets = {m: v for m, v in budgets.items() if m in chosen}
        return declared.with_budgets(budgets, user), frozenset(chosen)
