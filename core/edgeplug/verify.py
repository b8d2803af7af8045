"""Numeric comparison of two models on the same inputs: per output, per sample and per slice, the task
metrics and their budgets (a Verdict), and the layer-wise error profile that names the first diverging node.

The rule of budgets: the numeric criteria a plugin declares (rtol/atol, max_abs_error, max_slice_error, dead
slices, and its default metric budgets) judge the step against the model before it; budgets the user set
(`--budget`, `-o PLUGIN.min_<metric>`, a metric named with `--metric`) judge the result against the chain's
original model, which is what the user asked of it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from .metrics import (
    Evidence,
    MetricSpec,
    MetricValue,
    Ragged,
    builtin_specs,
    cosine,
    is_logits,
    is_numeric,
)
from .model import Model
from .runtime import run_all, session
from .tolerance import METRIC_PREFIX, Tolerance

__all__ = [
    "Ragged",
    "Verdict",
    "compare",
    "cosine",
    "error_profile",
    "evaluate",
    "first_divergence",
    "is_logits",
    "judge",
    "outputs_of",
]

SLICE_MAX = 4096  # axes longer than this are not sliced
SLICE_MIN_VALUES = 16  # a slice's relative error is judged only over at least this many values


def outputs_of(
    model: Model, samples: Sequence[dict[str, np.ndarray]], threads: int = 1, qdq_as_float: bool = False
) -> dict[str, Any]:
    """The model's outputs on every sample, concatenated along the batch axis (a Ragged list where the
    samples' shapes differ). `qdq_as_float` runs Q/DQ pairs as float operators, as an exact int8 engine."""
    return run_all(session(model.serialized(), threads, qdq_as_float=qdq_as_float), samples)


