"""The search loop: split the data, run the grid, then width proposals, record every trial, keep the best
that meets the budget on the selection split, check it on the held-out split, and write it like a run."""

from __future__ import annotations

import json
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import plugins
from ..budgets import RunMetrics
from ..data import Dataset, Preprocess, load_data
from ..errors import DataError, OptionError
from ..model import Model
from ..report import write_json
from ..step_cache import StepCache, data_fingerprint, default_folder, step_key
from ..verify import judge
from .executors import make_executor
from .front import pareto
from .space import SearchSpace, TrialSpec, load_space
from .trial import TrialJob
from .widths import propose_widths

OBJECTIVES = ("latency", "size", "memory")


@dataclass
class SearchSettings:
    model: Path
    data: str
    budgets: dict[str, float]
    calibration_data: str | None = None
    metrics: list[str] = field(default_factory=list)
    objective: str = "latency"
    space: Path | None = None
    time_budget_s: float | None = None
    trials: int | None = None
    executor: str = "local"
    workers: int = 1
    address: str | None = None
    resume: bool = False
    output_dir: Path | None = None
    threads: int = 1
    seed: int = 0
    cache: Path | None = None
    preprocess: str | None = None
    bench_runs: int = 20
    quiet: bool = False


@dataclass
class SearchResult:
    best: dict[str, Any] | None
    trials: list[dict[str, Any]]
    output_dir: Path
    report: dict[str, Any]


def run_search(s: SearchSettings) -> SearchResult:
    """Run or resume a search; returns the best trial (None when no trial met the budget)."""
    if s.objective not in OBJECTIVES:
        raise OptionError(f"unknown --objective {s.objective!r}: {', '.join(OBJECTIVES)}")
    if not s.budgets:
        raise OptionError("edgeplug search needs a budget: --budget METRIC=VALUE, e.g. --budget top1=0.99")
    if s.workers < 1:
        raise OptionError(f"--workers must be at least 1, got {s.workers}")
    run_metrics = RunMetrics.from_settings(s.metrics, s.budgets, {})
    metric = next(iter(run_metrics.budgets))
    model = Model.load(s.model)
    pm = plugins.load_plugins()
    space = load_space(s.space, plugins.names(pm), plugins.broken())
    out = Path(s.output_dir or Path("edgeplug-out") / f"{s.model.stem}-search")
    folder = out / "search"
    data = load_data(
        s.data, model, seed=s.seed, calibration=s.calibration_data, preprocess=Preprocess.parse(s.preprocess)
    )
    if not data.is_real:
        raise DataError("edgeplug search needs real data: --data FILE.npz (a folder of .npy or images)")
    files = write_splits(data, folder / "data", s.seed)
    cache = StepCache(s.cache or default_folder())
    identity = {
        "model": data_fingerprint([{"bytes": np.frombuffer(model.serialized(), np.uint8)}]),
        "data": [data_fingerprint(data.calibration), data_fingerprint(data.validation)],
        "budgets": run_metrics.budgets,
        "metrics": list(run_metrics.specs),
        "objective": s.objective,
        "space": {"chains": [list(c) for c in space.chains], "grid": space.grid, "width": str(space.width)},
        "threads": s.threads,
        "seed": s.seed,
    }
    from .study import Study

    study = Study(folder)
    trials = study.open(identity, s.resume)
    done = {t["id"] for t in trials}
    log = (lambda m: None) if s.quiet else (lambda m: print(f"[search] {m}", flush=True))
    if done:
        log(f"resuming: {len(done)} trial(s) already finished")
    start = time.monotonic()
    executor = make_executor(s.executor, s.workers, s.address)

    def job(spec: TrialSpec) -> TrialJob:
        trial_id = step_key(spec.as_dict())[:12]
        return TrialJob(
            id=trial_id,
            spec=spec.as_dict(),
            label=spec.label(),
            model=str(s.model),
            data=str(files["selection"]),
            calibration=str(files["calibration"]),
            metric=metric,
            metrics=list(run_metrics.named),
            budgets=dict(run_metrics.budgets),
            threads=s.threads,
            seed=s.seed,
            cache=str(cache.folder),
            out=str(folder / "trials" / trial_id),
            bench_runs=s.bench_runs,
        )

    def budget_left() -> bool:
        over_time = s.time_budget_s is not None and time.monotonic() - start >= s.time_budget_s
        over_count = s.trials is not None and len(trials) >= s.trials
        return not (over_time or over_count)

    def run(specs: list[TrialSpec]) -> None:
        pending = [job(spec) for spec in specs]
        pending = [j for j in pending if j.id not in done]
        while pending and budget_left():
            batch_size = s.workers if s.trials is None else min(s.workers, s.trials - len(trials))
            batch, pending = pending[:batch_size], pending[batch_size:]
            for record in executor.run(batch):
                trials.append(record)
                done.add(record["id"])
                study.record(record)
                shown = f"{metric} {record['metric']:.4f}" if record.get("metric") is not None else "-"
                timing = (
                    f", {s.objective} {record[s.objective]:.4g}"
                    if record.get(s.objective) is not None
                    else ""
                )
                log(f"trial {len(trials)} {record['label']}: {record['status']} ({shown}{timing})")

    try:
        run(space.trials())
        if space.width is not None and budget_left():
            run(width_phase(space, trials, metric, s, run))
    finally:
        executor.close()
    best = choose(trials, s.objective)
    report = finish(s, out, folder, files, model, run_metrics, metric, trials, best, cache, space, start)
    return SearchResult(best, trials, out, report)


