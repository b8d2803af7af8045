"""The short Python ways in: `edgeplug.optimize(...)` and `edgeplug.infer(...)`, with their arguments
checked so that a misuse raises edgeplug's own errors (OptionError, DataError, OutputError), never a raw
TypeError from deep inside; and the checks the command line shares (threads, seed, config, options for
plugins a command does not use)."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DataError, OptionError, user_os_error
from .model import Model
from .options import suggest
from .plugins import CORE

if TYPE_CHECKING:
    from .context import InferenceResult
    from .pipeline import RunResult, RunSettings

ON_FAIL = ("fail", "skip")
THREADS_HARD_CAP = 4  # --threads above this many times the CPU count is refused
CORE_OPTIONS = CORE  # `-o core.*`: the run's own settings (metrics), always selected


def optimize(
    model: str | os.PathLike[str] | Model,
    plugins: Sequence[str] | str,
    data: str | os.PathLike[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    **settings: Any,
) -> RunResult:
    """Run the chain `plugins` (a list, or a comma-separated string) on `model` with verification after
    every step; returns the final Model, the report dict and the output folder. Keyword settings are
    RunSettings fields (on_fail, bench, threads, seed, config, calibration_data, input_shapes, ...)."""
    from .pipeline import Pipeline, RunSettings

    source = _model_source(model)
    names = plugin_names(plugins, "plugins")
    known = {f.name for f in dataclasses.fields(RunSettings)} - {"plugins", "options", "data", "output_dir"}
    for key in settings:
        if key not in known:
            raise OptionError(f"edgeplug.optimize() got an unknown setting {key!r}: {suggest(key, known)}")
    given = option_tables(options, "options")
    check_selected(given, [*names, CORE_OPTIONS], "the chain")
    run_settings = RunSettings(
        plugins=names,
        options=given,
        data=_path_text(data, "data"),
        output_dir=_path(output_dir, "output_dir"),
        quiet=_flag(settings.pop("quiet", True), "quiet"),
        **settings,
    )
    check_run_settings(run_settings, warn=_warn, cli=False)
    pipeline = Pipeline(source, run_settings)
    with user_errors(), claim_output(pipeline, run_settings):
        return pipeline.run()


def infer(
    model: str | os.PathLike[str],
    inputs: Mapping[str, Any] | str | os.PathLike[str],
    guards: Sequence[str] | str = (),
    options: Mapping[str, Mapping[str, Any]] | None = None,
    config: str | os.PathLike[str] | None = None,
    threads: int = 1,
    artifact: bool = False,
) -> InferenceResult:
    """Run `model` on `inputs` (a dict of arrays, or a .npz) through the selected guard plugins, outermost
    first (`guards`: a list, or a comma-separated string); see `edgeplug.inference.infer`."""
    return checked_infer(model, inputs, guards, options, config, threads, artifact, warn=_warn, cli=False)


def checked_infer(
    model: Any,
    inputs: Any,
    guards: Any,
    options: Any,
    config: Any,
    threads: Any,
    artifact: Any,
    warn: Callable[[str], None] | None,
    cli: bool = True,
) -> InferenceResult:
    """`infer` with every argument checked first (`edgeplug infer` and `edgeplug.infer`); warnings go to
    `warn`: a config table for a plugin that is not a selected guard, threads above the CPU count."""
    from .inference import infer as run_inference

    path = _path(model, "model")
    if path is None:
        raise OptionError("edgeplug.infer() needs a model path")
    if not isinstance(inputs, (Mapping, str, os.PathLike)):
        raise DataError(
            f"inputs must be a dict of arrays (input name -> array) or a .npz path, not {type(inputs).__name__}"
        )
    names = plugin_names(guards, "guards")
    given = option_tables(options, "options")
    check_selected(given, names, "--guard", flag="--guard")
    config_path = _path(config, "config")
    check_config(config_path)
    check_threads(threads, warn=warn, flag="--threads" if cli else "threads")
    flag = _flag(artifact, "artifact")
    for table in unused_config_tables(config_path, names):
        if warn is not None:
            warn(f"config file {config_path}: [{table}] is ignored: {table} is not a selected --guard")
    with user_errors():
        return run_inference(path, inputs, names, given, config_path, threads, artifact=flag)


# -- checks the command line shares ---------------------------------------------------------------------
def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_threads(threads: Any, warn: Callable[[str], None] | None = None, flag: str = "--threads") -> int:
    """A positive thread count; above the CPU count a warning, above THREADS_HARD_CAP times it refused."""
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise OptionError(f"{flag} must be a whole number, not {threads!r}")
    cores = cpu_count()
    if threads < 1:
        raise OptionError(f"{flag} must be at least 1 (got {threads}); this machine has {cores} CPUs")
    if threads > THREADS_HARD_CAP * cores:
        raise OptionError(
            f"{flag} {threads} is far above this machine's {cores} CPUs (at most {THREADS_HARD_CAP * cores} "
            f"accepted); use {cores} or fewer"
        )
    if threads > cores and warn is not None:
        warn(f"{flag} {threads} is above this machine's {cores} CPUs: runs get slower, not faster")
    return threads


def check_seed(seed: Any, flag: str = "--seed") -> int:
    """A seed numpy accepts: a whole number from 0 to 2**63 - 1."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise OptionError(f"{flag} must be a whole number from 0 to 2**63-1, not {seed!r}")
    return seed


def check_config(config: Path | None) -> None:
    """A --config that exists and is a file (a folder or a missing file is refused with a sentence)."""
    if config is None:
        return
    if not config.exists():
        raise OptionError(f"config file {config} does not exist")
    if not config.is_file():
        raise OptionError(f"--config {config} is a folder, not a TOML file")


