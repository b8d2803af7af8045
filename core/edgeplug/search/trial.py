"""One trial: an ordinary verified run of a chain (steps shared through the step cache), then the final model
timed with the core's bench on the machine that ran it. Top-level and picklable: it runs in a process pool
or as a Ray task."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EdgeplugError, VerificationError


@dataclass(frozen=True)
class TrialJob:
    id: str
    spec: dict[str, Any]  # TrialSpec.as_dict()
    label: str
    model: str
    data: str
    calibration: str
    metric: str
    metrics: list[str]
    budgets: dict[str, float]
    threads: int
    seed: int
    cache: str
    out: str
    bench_runs: int = 20
    extra: dict[str, Any] = field(default_factory=dict)


def node_kind(threads: int) -> tuple[str, dict[str, Any]]:
    """A name for the kind of machine (CPU model and int8 flags, threads) and its details."""
    from ..cpu import cpu_info

    info = cpu_info()
    kind = f"{info['model']} [{' '.join(info['flags'])}] x{threads} threads"
    return kind, {"host": platform.node(), **info}


def run_trial(job: TrialJob) -> dict[str, Any]:
    """Run the chain, read its report, time the final model; never raises for a trial that fails."""
    from ..bench import measure
    from ..pipeline import Pipeline, RunSettings
    from ..step_cache import StepCache

    kind, node = node_kind(job.threads)
    record: dict[str, Any] = {"id": job.id, "label": job.label, **job.spec, "node_kind": kind, "node": node}
    settings = RunSettings(
        plugins=list(job.spec["chain"]),
        options={k: dict(v) for k, v in job.spec["options"].items()},
        data=job.data,
        calibration_data=job.calibration,
        output_dir=Path(job.out),
        metrics=list(job.metrics),
        budgets=dict(job.budgets),
        threads=job.threads,
        seed=job.seed,
        quiet=True,
        step_cache=StepCache(Path(job.cache)),
    )
    start = time.perf_counter()
    try:
        result = Pipeline(Path(job.model), settings).run()
        record["status"] = "passed"
        final = Path(result.report["final"]["path"])
    except VerificationError as exc:
        record["status"] = "failed"
        record["error"] = str(exc)
        final = None
    except EdgeplugError as exc:
        record["status"] = "refused"
        record["error"] = str(exc)
        final = None
    record["seconds"] = round(time.perf_counter() - start, 3)
    report = _report(Path(job.out))
    record["passed"] = record["status"] == "passed"
    record["metric"] = final_metric(report, job.metric)
    record["cache_hits"] = sum(1 for s in report.get("steps", []) if s.get("cache") == "hit")
    record["steps"] = [
        {"plugin": s["plugin"], "status": s["status"], "cache": s.get("cache")}
        for s in report.get("steps", [])
    ]
    record["sensitivity"] = next(
        (
            s["details"]["sensitivity"]
            for s in report.get("steps", [])
            if (s.get("details") or {}).get("sensitivity")
        ),
        None,
    )
    if final is not None:
        data_file = final.with_name(f"{final.name}.data")
        record["size"] = final.stat().st_size + (data_file.stat().st_size if data_file.exists() else 0)
        timing = measure(final, job.threads, job.bench_runs, warmup=3)
        record["latency"] = timing["p50_ms"]
        record["memory"] = timing["memory_bytes"]
        record["model_path"] = str(final)
    return record


def _report(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return {}


def final_metric(report: dict[str, Any], metric: str) -> float | None:
    """The budget metric of the chain's result against the original: from the last applied (or the failing)
    step, or the original's own score when no step applied."""
    for step in reversed(report.get("steps", [])):
        if step.get("status") not in ("applied", "failed"):
            continue
        found = (step.get("verification") or {}).get("metrics_vs_original", {}).get(metric)
        if found is not None:
            return found.get("value")
    if report.get("status") == "ok":
        return (report.get("reference_scores") or {}).get(metric)
    return None