def width_phase(
    space: SearchSpace, trials: list[dict[str, Any]], metric: str, s: SearchSettings, run: Any
) -> list[TrialSpec]:
    """Width trials: probe per-group sensitivity once (prune.sensitivity), then propose per-stage fractions
    from it and from the measured objective of earlier trials, in two rounds."""
    chains = [c for c in space.chains if "prune" in c]
    if not chains:
        return []
    sensitivity = next((t["sensitivity"] for t in trials if t.get("sensitivity")), None)
    if sensitivity is None:
        probe_fraction = sorted(space.width.fractions)[len(space.width.fractions) // 2] or 0.25
        probe = TrialSpec(
            ("prune",),
            {
                "prune": {
                    "mode": "structured",
                    "sparsity": probe_fraction,
                    "sensitivity": True,
                    "min_cosine": 0.0,
                }
            },
            origin="probe",
        )
        run([probe])
        sensitivity = next((t["sensitivity"] for t in trials if t.get("sensitivity")), None)
    if not sensitivity:
        return []
    first = space.width.proposals // 2 + space.width.proposals % 2
    proposals = propose_widths(space.width, chains, sensitivity, trials, s.objective, first, s.seed)
    run(proposals)
    return propose_widths(
        space.width, chains, sensitivity, trials, s.objective, space.width.proposals - first, s.seed + 1
    )


def choose(trials: list[dict[str, Any]], objective: str) -> dict[str, Any] | None:
    """The trial that met the budget (on the selection split) at the lowest objective; ties: higher metric."""
    passed = [
        t for t in trials if t.get("passed") and t.get(objective) is not None and t.get("origin") != "probe"
    ]
    if not passed:
        return None
    return min(passed, key=lambda t: (t[objective], -(t.get("metric") or 0.0)))


def write_splits(data: Dataset, folder: Path, seed: int) -> dict[str, Path]:
    """calibration.npz, and the validation samples split in two halves: selection (trials are judged on it)
    and report (the best trial is checked on it, disjoint from what chose it)."""
    if len(data.validation) < 4:
        raise DataError(
            f"edgeplug search needs at least 4 validation samples to keep a held-out half; {data.description}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed + 7).permutation(len(data.validation))
    half = len(order) // 2
    parts = {"selection": order[:half], "report": order[half:]}
    files = {"calibration": folder / "calibration.npz"}
    _save(files["calibration"], data.calibration, data.calibration_labels)
    for name, index in parts.items():
        files[name] = folder / f"{name}.npz"
        labels = None if data.validation_labels is None else data.validation_labels[index]
        _save(files[name], [data.validation[i] for i in index], labels)
    return files


def _save(path: Path, samples: list[dict[str, np.ndarray]], labels: np.ndarray | None) -> None:
    arrays = Dataset.stack(samples) if samples else {}
    if labels is not None:
        arrays["labels"] = labels
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def finish(
    s: SearchSettings,
    out: Path,
    folder: Path,
    files: dict[str, Path],
    model: Model,
    run_metrics: RunMetrics,
    metric: str,
    trials: list[dict[str, Any]],
    best: dict[str, Any] | None,
    cache: StepCache,
    space: SearchSpace,
    start: float,
) -> dict[str, Any]:
    """Write the best trial's run as the search's output, with the held-out check and the search section."""
    search: dict[str, Any] = {
        "objective": s.objective,
        "metric": metric,
        "budgets": run_metrics.budgets,
        "trials": trials,
        "front": pareto(trials, s.objective, metric),
        "cache": {"hits": sum(t.get("cache_hits", 0) for t in trials), "folder": str(cache.folder)},
        "seconds": round(time.monotonic() - start, 1),
        "chains": [",".join(c) for c in space.chains],
    }
    if best is None:
        report = {
            "status": "failed",
            "error": f"no trial met the budget {run_metrics.budgets}",
            "search": search,
        }
        write_json(out / "report.json", report)
        return report
    trial_out = folder / "trials" / best["id"]
    report = json.loads((trial_out / "report.json").read_text())
    for item in trial_out.iterdir():
        if item.name == "report.json":
            continue
        target = out / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)
    search["best"] = {"trial": best["id"], "label": best["label"], s.objective: best[s.objective]}
    search["held_out"] = held_out(model, Path(best["model_path"]), files["report"], run_metrics, s)
    search["command"] = rerun_command(s, best)
    report["search"] = search
    report["final"]["path"] = str(out / Path(report["final"]["path"]).name)
    write_json(out / "report.json", report)
    return report


def held_out(
    model: Model, best: Path, report_data: Path, run_metrics: RunMetrics, s: SearchSettings
) -> dict[str, Any]:
    """The best model judged against the original on the held-out split, with the run's budgets."""
    from ..tolerance import Tolerance
    from ..verify import outputs_of

    data = load_data(str(report_data), model, seed=s.seed, calibration=str(report_data))
    original = outputs_of(model, data.validation, s.threads)
    candidate = outputs_of(Model.load(best), data.validation, s.threads)
    tol = Tolerance().with_budgets(run_metrics.budgets, {f"min_{m}" for m in run_metrics.budgets})
    verdict = judge(
        original,
        candidate,
        tol,
        specs=run_metrics.specs,
        labels=data.validation_labels,
        samples=len(data.validation),
        original=original,
        user_budgets=tuple(run_metrics.budgets),
    )
    return {
        "samples": len(data.validation),
        "passed": verdict.passed,
        "failures": verdict.failures,
        "metrics": {k: v.value for k, v in verdict.metrics_vs_original.items()},
    }


def rerun_command(s: SearchSettings, best: dict[str, Any]) -> str:
    """The best chain as an `edgeplug run` command."""
    parts = ["edgeplug", "run", str(s.model), "--plugins", ",".join(best["chain"])]
    for plugin, table in sorted(best["options"].items()):
        for key, value in sorted(table.items()):
            if isinstance(value, list):
                text = ",".join(map(str, value))
            else:
                text = str(value).lower() if isinstance(value, bool) else str(value)
            parts += ["-o", f"{plugin}.{key}={text}"]
    parts += ["--data", s.data]
    if s.calibration_data:
        parts += ["--calibration-data", s.calibration_data]
    for name in s.metrics:
        parts += ["--metric", name]
    for name, value in s.budgets.items():
        parts += ["--budget", f"{name}={value:g}"]
    return " ".join(shlex.quote(p) for p in parts)
