"""Numeric comparison of two models on the same inputs, and localisation of the first diverging node."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from .model import Model
from .options import Tolerance
from .runtime import run_all, session


def outputs_of(
    model: Model, samples: Sequence[dict[str, np.ndarray]], threads: int = 1
) -> dict[str, np.ndarray]:
    """The model's outputs on every sample, concatenated along the batch axis."""
    return run_all(session(model.serialized(), threads), samples)


def is_logits(array: np.ndarray) -> bool:
    return array.ndim == 2 and array.shape[1] >= 2 and array.dtype.kind == "f"


def evaluate(
    reference: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], tol: Tolerance
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """compare() then check(): the metrics per output and the failed criteria."""
    metrics = compare(reference, actual, tol)
    return metrics, check(metrics, tol)


def compare(
    reference: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], tol: Tolerance | None = None
) -> dict[str, dict[str, Any]]:
    """Per output: max_abs_error, mean_rel_error (mean |d| over mean |ref|), cosine, top1 (logits only);
    with an elementwise tolerance also how many values break |d| <= atol + rtol*|ref| (`mismatched`)."""
    metrics: dict[str, dict[str, Any]] = {}
    for name, ref in reference.items():
        if name not in actual:
            metrics[name] = {"missing": True}
            continue
        got = actual[name]
        if got.shape != ref.shape:
            metrics[name] = {"shape_mismatch": [list(ref.shape), list(got.shape)]}
            continue
        r = ref.astype(np.float64).ravel()
        g = got.astype(np.float64).ravel()
        finite = bool(np.isfinite(g).all() == np.isfinite(r).all())
        diff = np.abs(g - r)
        entry: dict[str, Any] = {
            "max_abs_error": float(diff.max()) if diff.size else 0.0,
            "mean_rel_error": float(diff.mean() / (np.abs(r).mean() + 1e-12)) if diff.size else 0.0,
            "cosine": cosine(r, g),
            "finite": finite,
        }
        if is_logits(ref):
            entry["top1"] = float(np.mean(ref.argmax(1) == got.argmax(1)))
        if tol is not None and tol.elementwise:
            bad = ~(diff <= (tol.atol or 0.0) + (tol.rtol or 0.0) * np.abs(r))
            entry["mismatched"] = int(bad.sum())
            entry["mismatched_fraction"] = float(bad.mean()) if bad.size else 0.0
        metrics[name] = entry
    return metrics


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def check(metrics: dict[str, dict[str, Any]], tol: Tolerance) -> list[str]:
    """The failed criteria, one sentence each. An elementwise tolerance needs compare(..., tol)."""
    failures: list[str] = []
    for name, m in metrics.items():
        if m.get("missing"):
            failures.append(f"output {name} is missing")
            continue
        if "shape_mismatch" in m:
            failures.append(
                f"output {name} changed shape {m['shape_mismatch'][0]} -> {m['shape_mismatch'][1]}"
            )
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
        # written as "not (x >= bound)" so that a NaN metric fails instead of passing
        if tol.max_abs_error is not None and not m["max_abs_error"] <= tol.max_abs_error:
            failures.append(f"output {name}: max abs error {m['max_abs_error']:.3g} > {tol.max_abs_error:g}")
        if tol.min_cosine is not None and not m["cosine"] >= tol.min_cosine:
            failures.append(f"output {name}: cosine {m['cosine']:.5f} < {tol.min_cosine:g}")
        if tol.min_top1 is not None and "top1" in m and not m["top1"] >= tol.min_top1:
            failures.append(f"output {name}: top-1 agreement {m['top1']:.4f} < {tol.min_top1:g}")
    return failures


def accuracy(outputs: Mapping[str, np.ndarray], labels: np.ndarray | None) -> float | None:
    """Top-1 accuracy of the first logits output against labels, when both exist."""
    if labels is None:
        return None
    for value in outputs.values():
        if is_logits(value) and len(value) == len(labels):
            return float(np.mean(value.argmax(1) == labels))
    return None


def first_divergence(
    before: Model, after: Model, sample: dict[str, np.ndarray], tol: Tolerance
) -> dict[str, Any] | None:
    """Run both models with every intermediate tensor marked as an output (Polygraphy's mark-all) and
    return the first node of `after`, in graph order, whose output differs from the same tensor of `before`."""
    try:
        ref = _all_tensors(before, sample)
        got = _all_tensors(after, sample)
    except Exception as exc:
        return {"error": f"could not compare intermediate outputs: {exc}"}
    any_criterion = tol.elementwise or tol.min_cosine is not None or tol.max_abs_error is not None
    # top-1 means nothing on intermediate tensors, so only the numeric criteria localise a divergence
    criterion = (
        Tolerance(min_cosine=tol.min_cosine, max_abs_error=tol.max_abs_error, rtol=tol.rtol, atol=tol.atol)
        if any_criterion
        else Tolerance(min_cosine=0.999)
    )
    compared = 0
    for node in after.proto.graph.node:
        for tensor in node.output:
            if tensor not in ref or tensor not in got:
                continue
            a, b = ref[tensor], got[tensor]
            if a.shape != b.shape or a.dtype.kind != "f" or b.dtype.kind != "f":
                continue
            compared += 1
            metrics, failures = evaluate({tensor: a}, {tensor: b}, criterion)
            if failures:
                return {
                    "node": node.name or f"<unnamed {node.op_type}>",
                    "op_type": node.op_type,
                    "tensor": tensor,
                    "max_abs_error": metrics[tensor]["max_abs_error"],
                    "cosine": metrics[tensor]["cosine"],
                    "tensors_compared": compared,
                }
    return {"node": None, "tensors_compared": compared}


def _all_tensors(model: Model, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    proto = model.copy_proto()
    existing = {o.name for o in proto.graph.output}
    for node in proto.graph.node:
        for name in node.output:
            if name and name not in existing:
                proto.graph.output.append(onnx.ValueInfoProto(name=name))
                existing.add(name)
    sess = session(proto.SerializeToString(), optimize=False)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, (np.asarray(v) for v in sess.run(names, sample))))
