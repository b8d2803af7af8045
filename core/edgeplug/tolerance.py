"""Verification budgets: the tolerance options every step has, and the Tolerance a step is judged with."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .options import Option

# Tolerance options every step has; the core handles them (DESIGN.md, "Verification"). `min_<metric>` is
# the budget of a metric (metrics.py: cosine, top1, top5, accuracy, detection, embedding, or a user metric
# named with --metric); the others bound the numeric difference.
UNIT = {"minimum": 0.0, "maximum": 1.0}
TOLERANCE_OPTIONS = (
    Option(
        "min_cosine",
        "float",
        None,
        "smallest cosine similarity of any output on any validation sample",
        minimum=-1.0,
        maximum=1.0,
    ),
    Option(
        "min_top1", "float", None, "smallest top-1 agreement with the reference on logits outputs", **UNIT
    ),
    Option("min_top5", "float", None, "smallest top-5 overlap with the reference on logits outputs", **UNIT),
    Option("min_accuracy", "float", None, "smallest labelled accuracy (needs labels in --data)", **UNIT),
    Option("min_detection", "float", None, "smallest mAP@0.5 against the reference model's boxes", **UNIT),
    Option("min_embedding", "float", None, "smallest nearest-neighbour agreement of embeddings", **UNIT),
    Option("max_abs_error", "float", None, "largest absolute output difference allowed", minimum=0.0),
    Option(
        "rtol",
        "float",
        None,
        "relative tolerance of the elementwise check |d| <= atol + rtol*|ref|",
        minimum=0.0,
    ),
    Option("atol", "float", None, "absolute tolerance of the elementwise check", minimum=0.0),
    Option(
        "max_slice_error",
        "float",
        None,
        "largest error of any output slice (a row, channel or class) relative to that slice's reference range",
        minimum=0.0,
    ),
    Option(
        "allow_dead",
        "bool",
        None,
        "accept output slices that vary in the reference and are constant after the step (recorded)",
    ),
)
NUMERIC_KEYS = ("max_abs_error", "rtol", "atol", "max_slice_error")
TOLERANCE_KEYS = (*(o.name for o in TOLERANCE_OPTIONS),)
EXACT = {"rtol": 1e-4, "atol": 1e-5}
METRIC_PREFIX = "min_"


def is_tolerance_key(key: str, metrics: Iterable[str] = ()) -> bool:
    """A core-handled verification key: the fixed ones, or `min_<metric>` for a user metric of the run."""
    return key in TOLERANCE_KEYS or (key.startswith(METRIC_PREFIX) and key[len(METRIC_PREFIX) :] in metrics)


@dataclass(frozen=True)
class Tolerance:
    """A step's verification budget. `min_cosine`, `min_top1` and `budgets` (the other metrics: top5,
    accuracy, detection, embedding, user metrics) are the smallest allowed metric values; unset criteria
    are not checked; `user_set` names the keys the user gave (`-o`, `--budget`), the rest are the
    plugin's declared defaults."""

    min_cosine: float | None = None
    min_top1: float | None = None
    max_abs_error: float | None = None
    rtol: float | None = None
    atol: float | None = None
    budgets: Mapping[str, float] = field(default_factory=dict)
    max_slice_error: float | None = None
    allow_dead: bool = False
    user_set: frozenset[str] = field(default_factory=frozenset)

    @property
    def metric_budgets(self) -> dict[str, float]:
        """Every metric budget by metric name, cosine and top1 included."""
        merged = {k: float(v) for k, v in self.budgets.items() if v is not None}
        if self.min_cosine is not None:
            merged["cosine"] = float(self.min_cosine)
        if self.min_top1 is not None:
            merged["top1"] = float(self.min_top1)
        return merged

    def with_budgets(self, budgets: Mapping[str, float], user_set: Iterable[str] | None = None) -> Tolerance:
        """The same numeric criteria with these metric budgets."""
        rest = {k: float(v) for k, v in budgets.items() if k not in ("cosine", "top1")}
        return dataclasses.replace(
            self,
            min_cosine=budgets.get("cosine"),
            min_top1=budgets.get("top1"),
            budgets=rest,
            user_set=frozenset(self.user_set if user_set is None else user_set),
        )

    @property
    def elementwise(self) -> bool:
        return self.rtol is not None or self.atol is not None

    @property
    def waived_dead(self) -> bool:
        """Dead slices are accepted: allow_dead, or a budget the user set to 0 (any damage accepted)."""
        if self.allow_dead:
            return True
        return any(
            f"{METRIC_PREFIX}{name}" in self.user_set and value <= 0
            for name, value in self.metric_budgets.items()
        )

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {f"{METRIC_PREFIX}{k}": v for k, v in sorted(self.metric_budgets.items())}
        for key in ("max_abs_error", "rtol", "atol", "max_slice_error"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.allow_dead:
            data["allow_dead"] = True
        data["user_set"] = sorted(self.user_set)
        return data

    @classmethod
    def from_values(cls, values: Mapping[str, Any], user_set: Iterable[str] = ()) -> Tolerance:
        """From tolerance option values (`min_cosine`, `min_detection`, `rtol`, ...; other keys ignored)."""
        budgets = {
            k[len(METRIC_PREFIX) :]: float(v)
            for k, v in values.items()
            if k.startswith(METRIC_PREFIX) and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        return cls(
            max_abs_error=values.get("max_abs_error"),
            rtol=values.get("rtol"),
            atol=values.get("atol"),
            max_slice_error=values.get("max_slice_error"),
            allow_dead=bool(values.get("allow_dead")),
            user_set=frozenset(user_set),
        ).with_budgets(budgets)

    def __hash__(self) -> int:
        return hash(repr(self.as_dict()))


def schema_for(declared: Iterable[Option], metrics: Iterable[str] = ()) -> dict[str, Option]:
    """The full option table of a plugin: its own options plus the core's tolerance options (and the
    `min_<name>` budget of every user metric the run names). A plugin that declares a tolerance option
    sets its default and help; its type and bounds stay the core's."""
    table = {o.name: o for o in TOLERANCE_OPTIONS}
    for name in metrics:
        key = f"{METRIC_PREFIX}{name}"
        table.setdefault(key, Option(key, "float", None, f"smallest value of the metric {name!r}"))
    for opt in declared:
        core = table.get(opt.name)
        if core is not None and opt.name in TOLERANCE_KEYS:
            opt = dataclasses.replace(core, default=opt.default, help=opt.help or core.help)
        table[opt.name] = opt
    return table


def check_tolerance_values(plugin: str, values: Mapping[str, Any], user_metrics: Iterable[str] = ()) -> None:
    """Tolerances outside their meaningful range are refused before any work is done (for values that did not
    come through option parsing, e.g. hooks called from Python)."""
    table = schema_for((), user_metrics)
    for key, value in values.items():
        if value is not None and key in table:
            table[key].parse(value, plugin)


def split_tolerance(
    values: Mapping[str, Any], user_keys: Iterable[str], metrics: Iterable[str] = ()
) -> tuple[dict[str, Any], Tolerance]:
    """Separate tolerance keys from a plugin's option values; default to exact when none is declared.
    `metrics` names the run's user metrics, whose `min_<name>` budgets are tolerance keys too."""
    metrics = tuple(metrics)
    tol = {k: v for k, v in values.items() if is_tolerance_key(k, metrics)}
    criteria = {k: v for k, v in tol.items() if k != "allow_dead" and v is not None}
    if not criteria:
        tol.update(EXACT)
    rest = {k: v for k, v in values.items() if not is_tolerance_key(k, metrics)}
    user = frozenset(k for k in user_keys if is_tolerance_key(k, metrics))
    return rest, Tolerance.from_values(tol, user)