def check_selected(
    given: Mapping[str, Any], selected: Sequence[str], where: str, flag: str = "--plugins"
) -> None:
    """Options (`-o P.key=...`, the API's `options`) for a plugin the command does not use are refused:
    they would be silently ignored (a security option without --guard security runs unguarded)."""
    for plugin in given:
        if plugin not in selected:
            chosen = ", ".join(s for s in selected if s != CORE_OPTIONS) or "none"
            raise OptionError(
                f"options given for {plugin!r}, which is not selected ({flag}: {chosen}); add it with "
                f"{flag} {plugin} or drop -o {plugin}.*"
            )


def unused_config_tables(config: Path | None, selected: Sequence[str]) -> list[str]:
    """The tables of a config file that name plugins the command does not use (ignored, with a warning:
    one config file may serve both `run` and `infer`)."""
    if config is None:
        return []
    from .options import read_config

    return [name for name in read_config(config) if name not in selected]


def check_run_settings(
    settings: RunSettings, warn: Callable[[str], None] | None = None, cli: bool = True
) -> None:
    """Refuse settings `edgeplug run` (`cli`) and `edgeplug.optimize` cannot use, with one sentence each
    naming the flag or the keyword."""
    if not settings.plugins:
        raise OptionError("no plugins selected: name at least one, e.g. --plugins fuse")
    if settings.on_fail not in ON_FAIL:
        raise OptionError(f"on_fail must be one of {', '.join(ON_FAIL)}, not {settings.on_fail!r}")
    check_threads(settings.threads, warn, "--threads" if cli else "threads")
    check_seed(settings.seed, "--seed" if cli else "seed")
    if (
        isinstance(settings.bench_runs, bool)
        or not isinstance(settings.bench_runs, int)
        or settings.bench_runs < 1
    ):
        raise OptionError(f"bench_runs must be a positive whole number, not {settings.bench_runs!r}")
    for name in ("config", "calibration_data", "preprocess"):
        value = getattr(settings, name)
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise OptionError(f"{name} must be a path or a string, not {type(value).__name__}")
    settings.config = _path(settings.config, "config")
    check_config(settings.config)
    if settings.calibration_data is not None:
        settings.calibration_data = os.fspath(settings.calibration_data)
    if isinstance(settings.input_shapes, str):
        from .options import parse_input_shapes

        settings.input_shapes = parse_input_shapes(settings.input_shapes)
    if not isinstance(settings.input_shapes, Mapping):
        raise OptionError("input_shapes must map input names to dimensions, e.g. {'x': [1, 3, 224, 224]}")
    if not isinstance(settings.budgets, Mapping):
        raise OptionError("budgets must map metric names to numbers, e.g. {'top1': 0.99}")
    if isinstance(settings.metrics, str) or not isinstance(settings.metrics, Sequence):
        settings.metrics = [settings.metrics] if settings.metrics else []
    for table in unused_config_tables(settings.config, [*settings.plugins, CORE_OPTIONS]):
        if warn is not None:
            warn(f"config file {settings.config}: [{table}] is ignored: {table} is not in the chain")


def plugin_names(value: Sequence[str] | str, what: str) -> list[str]:
    """Plugin names from a list, or from a comma-separated string (never read letter by letter)."""
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    if not isinstance(value, Sequence) or not all(isinstance(p, str) for p in value):
        raise OptionError(f"{what} must be a list of plugin names or a comma-separated string, not {value!r}")
    return [p.strip() for p in value if p.strip()]


def option_tables(value: Any, what: str) -> dict[str, dict[str, Any]]:
    """{plugin: {key: value}} from a mapping of mappings; anything else is refused."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Mapping) for k, v in value.items()
    ):
        raise OptionError(
            f"{what} must map plugin names to option tables, e.g. {{'quant': {{'mode': 'static'}}}}"
        )
    return {k: dict(v) for k, v in value.items()}


@contextmanager
def claim_output(pipeline: Any, settings: RunSettings) -> Iterator[None]:
    """Hold the run's output folder (output_dir.py) while `pipeline` runs: refused before any work when an
    output would replace an input or another run holds the folder."""
    from .output_dir import OutputFolder

    model = pipeline.input if isinstance(pipeline.input, Path) else None
    folder = OutputFolder.for_run(
        pipeline.out,
        pipeline.stem,
        model=model,
        data=settings.data,
        calibration=settings.calibration_data,
        config=settings.config,
    )
    with folder:
        yield


@contextmanager
def user_errors() -> Iterator[None]:
    """OSErrors the user's machine causes (disk full, read-only folder) and running out of memory become
    edgeplug errors with one sentence."""
    try:
        yield
    except MemoryError:
        raise DataError(
            "ran out of memory: the model or its inputs are too large for this machine (pin smaller "
            "dimensions with --input-shapes, or use fewer samples)"
        ) from None
    except OSError as exc:
        error = user_os_error(exc)
        if error is None:
            raise
        raise error from None


def _model_source(model: Any) -> Path | Model:
    if isinstance(model, Model):
        return model
    path = _path(model, "model")
    if path is None:
        raise OptionError("edgeplug.optimize() needs a model: a path or an edgeplug.Model")
    return path


def _path(value: Any, what: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise OptionError(f"{what} must be a path, not {type(value).__name__}")
    return Path(value)


def _path_text(value: Any, what: str) -> str | None:
    path = _path(value, what)
    return None if path is None else os.fspath(value)


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise OptionError(f"{what} must be True or False, not {value!r}")
    return value


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)
