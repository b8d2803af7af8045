"""Building a cascade artifact: copy the models into `cascade/`, cost them, calibrate the gate on the
selection samples, write the manifest, and report the cascade on the validation samples."""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from edgeplug.plugin_api import (
    Artifact,
    Dataset,
    Model,
    PluginError,
    RunContext,
    Tolerance,
    Verdict,
    measure_latency,
    run_each,
)

from . import calibration, gates, members
from .gates import Gate
from .manifest import FOLDER, NAME, Entry, Manifest, sha256
from .members import ROUTE_OUTPUT, Member
from .routing import expected_cost, reached
from .runner import CascadeRunner
from .settings import AdaptiveSettings

KIND = "cascade"
GATE_FILE = "gate.py"


@dataclasses.dataclass(frozen=True)
class Built:
    """The artifact, and the verdict of the cascade against its largest model on the validation samples."""

    artifact: Artifact
    verdict: Verdict
    reference: Path
    tolerance: Tolerance


def build(
    model: Model,
    ctx: RunContext,
    settings: AdaptiveSettings,
    gate: Gate,
    loaded: Mapping[str, Model],
    selection: Selection | None = None,
) -> Built:
    """The cascade of `model` (the chain's final model) and the others `settings.models` names: files,
    costs, thresholds calibrated on `selection` (held out by pre_optimize), manifest, validation report."""
    texts = members.specs_of(settings.models)
    cascade = members.load(texts, model, ctx.original, loaded)
    members.check_compatible(cascade)
    gate = gates.fit(gate, cascade[0].model.inputs, cascade[0].model.outputs, cascade[0].file)
    tolerance = ctx.tolerance
    folder = _fresh_folder(Path(ctx.workdir) / FOLDER)
    paths = [m.model.save(folder / m.file) for m in cascade]
    costs, timings = _costs(settings, cascade, paths, ctx)

    held = selection or hold_out(ctx, 1.0)
    selection, labels = held.samples, held.labels
    if "accuracy" in tolerance.metric_budgets and labels is None:
        raise PluginError(
            "adaptive: the accuracy budget needs labels for the calibration samples the gate is chosen on, "
            "and they have none (put `labels` in the calibration data)"
        )
    outputs = [ctx.evaluate(m.model, selection) for m in cascade]
    if gate.needs_logits:
        gate = dataclasses.replace(
            gate, softmax=not all(gates.looks_like_probabilities(o[gate.output]) for o in outputs[:-1])
        )
    batch = Dataset.stack(selection)
    scores = [gate.score(batch, outputs[k], None) for k in range(len(cascade) - 1)]
    largest = outputs[-1]

    def judge(candidate: dict[str, Any]) -> Verdict:
        return ctx.judge(
            candidate,
            reference=largest,
            original=largest,
            labels=labels,
            tolerance=tolerance,
            samples=len(selection),
        )

    ctx.log(f"calibrating {gate.describe()} on {len(selection)} selection samples")
    found = calibration.search(gate, scores, outputs, costs, judge, settings.margin, settings.thresholds)
    chosen = found.chosen

    recorded_gate, extra = _gate_files(gate, folder)
    manifest = Manifest(
        models=[
            Entry(m.file, sha256(p.read_bytes()), round(c, 6), m.origin)
            for m, p, c in zip(cascade, paths, costs)
        ],
        gate=recorded_gate,
        thresholds=list(chosen.thresholds),
        route_output=ROUTE_OUTPUT,
        files={p.name: sha256(p.read_bytes()) for p in extra},
        budget=tolerance.as_dict(),
        selection={"samples": len(selection), **chosen.as_dict()},
    )
    files = [manifest.write(folder / NAME), *paths, *extra]
    relative = [f"{FOLDER}/{p.name}" for p in paths]
    info = {
        "manifest": f"{FOLDER}/{NAME}",
        "models": relative,
        "reference_model": relative[-1],
        "route_output": ROUTE_OUTPUT,
        "gate": recorded_gate.as_dict(),
        "thresholds": manifest.as_dict()["thresholds"],
        "budget": tolerance.as_dict(),
    }
    artifact = Artifact.of(KIND, files, None, **info)

    ctx.record(
        "models",
        [
            {"file": rel, "origin": m.origin, "cost_ms": c, "timing": t}
            for rel, m, c, t in zip(relative, cascade, costs, timings)
        ],
    )
    ctx.record(
        "selection",
        {
            "samples": len(selection),
            "from": held.describe(),
            "labels": labels is not None,
            "margin": {
                metric: round(calibration.required_margin(minimum, settings.margin, len(selection)), 6)
                for metric, minimum in tolerance.metric_budgets.items()
            },
            "margin_rule": "adaptive.margin"
            if settings.margin is not None
            else "budget/n (conformal risk control)",
        },
    )
    ctx.record("calibration", found.table())
    ctx.record("chosen", chosen.as_dict())
    ctx.record("beats_largest", chosen.expected_ms < costs[-1])
    ctx.log(
        f"thresholds {', '.join(f'{t:.4g}' for t in chosen.thresholds)}: "
        f"{chosen.escalated:.1%} of the selection samples go on; expected {chosen.expected_ms:.4g} ms per "
        f"input against {costs[-1]:.4g} ms for {cascade[-1].file} alone"
    )
    if chosen.expected_ms >= costs[-1]:
        ctx.log(
            f"warning: at this budget the cascade is expected to cost {chosen.expected_ms:.4g} ms per input, "
            f"no less than {cascade[-1].file} alone ({costs[-1]:.4g} ms)"
        )

    verdict = _report_validation(ctx, artifact, cascade, gate, costs, tolerance)
    return Built(artifact, verdict, paths[-1], tolerance)


