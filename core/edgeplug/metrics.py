"""Task metrics of verification: every step, search trial and cascade is judged by the same numbers.

Built-ins: `cosine` (worst per-sample cosine of any output), `top1` (argmax agreement with the reference),
`top5` (top-5 overlap), `accuracy` (against `labels`), `detection` (mAP@0.5 of the candidate's boxes against
the reference model's boxes), `embedding` (nearest-neighbour agreement of embeddings). A user metric is a
Python callable or 'module:function' / 'file.py:function' called `(reference, candidate, labels) -> float`,
higher is better. The budget of a metric is `min_<name>`.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .detection import DetectionSettings, decode, layout_of, mean_average_precision
from .errors import EdgeplugError, OptionError

Outputs = Mapping[str, Any]  # output name -> stacked array, or a Ragged list of per-sample arrays
UserMetric = Callable[[Outputs, Outputs, "np.ndarray | None"], Any]


class Ragged(list):
    """Per-sample outputs whose shapes differ between samples (they cannot be stacked)."""


@dataclass
class MetricValue:
    """One metric of one candidate: its value (None when it does not apply to these outputs), the
    reference's own score where the metric has one (accuracy), per output and per sample where it is."""

    value: float | None
    reference: float | None = None
    per_output: dict[str, float] = field(default_factory=dict)
    per_sample: list[float] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"value": self.value}
        if self.reference is not None:
            data["reference"] = self.reference
        if self.per_output:
            data["per_output"] = self.per_output
        if self.per_sample is not None:
            data["per_sample"] = [round(v, 6) for v in self.per_sample]
            data["worst_sample"] = int(np.argmin(self.per_sample)) if self.per_sample else None
        if self.details:
            data["details"] = self.details
        if self.note:
            data["note"] = self.note
        return data


@dataclass(frozen=True)
class Evidence:
    """What a metric sees: reference and candidate outputs, labels, and the number of samples."""

    reference: Outputs
    candidate: Outputs
    labels: np.ndarray | None
    samples: int


@dataclass(frozen=True)
class MetricSpec:
    """A metric the core can compute, with its declared default budget (None: report only)."""

    name: str
    compute: Callable[[Evidence], MetricValue]
    default_min: float | None
    help: str
    relative_default: bool = False  # the default budget is default_min x the reference's own score
    builtin: bool = True

    def default_budget(self, reference_score: float | None) -> float | None:
        if self.default_min is None:
            return None
        if self.relative_default:
            return None if reference_score is None else self.default_min * reference_score
        return self.default_min


# -- helpers -----------------------------------------------------------------------------------------
def is_logits(array: Any) -> bool:
    """A 2-D float output [N, C>=2]: classifier logits or probabilities (the one rule for 'logits')."""
    return (
        isinstance(array, np.ndarray) and array.ndim == 2 and array.shape[1] >= 2 and array.dtype.kind == "f"
    )


def is_numeric(array: Any) -> bool:
    if isinstance(array, Ragged):
        return all(np.asarray(a).dtype.kind in "fiub" for a in array)
    return isinstance(array, np.ndarray) and array.dtype.kind in "fiub"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity; equal infinities (attention masks) agree and count as zero, any other
    non-finite value makes it NaN (which fails every budget)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    odd = ~(np.isfinite(a) & np.isfinite(b))
    if odd.any():
        same = odd & (a == b)
        if (odd & ~same).any():
            return float("nan")
        a, b = np.where(same, 0.0, a), np.where(same, 0.0, b)
    with np.errstate(over="ignore", invalid="ignore"):
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        if na == 0 and nb == 0:
            return 1.0
        if na == 0 or nb == 0:
            return 0.0
        return float(np.dot(a, b) / (na * nb))


def per_sample(array: Any, samples: int) -> list[np.ndarray]:
    """Split an output into its samples: the parts of a Ragged output, or equal slices of the batch axis."""
    if isinstance(array, Ragged):
        return [np.asarray(a) for a in array]
    array = np.asarray(array)
    if array.ndim == 0 or samples <= 0 or array.shape[0] % samples:
        return [array]
    return list(array.reshape(samples, -1))


def _common(ev: Evidence) -> list[str]:
    return [n for n in ev.reference if n in ev.candidate]


def _logits_outputs(ev: Evidence, min_classes: int = 2) -> list[str]:
    return [
        n
        for n in _common(ev)
        if is_logits(ev.reference[n])
        and is_logits(ev.candidate[n])
        and ev.reference[n].shape == ev.candidate[n].shape
        and ev.reference[n].shape[1] >= min_classes
    ]


