"""`edgeplug search`: the command line of the search."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import VerificationError


@click.command("search")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--data", required=True, help="Data the trials are judged on (split: selection / held-out report)."
)
@click.option("--calibration-data", help="Separate calibration data (default: split from --data).")
@click.option("--preprocess", help="For image folders: resize=HxW,mean=a/b/c,std=a/b/c,layout=NCHW|NHWC.")
@click.option("--metric", "metrics", multiple=True, help="A metric every trial reports (repeatable).")
@click.option(
    "--budget",
    "budgets",
    multiple=True,
    required=True,
    metavar="METRIC=VALUE",
    help="The budget every trial must meet.",
)
@click.option(
    "--objective", type=click.Choice(["latency", "size", "memory"]), default="latency", show_default=True
)
@click.option(
    "--space", type=click.Path(path_type=Path), help="TOML: chains, [plugin] key = [values], [width]."
)
@click.option(
    "--time-budget", help="Stop starting trials after this long (90s, 30m, 2h); the best so far is kept."
)
@click.option("--trials", type=int, help="Stop after this many trials.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Trials at a time.")
@click.option(
    "--address", help="A running Ray cluster (HOST:PORT or ray://HOST:10001); default: a local Ray."
)
@click.option("--resume", is_flag=True, help="Continue the search in --output-dir, skipping finished trials.")
@click.option("--output-dir", type=click.Path(path_type=Path), help="Default edgeplug-out/MODEL-search.")
@click.option(
    "--cache", type=click.Path(path_type=Path), help="Step cache folder (default ~/.cache/edgeplug/steps)."
)
@click.option("--threads", type=int, default=1, show_default=True, help="onnxruntime threads of every trial.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def search(
    model: Path,
    data: str,
    calibration_data: str | None,
    preprocess: str | None,
    metrics: tuple[str, ...],
    budgets: tuple[str, ...],
    objective: str,
    space: Path | None,
    time_budget: str | None,
    trials: int | None,
    executor: str,
    workers: int,
    address: str | None,
    resume: bool,
    output_dir: Path | None,
    cache: Path | None,
    threads: int,
    seed: int,
    quiet: bool,
    debug: bool,
) -> None:
    """Search chains, options and layer widths for the fastest (or smallest) model meeting a budget."""
    from ..errors import OptionError
    from ..options import parse_budgets, parse_duration
    from .orchestrator import SearchSettings, run_search

    del debug  # handled by the group
    if trials is not None and trials < 1:
        raise OptionError(f"--trials must be at least 1, got {trials}")
    settings = SearchSettings(
        model=model,
        data=data,
        calibration_data=calibration_data,
        preprocess=preprocess,
        metrics=list(metrics),
        budgets=parse_budgets(budgets),
        objective=objective,
        space=space,
        time_budget_s=parse_duration(time_budget, "--time-budget") if time_budget else None,
        trials=trials,
        executor=executor,
        workers=workers,
        address=address,
        resume=resume,
        output_dir=output_dir,
        cache=cache,
        threads=threads,
        seed=seed,
        quiet=quiet,
    )
    result = run_search(settings)
    section = result.report["search"]
    click.echo(f"{len(result.trials)} trials, {section['cache']['hits']} cached steps reused")
    for kind, front in section["front"].items():
        click.echo(f"Pareto front ({section['objective']} vs {section['metric']}) on {kind}:")
        for point in front:
            mark = "" if point["passed"] else "  (misses the budget)"
            click.echo(
                f"  {point[section['objective']]:>10.4g}  {point['metric']:.4f}  {point['label']}{mark}"
            )
    if result.best is None:
        raise VerificationError(
            f"no trial met the budget {section['budgets']}; see {result.output_dir}/report.json"
        )
    held = section["held_out"]
    verdict = "meets" if held["passed"] else "MISSES"
    click.echo(
        f"best: {section['best']['label']} ({section['objective']} {section['best'][section['objective']]:.4g})"
    )
    click.echo(f"held-out check on {held['samples']} samples: {verdict} the budget {held['metrics']}")
    click.echo(f"re-run: {section['command']}")
    click.echo(f"wrote {result.output_dir}/")