# -- per output ----------------------------------------------------------------------------------------
def compare(
    reference: Mapping[str, Any],
    actual: Mapping[str, Any],
    tol: Tolerance | None = None,
    samples: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Per output: max_abs_error, mean_rel_error (mean |d| over mean |ref|), cosine (whole output),
    min_sample_cosine, top1 (logits), the worst slice and dead slices; with an elementwise tolerance
    also how many values break |d| <= atol + rtol*|ref| (`mismatched`). Strings are compared exactly."""
    metrics: dict[str, dict[str, Any]] = {}
    for name, ref in reference.items():
        if name not in actual:
            metrics[name] = {"missing": True}
            continue
        got = actual[name]
        if not (is_numeric(ref) and is_numeric(got)):
            metrics[name] = _compare_exact(ref, got)
        elif isinstance(ref, Ragged) or isinstance(got, Ragged):
            metrics[name] = _compare_ragged(ref, got, tol)
        elif got.shape != ref.shape:
            metrics[name] = {"shape_mismatch": [list(ref.shape), list(got.shape)]}
        else:
            metrics[name] = _compare_arrays(ref, got, tol, samples or (len(ref) if ref.ndim else 1))
    return metrics


def _compare_arrays(ref: np.ndarray, got: np.ndarray, tol: Tolerance | None, samples: int) -> dict[str, Any]:
    r = ref.astype(np.float64)
    g = got.astype(np.float64)
    entry = _numbers(r.ravel(), g.ravel(), tol)
    if r.ndim and r.shape[0] % max(samples, 1) == 0 and r.size:
        rows_r, rows_g = r.reshape(samples, -1), g.reshape(samples, -1)
        per = [cosine(a, b) for a, b in zip(rows_r, rows_g)]
        entry["min_sample_cosine"] = min(per)
        entry["worst_sample"] = int(np.argmin(per))
    if is_logits(ref):
        entry["top1"] = float(np.mean(ref.argmax(1) == got.argmax(1)))
    entry.update(slices(r, g))
    return entry


def _numbers(r: np.ndarray, g: np.ndarray, tol: Tolerance | None) -> dict[str, Any]:
    """Whole-output figures. Non-finite values must sit where the reference has the same ones (an attention
    mask's -inf); the error figures are over the positions finite in both."""
    same_pattern = np.array_equal(np.isfinite(r), np.isfinite(g))
    finite = same_pattern and bool(np.all((r == g) | np.isfinite(r)))
    where = np.isfinite(r)  # a NaN or Inf the candidate puts there makes the error NaN or Inf
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(g[where] - r[where])
    scale = np.abs(r[where]).mean() if diff.size else 0.0
    entry: dict[str, Any] = {
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "mean_rel_error": float(diff.mean() / (scale + 1e-12)) if diff.size else 0.0,  # NaN propagates
        "cosine": cosine(r, g),
        "finite": finite,
    }
    if tol is not None and tol.elementwise:
        with np.errstate(invalid="ignore", over="ignore"):
            close = np.abs(g - r) <= (tol.atol or 0.0) + (tol.rtol or 0.0) * np.abs(r)
        bad = ~np.where(np.isfinite(r), close, r == g)
        entry["mismatched"] = int(bad.sum())
        entry["mismatched_fraction"] = float(bad.mean()) if bad.size else 0.0
    return entry


def _compare_ragged(ref: Any, got: Any, tol: Tolerance | None) -> dict[str, Any]:
    """Outputs whose shape depends on the input values: compared sample by sample."""
    ref_parts, got_parts = _parts(ref), _parts(got)
    if len(ref_parts) != len(got_parts):
        return {"shape_mismatch": [f"{len(ref_parts)} samples", f"{len(got_parts)} samples"]}
    for i, (a, b) in enumerate(zip(ref_parts, got_parts)):
        if a.shape != b.shape:
            return {"shape_mismatch": [list(a.shape), list(b.shape)], "sample": i}
    r = np.concatenate([a.astype(np.float64).ravel() for a in ref_parts]) if ref_parts else np.zeros(0)
    g = np.concatenate([b.astype(np.float64).ravel() for b in got_parts]) if got_parts else np.zeros(0)
    entry = _numbers(r, g, tol)
    per = [cosine(a, b) for a, b in zip(ref_parts, got_parts)]
    if per:
        entry["min_sample_cosine"] = min(per)
        entry["worst_sample"] = int(np.argmin(per))
    entry["per_sample_shapes"] = True
    return entry


def _parts(value: Any) -> list[np.ndarray]:
    if isinstance(value, Ragged):
        return [np.asarray(v) for v in value]
    return [np.asarray(value)]


def _compare_exact(ref: Any, got: Any) -> dict[str, Any]:
    """Strings and other non-numeric outputs: equal value by value, or not."""
    ref_parts, got_parts = _parts(ref), _parts(got)
    if [p.shape for p in ref_parts] != [p.shape for p in got_parts]:
        return {"shape_mismatch": [[list(p.shape) for p in ref_parts], [list(p.shape) for p in got_parts]]}
    unequal = sum(int(np.count_nonzero(a != b)) for a, b in zip(ref_parts, got_parts))
    total = sum(a.size for a in ref_parts)
    return {"exact": unequal == 0, "unequal_values": unequal, "values": total, "finite": True}


# -- slices --------------------------------------------------------------------------------------------
def slices(ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """Along each non-batch axis of size 2..4096: every slice's max |d| over its reference range, and the
    slices that vary in the reference but are constant in the candidate (dead)."""
    if ref.ndim < 2 or ref.size == 0 or not np.isfinite(ref).any():
        return {}
    if not (np.isfinite(ref).all() and np.isfinite(got).all()):  # slices judge the finite values only
        ref = np.where(np.isfinite(ref), ref, np.nan)
        got = np.where(np.isfinite(got), got, np.nan)
    overall = float(np.nanmax(ref) - np.nanmin(ref))
    if not overall > 0:
        return {}
    floor = overall * 1e-6
    worst: dict[str, Any] | None = None
    dead: list[dict[str, Any]] = []
    for axis in range(1, ref.ndim):
        size = ref.shape[axis]
        if not 2 <= size <= SLICE_MAX:
            continue
        r = np.moveaxis(ref, axis, 0).reshape(size, -1)
        g = np.moveaxis(got, axis, 0).reshape(size, -1)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices of masked outputs
            r_lo, r_hi = np.nanmin(r, 1), np.nanmax(r, 1)
            g_lo, g_hi = np.nanmin(g, 1), np.nanmax(g, 1)
            err = np.nanmax(np.abs(g - r), 1)
        span = r_hi - r_lo
        varying = span > floor
        constant = (g_hi == g_lo) & np.isfinite(g_lo)
        killed = np.nonzero(varying & constant)[0]
        if killed.size:
            dead.extend(_dead_runs(axis, size, killed, r_lo, r_hi, g_lo))
        judged = varying & (r.shape[1] >= SLICE_MIN_VALUES)
        if judged.any():
            rel = np.where(judged, err / np.where(varying, span, 1.0), -np.inf)
            index = int(np.argmax(rel))
            if worst is None or rel[index] > worst["error"]:
                worst = {
                    "axis": axis,
                    "index": index,
                    "of": size,
                    "error": float(rel[index]),
                    "reference_range": [float(r_lo[index]), float(r_hi[index])],
                    "candidate_range": [float(g_lo[index]), float(g_hi[index])],
                }
    result: dict[str, Any] = {}
    if worst is not None:
        result["worst_slice"] = worst
    if dead:
        result["dead_slices"] = dead
    return result


def _dead_runs(
    axis: int, size: int, killed: np.ndarray, r_lo: np.ndarray, r_hi: np.ndarray, value: np.ndarray
) -> list[dict[str, Any]]:
    """Consecutive dead indices grouped: axis 1 indices 4-5 (of 6) constant 0; reference range 0-0.67."""
    runs: list[list[int]] = []
    for index in killed.tolist():
        if runs and index == runs[-1][-1] + 1 and value[index] == value[runs[-1][-1]]:
            runs[-1].append(index)
        else:
            runs.append([index])
    return [
        {
            "axis": axis,
            "first": run[0],
            "last": run[-1],
            "of": size,
            "value": float(value[run[0]]),
            "reference_range": [float(r_lo[run].min()), float(r_hi[run].max())],
        }
        for run in runs
    ]


def describe_dead(output: str, run: Mapping[str, Any]) -> str:
    where = f"{run['first']}" if run["first"] == run["last"] else f"{run['first']}-{run['last']}"
    noun = "index" if run["first"] == run["last"] else "indices"
    lo, hi = run["reference_range"]
    return (
        f"output {output} axis {run['axis']} {noun} {where} (of {run['of']}) constant {run['value']:.4g} "
        f"after the step; reference range {lo:.4g} to {hi:.4g}"
    )


# -- numeric criteria ------------------------------------------------------------------------------------
def check(metrics: Mapping[str, Mapping[str, Any]], tol: Tolerance) -> list[str]:
    """The failed numeric criteria, one sentence each (budgets of metrics are judged in `judge`)."""
    failures: list[str] = []
    for name, m in metrics.items():
        if m.get("missing"):
            failures.append(f"output {name} is missing")
            continue
        if "shape_mismatch" in m:
            a, b = m["shape_mismatch"]
            where = f" on sample {m['sample']}" if "sample" in m else ""
            failures.append(f"output {name} changed shape {a} -> {b}{where}")
            continue
        if "exact" in m:
            if not m["exact"]:
                failures.append(f"output {name}: {m['unequal_values']} of {m['values']} values differ")
            continue
        if not m["finite"]:
            failures.append(f"output {name} has NaN or Inf values the reference does not have")
        if tol.elementwise:
            if "mismatched" not in m:
                raise ValueError(
                    "an elementwise tolerance needs the metrics of compare(reference, actual, tol)"
                )
            if m["mismatched"]:
                failures.append(
                    f"output {name}: {m['mismatched']} values ({m['mismatched_fraction']:.2%}) differ by more "
                    f"than atol {tol.atol or 0:g} + rtol {tol.rtol or 0:g}*|ref| "
                    f"(max abs error {m['max_abs_error']:.3g})"
                )
        # written as "not (x <= bound)" so that a NaN metric fails instead of passing
        if tol.max_abs_error is not None and not m["max_abs_error"] <= tol.max_abs_error:
            failures.append(f"output {name}: max abs error {m['max_abs_error']:.3g} > {tol.max_abs_error:g}")
        worst = m.get("worst_slice")
        if tol.max_slice_error is not None and worst and not worst["error"] <= tol.max_slice_error:
            failures.append(
                f"output {name}: axis {worst['axis']} index {worst['index']} (of {worst['of']}) is off by "
                f"{worst['error']:.3g} of its reference range > {tol.max_slice_error:g}"
            )
        if m.get("dead_slices") and not tol.waived_dead:
            failures.extend(describe_dead(name, run) for run in m["dead_slices"])
    return failures


# -- verdicts ------------------------------------------------------------------------------------------
@dataclass
class Verdict:
    """The judgement of one candidate: per-output comparison, every metric against the previous model and
    the original, the budgets applied, and the failed criteria (empty: passed)."""

    outputs: dict[str, dict[str, Any]]
    metrics: dict[str, MetricValue]
    failures: list[str]
    metrics_vs_original: dict[str, MetricValue] = field(default_factory=dict)
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def margin(self) -> float:
        """The smallest budget margin (value - budget); negative when a budget is missed. Searches rank by it."""
        margins = [b["margin"] for b in self.budgets.values() if b.get("margin") is not None]
        return min(margins) if margins else 0.0

    def value(self, metric: str) -> float | None:
        found = self.metrics_vs_original.get(metric) or self.metrics.get(metric)
        return None if found is None else found.value

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "passed": self.passed,
            "failures": self.failures,
            "outputs": self.outputs,
            "metrics": {k: v.as_dict() for k, v in self.metrics.items()},
            "budgets": self.budgets,
        }
        if self.metrics_vs_original:
            data["metrics_vs_original"] = {k: v.as_dict() for k, v in self.metrics_vs_original.items()}
        if self.notes:
            data["notes"] = self.notes
        return data


def judge(
    reference: Mapping[str, Any],
    candidate: Mapping[str, Any],
    tol: Tolerance,
    *,
    specs: Mapping[str, MetricSpec] | None = None,
    labels: np.ndarray | None = None,
    samples: int | None = None,
    original: Mapping[str, Any] | None = None,
    user_budgets: Sequence[str] = (),
    judged_against: str = "previous",
) -> Verdict:
    """Compare `candidate` with `reference` (the previous model) and, where given, with `original` (the
    chain's first model), compute every metric of `specs` plus those the budgets name, and apply `tol`.
    `user_budgets` names the metrics whose budget the user set: they are judged against `original`, as is
    every budget of a step `judged_against` the original (distillation)."""
    count = samples or _samples_of(reference)
    outputs = compare(reference, candidate, tol, count)
    failures = check(outputs, tol)
    all_specs = dict(builtin_specs())
    all_specs.update(specs or {})
    wanted = list(dict.fromkeys([*(specs or {}), *tol.metric_budgets]))
    unknown = [m for m in wanted if m not in all_specs]
    if unknown:
        raise ValueError(f"no metric named {', '.join(unknown)}")
    values = {m: all_specs[m].compute(Evidence(reference, candidate, labels, count)) for m in wanted}
    vs_original: dict[str, MetricValue] = {}
    if original is not None:
        vs_original = {m: all_specs[m].compute(Evidence(original, candidate, labels, count)) for m in wanted}
    verdict = Verdict(outputs, values, failures, vs_original)
    for metric, minimum in tol.metric_budgets.items():
        against_original = original is not None and (metric in user_budgets or judged_against == "original")
        found = (vs_original if against_original else values)[metric]
        entry: dict[str, Any] = {
            "min": minimum,
            "against": "original" if against_original else "previous",
            "value": found.value,
            "set_by": _set_by(metric, tol, user_budgets),
        }
        if found.value is None:
            entry["margin"] = None
            verdict.notes.append(f"{metric} not checked: {found.note}")
        elif math.isnan(found.value) or math.isinf(found.value):
            entry["margin"] = None
            verdict.failures.append(f"metric {metric} is {found.value} (not a number): cannot verify")
        else:
            entry["margin"] = found.value - minimum
            if not found.value >= minimum:
                verdict.failures.append(
                    f"{metric} {found.value:.5g} < {minimum:g}"
                    + (" (vs the original)" if against_original else "")
                )
        verdict.budgets[metric] = entry
    for metric, found in {**values, **vs_original}.items():
        if metric not in tol.metric_budgets and found.value is not None and math.isnan(found.value):
            verdict.failures.append(f"metric {metric} is NaN: cannot verify")
    return verdict


def _set_by(metric: str, tol: Tolerance, user_budgets: Sequence[str]) -> str:
    """Who set a budget: the user (-o, --budget), the run (a --metric's declared default), or the plugin."""
    if f"{METRIC_PREFIX}{metric}" in tol.user_set:
        return "user"
    return "metric default" if metric in user_budgets else "plugin"


def _samples_of(outputs: Mapping[str, Any]) -> int:
    for value in outputs.values():
        if isinstance(value, Ragged):
            return len(value)
        if isinstance(value, np.ndarray) and value.ndim:
            return len(value)
    return 1


def evaluate(
    reference: Mapping[str, Any], actual: Mapping[str, Any], tol: Tolerance, samples: int | None = None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """compare() then every criterion of `tol` (its metric budgets included): per-output metrics and failures."""
    verdict = judge(reference, actual, tol, samples=samples)
    return verdict.outputs, verdict.failures


def accuracy(outputs: Mapping[str, Any], labels: np.ndarray | None) -> float | None:
    """Top-1 accuracy of the first logits output against labels, when both exist."""
    if labels is None:
        return None
    for value in outputs.values():
        if is_logits(value) and len(value) == len(labels):
            return float(np.mean(value.argmax(1) == labels))
    return None


# -- layer-wise -----------------------------------------------------------------------------------------
def error_profile(
    before: Model,
    after: Model,
    sample: dict[str, np.ndarray],
    qdq_as_float: bool = False,
    tol: Tolerance | None = None,
) -> list[dict[str, Any]]:
    """Every float tensor `after` computes that `before` computes too, in `after`'s graph order, with its
    cosine, max abs error and max error relative to the reference tensor's range (Polygraphy's mark-all);
    with an elementwise `tol`, also how many values break it (`mismatched`)."""
    ref = intermediate_outputs(before, sample, qdq_as_float)
    got = intermediate_outputs(after, sample, qdq_as_float)
    profile = []
    for node in after.proto.graph.node:
        for tensor in node.output:
            if tensor not in ref or tensor not in got:
                continue
            a, b = ref[tensor], got[tensor]
            if a.shape != b.shape or a.dtype.kind != "f" or b.dtype.kind != "f":
                continue
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                diff = np.abs(a64 - b64)
                span = float(np.nanmax(a64) - np.nanmin(a64)) if a.size else 0.0
            max_abs = float(np.nanmax(diff)) if diff.size else 0.0
            row: dict[str, Any] = {}
            if tol is not None and tol.elementwise:
                row["mismatched"] = int(
                    np.count_nonzero(~(diff <= (tol.atol or 0) + (tol.rtol or 0) * np.abs(a64)))
                )
            profile.append(
                {
                    **row,
                    "node": node.name or f"<unnamed {node.op_type}>",
                    "op_type": node.op_type,
                    "tensor": tensor,
                    "cosine": cosine(a64, b64),
                    "max_abs_error": max_abs,
                    "range_error": max_abs / span if span > 0 else (0.0 if max_abs == 0 else math.inf),
                    "reference_range": span,
                    "finite": bool(np.isfinite(b64).all() or not np.isfinite(a64).all()),
                }
            )
    return profile


def first_divergence(
    before: Model, after: Model, sample: dict[str, np.ndarray], tol: Tolerance, qdq_as_float: bool = False
) -> dict[str, Any] | None:
    """The first node of `after`, in graph order, whose output differs from the same tensor of `before`
    beyond the step's numeric tolerance (cosine 0.999 where the tolerance has no numeric criterion)."""
    try:
        criterion = Tolerance(
            min_cosine=tol.min_cosine, max_abs_error=tol.max_abs_error, rtol=tol.rtol, atol=tol.atol
        )
        if not (
            criterion.elementwise or criterion.min_cosine is not None or criterion.max_abs_error is not None
        ):
            criterion = Tolerance(min_cosine=0.999)
        profile = error_profile(before, after, sample, qdq_as_float, criterion)
    except Exception as exc:
        return {"error": f"could not compare intermediate outputs: {exc}"}
    for compared, row in enumerate(profile, 1):
        if _diverges(row, criterion):
            return {**row, "tensors_compared": compared, "profile": _compact(profile)}
    return {"node": None, "tensors_compared": len(profile), "profile": _compact(profile)}


def _diverges(row: Mapping[str, Any], tol: Tolerance) -> bool:
    if not row["finite"]:
        return True
    if tol.min_cosine is not None and not row["cosine"] >= tol.min_cosine:
        return True
    if tol.max_abs_error is not None and not row["max_abs_error"] <= tol.max_abs_error:
        return True
    return bool(row.get("mismatched"))


def _compact(profile: list[dict[str, Any]], limit: int = 400) -> list[dict[str, Any]]:
    """The profile for the report: at most `limit` rows (evenly spaced when longer), rounded."""
    step = max(1, math.ceil(len(profile) / limit))
    return [
        {
            "node": r["node"],
            "op_type": r["op_type"],
            "cosine": round(r["cosine"], 6),
            "range_error": None if math.isinf(r["range_error"]) else round(r["range_error"], 6),
        }
        for r in profile[::step]
    ]


def tensor_session(model: Model, names: Sequence[str] | None = None, qdq_as_float: bool = False) -> Any:
    """A session whose outputs are the model's outputs and the named tensors (every tensor a node computes when
    `names` is None), graph optimizations off so that each node runs; reuse it for many samples."""
    proto = model.copy_proto()
    existing = {o.name for o in proto.graph.output}
    wanted = names if names is not None else [name for node in proto.graph.node for name in node.output]
    for name in wanted:
        if name and name not in existing:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
            existing.add(name)
    return session(proto.SerializeToString(), optimize=False, qdq_as_float=qdq_as_float)


def intermediate_outputs(
    model: Model, sample: dict[str, np.ndarray], qdq_as_float: bool = False
) -> dict[str, np.ndarray]:
    """Every tensor a node computes, on one sample (graph optimizations off, so each node runs)."""
    sess = tensor_session(model, qdq_as_float=qdq_as_float)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, (np.asarray(v) for v in sess.run(names, sample))))