# -- built-ins ---------------------------------------------------------------------------------------
def cosine_metric(ev: Evidence) -> MetricValue:
    per_output: dict[str, float] = {}
    worst: list[float] | None = None
    means: dict[str, float] = {}
    for name in _common(ev):
        ref, got = ev.reference[name], ev.candidate[name]
        if not (is_numeric(ref) and is_numeric(got)):
            continue
        pairs = list(zip(per_sample(ref, ev.samples), per_sample(got, ev.samples)))
        values = [cosine(r, g) if np.shape(r) == np.shape(g) else 0.0 for r, g in pairs]
        if not values:
            continue
        per_output[name] = min(values)
        means[name] = float(np.mean(values))
        worst = values if worst is None or len(worst) != len(values) else list(np.minimum(worst, values))
    if not per_output:
        return MetricValue(None, note="no numeric output")
    return MetricValue(
        min(per_output.values()), per_output=per_output, per_sample=worst, details={"mean": means}
    )


def top1_metric(ev: Evidence) -> MetricValue:
    names = _logits_outputs(ev)
    if not names:
        return MetricValue(None, note="no logits output (2-D [N, C>=2])")
    per_output, first = {}, None
    for name in names:
        agree = (ev.reference[name].argmax(1) == ev.candidate[name].argmax(1)).astype(float)
        per_output[name] = float(agree.mean())
        first = agree if first is None else first
    return MetricValue(min(per_output.values()), per_output=per_output, per_sample=list(first))


def top5_metric(ev: Evidence) -> MetricValue:
    names = _logits_outputs(ev, min_classes=5)
    if not names:
        return MetricValue(None, note="no logits output with at least 5 classes")
    per_output = {}
    for name in names:
        ref = np.argsort(-ev.reference[name], axis=1)[:, :5]
        got = np.argsort(-ev.candidate[name], axis=1)[:, :5]
        overlap = [len(set(r) & set(g)) / 5 for r, g in zip(ref, got)]
        per_output[name] = float(np.mean(overlap))
    return MetricValue(min(per_output.values()), per_output=per_output)


def accuracy_metric(ev: Evidence) -> MetricValue:
    if ev.labels is None:
        return MetricValue(None, note="no labels in the data")
    for name in _logits_outputs(ev):
        ref, got = ev.reference[name], ev.candidate[name]
        if len(got) != len(ev.labels):
            continue
        correct = (got.argmax(1) == ev.labels).astype(float)
        return MetricValue(
            float(correct.mean()),
            reference=float(np.mean(ref.argmax(1) == ev.labels)),
            per_output={name: float(correct.mean())},
            per_sample=list(correct),
        )
    return MetricValue(None, note=f"no logits output with one row per label ({len(ev.labels)} labels)")


def detection_metric(settings: DetectionSettings) -> Callable[[Evidence], MetricValue]:
    def compute(ev: Evidence) -> MetricValue:
        for name in _common(ev):
            ref, got = ev.reference[name], ev.candidate[name]
            if not isinstance(ref, np.ndarray) or ref.dtype.kind != "f":
                continue
            if layout_of(ref.shape, settings.layout) is None or np.shape(got) != ref.shape:
                continue
            result = mean_average_precision(decode(ref, settings), decode(got, settings), settings.match_iou)
            value = result.pop("map")
            return MetricValue(
                value,
                per_output={name: value},
                details={"layout": layout_of(ref.shape, settings.layout), **result},
                note=result.get("note"),
            )
        return MetricValue(None, note="no YOLOv5 [N, anchors, 5+C] or YOLOv8 [N, 4+C, anchors] output")

    return compute


def embedding_metric(ev: Evidence) -> MetricValue:
    for name in _common(ev):
        ref, got = ev.reference[name], ev.candidate[name]
        if not (isinstance(ref, np.ndarray) and ref.ndim == 2 and ref.dtype.kind == "f"):
            continue
        if np.shape(got) != ref.shape or len(ref) < 3:
            continue
        cos = [cosine(r, g) for r, g in zip(ref, got)]
        agree = (_nearest(ref) == _nearest(got)).astype(float)
        return MetricValue(
            float(agree.mean()),
            per_output={name: float(agree.mean())},
            per_sample=list(agree),
            details={"mean_cosine": float(np.mean(cos)), "min_cosine": float(np.min(cos))},
        )
    return MetricValue(None, note="no 2-D float embedding output [N, D] over at least 3 samples")


def _nearest(embeddings: np.ndarray) -> np.ndarray:
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(1)


