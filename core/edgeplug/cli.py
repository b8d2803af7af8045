"""The `edgeplug` command: run, plugins, inspect, bench, infer.

Exit codes: 0 success, 1 a step failed verification, 2 a user error (one line `edgeplug: error: ...`;
a full disk, a read-only folder and running out of memory are user errors), 3 an internal error,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM; the run's report and cleanup still happen). Tracebacks
only with --debug.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np

from .errors import EdgeplugError, OptionError, VerificationError, user_os_error

EXIT_VERIFY, EXIT_USER, EXIT_INTERNAL = 1, 2, 3
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that `finally` blocks run: the run's report is written,
    temporary files are removed, a measuring child is killed (KeyboardInterrupt: no `except Exception`
    in a plugin swallows it)."""


class Group(click.Group):
    """Maps edgeplug's exceptions to one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = "--debug" in sys.argv or bool(ctx.params.get("debug"))
        try:
            with _sigterm_raises():
                return super().invoke(ctx)
        except VerificationError as exc:
            _fail(exc, EXIT_VERIFY, debug)
        except EdgeplugError as exc:
            _fail(exc, EXIT_USER, debug)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except BrokenPipeError:  # `edgeplug plugins | head`: the reader went away, nothing to report
            sys.stderr.close()
            sys.exit(0)
        except Terminated:
            click.echo("edgeplug: terminated", err=True)
            sys.exit(EXIT_TERMINATED)
        except KeyboardInterrupt:
            click.echo("edgeplug: interrupted", err=True)
            sys.exit(130)
        except MemoryError as exc:
            _fail(
                EdgeplugError(
                    "ran out of memory: the model or its inputs are too large for this machine (pin smaller "
                    "dimensions with --input-shapes, or use fewer samples)"
                ),
                EXIT_USER,
                debug,
                exc,
            )
        except OSError as exc:
            error = user_os_error(exc)
            if error is None:
                _internal(exc, debug)
            _fail(error, EXIT_USER, debug, exc)
        except Exception as exc:
            _internal(exc, debug)


def _internal(exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    click.echo(f"edgeplug: error: internal error: {type(exc).__name__}: {exc} (rerun with --debug)", err=True)
    sys.exit(EXIT_INTERNAL)


def _fail(exc: BaseException | None, code: int, debug: bool, cause: BaseException | None = None) -> None:
    if debug:
        traceback.print_exception(cause or exc)
    message = " ".join(str(exc).split())
    click.echo(f"edgeplug: error: {message}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While a command runs, SIGTERM raises Terminated (main thread only; elsewhere nothing changes)."""

    def raise_terminated(signum: int, frame: Any) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, raise_terminated)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _warn(message: str) -> None:
    click.echo(f"edgeplug: warning: {message}", err=True)


def _options(values: tuple[str, ...]) -> dict[str, dict[str, str]]:
    from .options import parse_assignments

    return parse_assignments(values)