def with_reference(built: Built) -> Artifact:
    """The artifact with its reference model (the largest) and the budget, for the core to verify."""
    return dataclasses.replace(built.artifact, tolerance=built.tolerance, reference=built.reference)


def _fresh_folder(folder: Path) -> Path:
    """The cascade folder, emptied of a previous run's files (it belongs to the run's output)."""
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def _costs(
    settings: AdaptiveSettings, cascade: Sequence[Member], paths: Sequence[Path], ctx: RunContext
) -> tuple[list[float], list[dict[str, Any]]]:
    """Each model's cost per input: given, or the median latency measured with the core's benchmark (a
    fresh process per model, batch of one, the run's threads)."""
    given = settings.parsed_costs(len(cascade))
    if given is not None:
        return given, [{"source": "adaptive.costs"} for _ in given]
    costs, timings = [], []
    sample = ctx.data.validation[0]
    for member, path in ctx.progress(list(zip(cascade, paths)), "timing the models", total=len(paths)):
        timing = measure_latency(path, ctx.threads, settings.bench_runs, inputs=sample)
        timing["source"] = "measured here: median of the core benchmark (batch 1)"
        costs.append(float(timing["p50_ms"]))
        timings.append(timing)
        ctx.log(f"{member.file}: {timing['p50_ms']:.4g} ms per input (median of {settings.bench_runs} runs)")
    for small, large, member in zip(costs, costs[1:], cascade[1:]):
        if small >= large:
            ctx.log(
                f"warning: {member.file} is not slower than the model before it ({large:.4g} <= {small:.4g} "
                "ms); order the models smallest first"
            )
    return costs, timings


def hold_out(ctx: RunContext, share: float) -> Selection:
    """The selection samples: `share` of the calibration split, drawn with the run's seed and taken out of
    `ctx.data.calibration` (called from pre_optimize, before any step fits on calibration samples), so
    that the thresholds are chosen on samples no step has seen and the validation samples stay for
    verification. With share 1 the whole calibration split serves, and nothing is taken out."""
    data = ctx.data
    pool = list(data.calibration)
    labels = None if data.calibration_labels is None else np.asarray(data.calibration_labels)
    if not pool:
        raise PluginError(
            "adaptive: choosing the gate's thresholds needs calibration samples, and the run has none"
        )
    count = len(pool) if share >= 1.0 else min(max(1, round(len(pool) * share)), len(pool) - 1)
    if count == len(pool):
        return Selection(pool, labels, len(pool), held_out=False)
    order = np.random.default_rng(ctx.seed).permutation(len(pool))
    chosen, rest = np.sort(order[:count]), np.sort(order[count:])
    data.calibration = [pool[i] for i in rest]
    if labels is not None:
        data.calibration_labels = labels[rest]
    return Selection(
        [pool[i] for i in chosen], None if labels is None else labels[chosen], len(rest), held_out=True
    )


