"""Tensor-level repair: diagnose a candidate that misses the budget (diagnosis.py), keep its culprit tensors
in float, quantize again (the calibration ranges come from the float model, so the table is reused) and
judge again; repeat while it helps. The per-node sensitivity search (mixed_precision.py) comes after."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import onnx
from edgeplug.plugin_api import PluginError, RunContext, Verdict

from .calibration import Sample
from .diagnosis import diagnose
from .judging import Judge, describe, rank_key, worst_sample
from .ptq import Recipe, nodes_touching, quantize

MAX_ROUNDS = 4
MAX_PRUNE = 8  # tensors tried back in int8 after a repair that passes
SHOWN = 8  # culprits and profile rows written per round


@dataclass
class RepairResult:
    recipe: Recipe
    proto: onnx.ModelProto
    verdict: Verdict
    rounds: list[dict[str, Any]] = field(default_factory=list)


def repair_tensors(
    float_proto: onnx.ModelProto,
    recipe: Recipe,
    proto: onnx.ModelProto,
    verdict: Verdict,
    calibration: Sequence[Sample],
    judge: Judge,
    ctx: RunContext,
    deadline: float | None = None,
    max_rounds: int = MAX_ROUNDS,
) -> RepairResult:
    """Keep culprit tensors float round by round while the verdict improves; the best state is returned
    (`recipe` unchanged when no round helped)."""
    best = RepairResult(recipe, proto, verdict)
    rejected: set[str] = set()  # culprits kept float in a round that did not help
    for number in range(1, max_rounds + 1):
        if best.verdict.passed or (deadline is not None and time.monotonic() > deadline):
            break
        index = worst_sample(best.verdict)
        sample = ctx.data.validation[min(index, len(ctx.data.validation) - 1)]
        damages, profile = diagnose(
            float_proto,
            best.proto,
            sample,
            ctx.qdq_as_float,
            ctx.tolerance.max_slice_error,
            sliced_failures(best.verdict, ctx.tolerance.max_slice_error),
        )
        fresh = [
            d
            for d in damages
            if d.tier and d.tensor not in best.recipe.float_tensors and d.tensor not in rejected
        ]
        tier = min((d.tier for d in fresh), default=0)
        culprits = [d for d in fresh if d.tier == tier]  # the clear culprits first, the mild ones later
        entry: dict[str, Any] = {
            "round": number,
            "sample": index,
            "before": describe(best.verdict),
            "tensors_checked": len(damages),
            "tier": "clear" if tier == 1 else "mild",
            "first_divergence": _first_drop(profile, float_proto, best.proto),
        }
        best.rounds.append(entry)
        if not culprits:
            entry["result"] = "no quantized tensor stands out"
            break
        entry["culprits"] = [
            {**d.as_dict(), "nodes_kept_float": nodes_touching(float_proto, [d.tensor])} for d in culprits
        ][:SHOWN]
        if len(culprits) > SHOWN:
            entry["more_culprits"] = len(culprits) - SHOWN
        names = ", ".join(d.tensor for d in culprits[:3]) + (" ..." if len(culprits) > 3 else "")
        ctx.log(f"repair round {number}: keeping {len(culprits)} tensor(s) float ({names})")
        trial_recipe = best.recipe.keeping_float([d.tensor for d in culprits])
        try:
            trial = quantize(float_proto, trial_recipe, calibration)
        except PluginError as exc:
            entry["result"] = f"quantization failed: {exc}"
            break
        trial_verdict = judge.full(trial)
        entry["after"] = describe(trial_verdict)
        if rank_key(trial_verdict) < rank_key(best.verdict):
            entry["result"] = "kept: it helps"
            best = RepairResult(trial_recipe, trial, trial_verdict, best.rounds)
        else:
            entry["result"] = "dropped: it does not help"
            rejected.update(d.tensor for d in culprits)
            if tier == 1 and any(d.tier == 2 for d in fresh):
                continue  # the clear culprits did not help: the next round may try the mild ones
            break
    if best.verdict.passed and best.recipe is not recipe:
        best = _fewest(float_proto, recipe, best, calibration, judge, deadline)
    return best


def _fewest(
    float_proto: onnx.ModelProto,
    start: Recipe,
    best: RepairResult,
    calibration: Sequence[Sample],
    judge: Judge,
    deadline: float | None,
) -> RepairResult:
    """Put back into int8 each tensor the repair kept float, mildest first, while the budget still holds
    (at most MAX_PRUNE trials)."""
    added = [t for t in best.recipe.float_tensors if t not in start.float_tensors]
    if len(added) < 2:
        return best
    entry: dict[str, Any] = {"round": "fewest", "tried": [], "returned_to_int8": []}
    for tensor in list(reversed(added))[:MAX_PRUNE]:
        if deadline is not None and time.monotonic() > deadline:
            break
        trial_recipe = replace(
            best.recipe, float_tensors=tuple(t for t in best.recipe.float_tensors if t != tensor)
        )
        try:
            trial = quantize(float_proto, trial_recipe, calibration)
        except PluginError:
            continue
        verdict = judge.full(trial)
        entry["tried"].append(tensor)
        if verdict.passed:
            entry["returned_to_int8"].append(tensor)
            best = RepairResult(trial_recipe, trial, verdict, best.rounds)
    best.rounds.append(entry)
    return best


def sliced_failures(verdict: Verdict, max_slice_error: float | None) -> dict[str, str]:
    """Outputs the verdict found damaged slice by slice (dead slices, or a slice beyond the budget)."""
    found: dict[str, str] = {}
    for name, entry in verdict.outputs.items():
        if not isinstance(entry, dict):
            continue
        worst = entry.get("worst_slice")
        if entry.get("dead_slices"):
            found[name] = "slices constant after quantization"
        elif worst and max_slice_error is not None and worst["error"] > max_slice_error:
            found[name] = (
                f"axis {worst['axis']} index {worst['index']} off by {worst['error']:.3g} of its range"
            )
    return found


def _first_drop(
    profile: Sequence[dict[str, Any]],
    float_proto: onnx.ModelProto,
    candidate: onnx.ModelProto,
    threshold: float = 0.99,
) -> dict[str, Any] | None:
    """The first tensor of the layer-wise profile whose cosine with the float model falls below `threshold`;
    tensors made by a different op in the two models (a Relu the quantizer folded into its QuantizeLinear
    leaves the Conv's output under the Relu's name) are not comparable and skipped."""
    before = {o: n.op_type for n in float_proto.graph.node for o in n.output}
    after = {o: n.op_type for n in candidate.graph.node for o in n.output}
    for row in profile:
        if before.get(row["tensor"]) != after.get(row["tensor"]):
            continue
        if not row["finite"] or not row["cosine"] >= threshold:
            return {
                "node": row["node"],
                "op_type": row["op_type"],
                "tensor": row["tensor"],
                "cosine": round(float(row["cosine"]), 6),
            }
    return None