def _plugin_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="edgeplug")
def main(debug: bool) -> None:
    """Optimize ONNX models for edge devices with a verified chain of plugins."""


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--plugins", "plugin_names", required=True, help="Comma-separated plugins, run in this order.")
@click.option("-o", "--option", "opts", multiple=True, metavar="PLUGIN.KEY=VALUE", help="A plugin option.")
@click.option("--config", type=click.Path(path_type=Path), help="TOML file with [plugin] tables of options.")
@click.option("--data", help="Validation/calibration data: .npz, folder of .npy or images, or 'random'.")
@click.option("--calibration-data", help="Separate calibration data (then --data is all validation).")
@click.option("--preprocess", help="For image folders: resize=HxW,mean=a/b/c,std=a/b/c,layout=NCHW|NHWC.")
@click.option("--input-shapes", help="Pin dynamic dimensions: name:1x3x224x224[,name2:...].")
@click.option(
    "--output-dir", type=click.Path(path_type=Path), help="Where outputs go (default edgeplug-out/MODEL)."
)
@click.option(
    "--on-fail",
    type=click.Choice(["fail", "skip"]),
    default="fail",
    show_default=True,
    help="A step that fails verification stops the run, or is dropped.",
)
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    help="A task metric every step reports and is judged by: cosine, top1, top5, accuracy, detection, "
    "embedding, or module:function / file.py:function (repeatable).",
)
@click.option(
    "--budget",
    "budgets",
    multiple=True,
    metavar="METRIC=VALUE",
    help="The smallest value of a metric for every step, against the original model (repeatable).",
)
@click.option("--bench", is_flag=True, help="Measure latency after every step.")
@click.option("--threads", type=int, default=1, show_default=True, help="onnxruntime intra-op threads.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for data splits and generation.")
@click.option("--quiet", is_flag=True, help="Only errors on stderr.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def run(
    model: Path,
    plugin_names: str,
    opts: tuple[str, ...],
    config: Path | None,
    data: str | None,
    calibration_data: str | None,
    preprocess: str | None,
    input_shapes: str | None,
    output_dir: Path | None,
    on_fail: str,
    metrics: tuple[str, ...],
    budgets: tuple[str, ...],
    bench: bool,
    threads: int,
    seed: int,
    quiet: bool,
    debug: bool,
) -> None:
    """Optimize MODEL with the plugins in order, verifying every step."""
    from .api import CORE_OPTIONS, check_run_settings, check_selected, claim_output
    from .options import parse_budgets, parse_input_shapes
    from .pipeline import Pipeline, RunSettings

    given = _options(opts)
    check_selected(given, [*_plugin_list(plugin_names), CORE_OPTIONS], "--plugins")
    settings = RunSettings(
        plugins=_plugin_list(plugin_names),
        options=given,
        config=config,
        data=data,
        calibration_data=calibration_data,
        preprocess=preprocess,
        input_shapes=parse_input_shapes(input_shapes),
        output_dir=output_dir,
        on_fail=on_fail,
        bench=bench,
        threads=threads,
        seed=seed,
        quiet=quiet,
        debug=debug,
        metrics=list(metrics),
        budgets=parse_budgets(budgets),
    )
    check_run_settings(settings, warn=None if quiet else _warn)
    pipeline = Pipeline(model, settings)
    with claim_output(pipeline, settings):
        result = pipeline.run()
    click.echo(f"wrote {result.output_dir}/: " + ", ".join(written_files(result.report, result.output_dir)))