@dataclasses.dataclass(frozen=True)
class Selection:
    """The samples the thresholds are chosen on, their labels, how many calibration samples the steps
    keep, and whether the selection was held out from them."""

    samples: list[dict[str, np.ndarray]]
    labels: np.ndarray | None
    kept: int
    held_out: bool

    def describe(self) -> str:
        if self.held_out:
            return (
                f"held out of the calibration split before any step ran ({self.kept} calibration samples "
                "left for the steps); disjoint from the validation samples"
            )
        return (
            "the whole calibration split (earlier steps fit on it too); disjoint from the validation samples"
        )


def _gate_files(gate: Gate, folder: Path) -> tuple[Gate, list[Path]]:
    """A gate function from a file travels with the cascade (copied as gate.py, hashed in the manifest);
    one from an importable module is recorded by name."""
    if gate.kind != gates.FUNCTION or gate.function is None:
        return gate, []
    where, _, name = gate.function.rpartition(":")
    if not where.endswith(".py"):
        return gate, []
    target = folder / GATE_FILE
    shutil.copyfile(Path(where).expanduser(), target)
    return dataclasses.replace(gate, function=f"{GATE_FILE}:{name}", _loaded=None), [target]


def _report_validation(
    ctx: RunContext,
    artifact: Artifact,
    cascade: Sequence[Member],
    gate: Gate,
    costs: Sequence[float],
    tolerance: Tolerance,
) -> Verdict:
    """Run the artifact (through its runner, one input at a time as the core does) on the validation
    samples and judge it against the largest model; record the cascade and each model alone."""
    samples = ctx.data.validation
    labels = ctx.data.validation_labels
    largest = cascade[-1].model
    reference = (
        ctx.reference if largest is ctx.original and ctx.reference is not None else ctx.evaluate(largest)
    )
    runner = CascadeRunner(artifact, ctx.threads)
    got = run_each(runner, samples)
    answered = np.asarray(got.pop(ROUTE_OUTPUT)).astype(np.int64)

    def judged(candidate: dict[str, Any]) -> Verdict:
        return ctx.judge(
            candidate,
            reference=reference,
            original=reference,
            labels=labels,
            tolerance=tolerance,
            samples=len(samples),
        )

    verdict = judged(got)
    runs = reached(answered, len(cascade), gate)
    alone = []
    for member in cascade[:-1]:
        mine = judged(ctx.evaluate(member.model))
        alone.append({"file": member.file, **_values(mine), "passed": mine.passed})
    ctx.record(
        "validation",
        {
            "samples": len(samples),
            "reference": f"{FOLDER}/{cascade[-1].file} (the largest model)",
            "cascade": {
                **_values(verdict),
                "share_escalated": round(float(np.mean(answered > 0)), 6),
                "share_answered": [round(float(np.mean(answered == k)), 6) for k in range(len(cascade))],
                "expected_ms": round(expected_cost(runs, costs), 6),
                "passed": verdict.passed,
                "failures": verdict.failures,
            },
            "alone": alone,
            "largest_ms": costs[-1],
        },
    )
    shown = ", ".join(f"{k} {v:.4g}" for k, v in _values(verdict).items() if isinstance(v, float))
    ctx.log(
        f"validation ({len(samples)} samples): {shown} against {cascade[-1].file}, "
        f"{np.mean(answered > 0):.1%} escalated"
    )
    return verdict


def _values(verdict: Verdict) -> dict[str, float | None]:
    return {
        metric: (None if entry.get("value") is None or math.isnan(entry["value"]) else entry["value"])
        for metric, entry in verdict.budgets.items()
    }