def builtin_specs(detection: DetectionSettings | None = None) -> dict[str, MetricSpec]:
    detection = detection or DetectionSettings()
    return {
        "cosine": MetricSpec(
            "cosine", cosine_metric, None, "worst per-sample cosine similarity of any numeric output"
        ),
        "top1": MetricSpec("top1", top1_metric, 0.9, "top-1 agreement with the reference on logits"),
        "top5": MetricSpec("top5", top5_metric, 0.9, "top-5 overlap with the reference on logits"),
        "accuracy": MetricSpec(
            "accuracy",
            accuracy_metric,
            0.9,
            "labelled top-1 accuracy (default budget: 0.9 x the reference model's accuracy)",
            relative_default=True,
        ),
        "detection": MetricSpec(
            "detection",
            detection_metric(detection),
            0.9,
            f"mAP@{detection.match_iou:g} of the boxes against the reference model's boxes (confidence "
            f">= {detection.conf:g}, NMS IoU {detection.nms_iou:g}; YOLOv5/YOLOv8 layouts)",
        ),
        "embedding": MetricSpec(
            "embedding",
            embedding_metric,
            0.9,
            "nearest-neighbour agreement of embeddings across the validation samples",
        ),
    }


BUILTIN = tuple(builtin_specs())


# -- user metrics ------------------------------------------------------------------------------------
def load_function(spec: str, what: str = "metric") -> Callable[..., Any]:
    """Import `package.module:function` or `path/to/file.py:function`."""
    where, sep, name = str(spec).rpartition(":")
    if not sep or not where or not name:
        raise OptionError(f"{what} {spec!r}: write it as module:function or path/to/file.py:function")
    try:
        if where.endswith(".py"):
            path = Path(where).expanduser()
            if not path.is_file():
                raise OptionError(f"{what} {spec!r}: {path} does not exist")
            loader = importlib.util.spec_from_file_location(f"edgeplug_user_{path.stem}", path)
            if loader is None or loader.loader is None:
                raise OptionError(f"{what} {spec!r}: cannot import {path}")
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except OptionError:
        raise
    except Exception as exc:
        raise OptionError(f"{what} {spec!r}: importing {where} failed: {type(exc).__name__}: {exc}") from None
    func = getattr(module, name, None)
    if not callable(func):
        raise OptionError(f"{what} {spec!r}: {where} has no function {name!r}")
    return func


def metric_name(item: str | UserMetric) -> str:
    """A metric's name: the built-in's, or the function's name of 'module:function' or a callable."""
    if isinstance(item, str):
        return item.rpartition(":")[2]
    return getattr(item, "__name__", "metric")


def user_spec(spec: str | UserMetric) -> MetricSpec:
    """A MetricSpec for a user function; its name is the function's name."""
    func = load_function(spec) if isinstance(spec, str) else spec
    name = metric_name(spec)

    def compute(ev: Evidence) -> MetricValue:
        stacked_ref = {k: v for k, v in ev.reference.items() if not isinstance(v, Ragged)}
        stacked_got = {k: v for k, v in ev.candidate.items() if not isinstance(v, Ragged)}
        try:
            result = func(stacked_ref, stacked_got, ev.labels)
        except Exception as exc:
            raise EdgeplugError(f"metric {name!r} raised {type(exc).__name__}: {exc}") from None
        if isinstance(result, Mapping):
            value = result.get("value")
            details = {k: v for k, v in result.items() if k != "value"}
        else:
            value, details = result, {}
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise EdgeplugError(f"metric {name!r} returned {value!r}, not a number") from None
        return MetricValue(number, details=details)

    return MetricSpec(name, compute, None, f"user metric {spec}", builtin=False)


def resolve(
    names: Sequence[str | UserMetric], detection: DetectionSettings | None = None
) -> dict[str, MetricSpec]:
    """The metrics a run computes: the built-ins named, and user functions (by their function name)."""
    builtins = builtin_specs(detection)
    specs: dict[str, MetricSpec] = {}
    for item in names:
        if isinstance(item, str) and item in builtins:
            specs[item] = builtins[item]
            continue
        if isinstance(item, str) and ":" not in item:
            from .options import suggest

            raise OptionError(
                f"unknown metric {item!r}: {suggest(item, builtins)}; or name a function as module:function"
            )
        spec = user_spec(item)
        if spec.name in builtins:
            raise OptionError(f"metric function {item!r} is named like the built-in {spec.name!r}; rename it")
        specs[spec.name] = spec
    return specs


def compute_all(
    specs: Mapping[str, MetricSpec], ev: Evidence, names: Sequence[str] | None = None
) -> dict[str, MetricValue]:
    """Every metric of `specs` (or those in `names`) on one reference/candidate pair."""
    return {name: spec.compute(ev) for name, spec in specs.items() if names is None or name in names}


def is_bad(value: float | None) -> bool:
    return value is not None and (math.isnan(value) or math.isinf(value))