def written_files(report: dict[str, Any], out: Path) -> list[str]:
    """The files a run wrote, relative to its output folder: model, sidecar, reports, steps, compiled files."""
    final = report.get("final") or {}
    names = [Path(final["path"]).name] if final.get("path") else []
    if final.get("record"):
        names.append(Path(final["record"]).name)
    names += [n for n in ("report.json", "report.html") if (out / n).exists()]
    names += [f"steps/{Path(s['path']).name}" for s in report.get("steps", []) if s.get("path")]
    for file in (report.get("compile") or {}).get("files") or []:
        try:
            names.append(str(Path(file).resolve().relative_to(out.resolve())))
        except ValueError:
            names.append(str(file))
    return list(dict.fromkeys(names))


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--markdown",
    "markdown",
    metavar="NAME",
    help="The option table of plugin NAME as Markdown (its README's).",
)
def list_plugins(as_json: bool, markdown: str | None) -> None:
    """Installed plugins: name, distribution, version, hooks, options, and broken ones."""
    from . import plugins

    pm = plugins.load_plugins()
    infos = plugins.describe(pm)
    broken = plugins.broken()
    if markdown is not None:
        from .option_docs import option_table
        from .options import suggest

        found = {i.name: i for i in infos if i.name != "core"}
        if markdown not in found:
            raise OptionError(f"unknown plugin {markdown!r}: {suggest(markdown, found)}")
        click.echo(option_table(markdown, found[markdown].options))
        return
    if as_json:
        data = {
            "plugins": [
                {
                    "name": i.name,
                    "distribution": i.distribution,
                    "version": i.version,
                    "hooks": list(i.hooks),
                    "options": {
                        k: {
                            "type": o.type,
                            "default": _jsonable(o.default),
                            "help": o.help,
                            "choices": list(o.choices) if o.choices else None,
                        }
                        for k, o in i.options.items()
                    },
                }
                for i in infos
            ],
            "broken": broken,
        }
        click.echo(json.dumps(data, indent=2))
        return
    for info in infos:
        click.echo(f"{info.name}  ({info.distribution} {info.version})")
        click.echo(f"  hooks: {', '.join(info.hooks)}")
        for key, opt in info.options.items():
            choices = f" [{'|'.join(opt.choices)}]" if opt.choices else ""
            click.echo(f"  -o {info.name}.{key}={_jsonable(opt.default)}  ({opt.type}{choices}) {opt.help}")
    for name, error in broken.items():
        click.echo(f"{name}  BROKEN: {error}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    return value


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(model: Path, as_json: bool) -> None:
    """Inputs, outputs, opset, operator histogram, parameters and size of MODEL."""
    from .model import Model, describe

    info = describe(Model.load(model), model)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{model}  opset {info['opset']}  ir {info['ir_version']}  {info['producer']}")
    for line in info["inputs"]:
        click.echo(f"  input   {line}")
    for line in info["outputs"]:
        click.echo(f"  output  {line}")
    click.echo(
        f"  nodes {info['nodes']}, parameters {info['parameters']:,} ({info['nonzero_parameters']:,} non-zero), "
        f"size {info['size_bytes']:,} bytes"
    )
    click.echo("  ops: " + ", ".join(f"{k} {v}" for k, v in info["ops"].items()))


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--runs", type=int, default=50, show_default=True)
@click.option("--warmup", type=int, default=5, show_default=True)
@click.option("--rounds", type=int, default=3, show_default=True, help="Alternated rounds per model.")
@click.option(
    "--label", "labels", multiple=True, help="A label per model, in order (default: relative paths)."
)
@click.option(
    "--inputs",
    "inputs_path",
    type=click.Path(path_type=Path),
    help=".npz whose first sample feeds every model (default: generated from the input spec).",
)
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="Seconds one model's measurement may take before it is stopped (default: no limit).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench(
    models: tuple[Path, ...],
    threads: int,
    runs: int,
    warmup: int,
    rounds: int,
    labels: tuple[str, ...],
    inputs_path: Path | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Latency p50/p90 and memory of each model side by side, with ratios against the first."""
    from . import bench as bench_mod
    from .api import check_threads
    from .data import read_arrays, to_samples
    from .errors import DataError, OptionError
    from .model import Model

    check_threads(threads, _warn)
    if runs < 1 or warmup < 0:
        raise OptionError(f"--runs must be at least 1 and --warmup at least 0 (got {runs} and {warmup})")
    if timeout is not None and not 0 < timeout < float("inf"):
        raise OptionError(f"--timeout must be a positive number of seconds, not {timeout}")

    loaded = [Model.load(path) for path in models]  # refuse broken files with one line before timing
    if inputs_path is not None:
        arrays, _ = read_arrays(inputs_path, loaded[0])
        feed = to_samples(arrays, loaded[0], str(inputs_path))[0]
    else:
        for spec in loaded[0].inputs:
            if any(not isinstance(d, int) for d in spec.shape[1:]):
                raise DataError(
                    f"input {spec.name} has a dynamic dimension ({spec.describe()}); pass --inputs X.npz"
                )
        feed = None
    if labels and len(labels) != len(models):
        raise OptionError(
            f"--label given {len(labels)} times for {len(models)} models; give one per model or none"
        )
    if rounds < 1:
        raise OptionError(f"--rounds must be at least 1, got {rounds}")
    rows = bench_mod.compare(
        list(models),
        threads,
        runs,
        warmup,
        inputs=feed,
        timeout=timeout,
        rounds=rounds,
        labels=labels or None,
    )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from .cpu import cpu_info

    info = cpu_info()
    click.echo(
        f"{info['model']} [{' '.join(info['flags'])}], threads {threads}, {rounds} rounds x {runs} runs, alternated"
    )
    width = max(12, *(len(r["label"]) for r in rows))
    click.echo(
        f"{'model':{width}} {'p50 ms':>9} {'spread':>8} {'p90 ms':>9} {'memory MB':>10} {'size MB':>9} "
        f"{'speedup':>8} {'mem ratio':>9}"
    )
    for r in rows:
        mem = r["memory_ratio"]
        click.echo(
            f"{r['label']:{width}} {r['p50_ms']:9.3f} {r['spread_ms']:8.3f} {r['p90_ms']:9.3f} "
            f"{r['memory_bytes'] / 2**20:10.1f} {r['size_bytes'] / 2**20:9.3f} {r['speedup_p50']:7.2f}x "
            f"{(f'{mem:.2f}x' if mem else '-'):>9}"
        )
    for r in rows:
        if r["within_spread"]:
            click.echo(
                f"warning: {r['label']} differs from {rows[0]['label']} by less than the run-to-run spread "
                f"({abs(r['p50_ms'] - rows[0]['p50_ms']):.3f} ms <= {max(r['spread_ms'], rows[0]['spread_ms']):.3f} ms): "
                "its speedup is not significant; raise --runs/--rounds or measure a larger input",
                err=True,
            )


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path), help=".npz of inputs.")
@click.option(
    "--guard", "guards", multiple=True, help="Guard plugin(s), outermost first; comma lists allowed."
)
@click.option("-o", "--option", "opts", multiple=True, metavar="PLUGIN.KEY=VALUE")
@click.option("--config", type=click.Path(path_type=Path))
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    help="Write the outputs (a .npz archive) to exactly this path; its folder must exist.",
)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option(
    "--artifact", is_flag=True, help="Run the compiled artifact recorded beside MODEL (engine, C library)."
)
@click.option("--json", "as_json", is_flag=True)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def infer(
    model: Path,
    input_path: Path,
    guards: tuple[str, ...],
    opts: tuple[str, ...],
    config: Path | None,
    output: Path | None,
    threads: int,
    artifact: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Run MODEL on the inputs of a .npz, through the selected guards."""
    from .api import checked_infer
    from .output_dir import Input, check_output_file, write_atomically

    names = [g for item in guards for g in _plugin_list(item)]
    if output:  # refused before the model runs: a missing folder, or an output that is one of the inputs
        sidecar = model.with_name(f"{model.stem}.edgeplug.json")
        check_output_file(
            output,
            [
                Input(model, "the model"),
                Input(input_path, "--input"),
                Input(sidecar, "the model's run record"),
            ]
            + ([Input(config, "--config")] if config else []),
        )
    result = checked_infer(model, input_path, names, _options(opts), config, threads, artifact, warn=_warn)
    if output:
        write_atomically(output, lambda fh: np.savez(fh, **result.outputs))
    from .metrics import is_logits

    summary: dict[str, Any] = {
        "abstained": result.abstained,
        "reason": result.reason,
        "flags": result.flags,
        "outputs": {k: list(v.shape) for k, v in result.outputs.items()},
    }
    for name, value in result.outputs.items():
        if is_logits(value):
            summary.setdefault("top1", {})[name] = value.argmax(1).tolist()
    if as_json:
        click.echo(json.dumps(summary, default=str))
        return
    if result.abstained:
        click.echo(f"abstained: {result.reason}")
    for name, shape in summary["outputs"].items():
        top = summary.get("top1", {}).get(name)
        click.echo(f"{name}: shape {shape}" + (f", top-1 {top[:20]}" if top is not None else ""))
    for key, value in result.flags.items():
        click.echo(f"{key}: {_flag_text(value)}")
    if output:
        click.echo(f"wrote {output}")


def _flag_text(value: Any) -> str:
    """A flag for the terminal: a long per-input list of names as counts (--json keeps every entry)."""
    if isinstance(value, list) and len(value) > 20 and all(isinstance(v, str) for v in value):
        from collections import Counter

        return ", ".join(f"{name} x{count}" for name, count in Counter(value).most_common())
    return str(value)


def _register_commands() -> None:
    from .report_command import report
    from .search.command import search

    main.add_command(search)
    main.add_command(report)


_register_commands()

if __name__ == "__main__":
    main()
