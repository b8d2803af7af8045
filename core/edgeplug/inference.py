"""Guarded inference: `edgeplug infer` and `edgeplug.infer()`; guards are `guard_inference` wrappers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import plugins
from .context import Artifact, InferenceRequest, InferenceResult, Runner
from .data import check_names, conform, read_arrays
from .errors import ModelError, OptionError, PluginError
from .model import Model
from .options import read_config, resolve
from .plugins import CORE
from .run_record import RunRecord, sidecar_path
from .runtime import run_all, run_each, session


def infer(
    model: str | Path,
    inputs: Mapping[str, np.ndarray] | str | Path,
    guards: Sequence[str] = (),
    options: Mapping[str, Mapping[str, Any]] | None = None,
    config: Path | None = None,
    threads: int = 1,
    artifact: bool = False,
) -> InferenceResult:
    """Run `model` on `inputs` (a dict or a .npz) through the selected guard plugins, outermost first.
    With `artifact=True` the compiled artifact recorded in the model's sidecar (an engine, a C library)
    runs instead of the .onnx, through the `make_runner` of the plugin that can run it: every file of it
    is checked against the sidecar first, and its runner is made only when the model first runs, after
    every guard has made its checks, so no byte of the artifact is loaded before then."""
    pm = plugins.load_plugins()
    guards = list(guards)
    plugins.check_selection(pm, guards)
    for name in guards:
        if not plugins.has_hook(pm, "guard_inference", name):
            raise OptionError(f"plugin {name!r} has no guard_inference hook and cannot be used with --guard")
    given: dict[str, dict[str, Any]] = {}
    if config:
        for plugin, table in read_config(config).items():
            if plugin in guards:
                given.setdefault(plugin, {}).update(table)
    for plugin, table in (options or {}).items():
        given.setdefault(plugin, {}).update(table)
    schemas = plugins.schemas_for(pm, guards, given)
    values, _ = resolve(schemas, guards, given)

    path = Path(model)
    loaded = Model.load(path)
    feed = _inputs(inputs, loaded)
    split = _splits_batch(loaded, feed)
    sessions: list[Any] = []

    compiled = recorded_artifact(path) if artifact else None
    runners: list[Runner] = []

    def artifact_runner(artifact_: Artifact) -> Runner:
        if not runners:
            made = pm.hook.make_runner(artifact=artifact_, options={"threads": threads})
            if made is None:
                raise PluginError(
                    f"no installed plugin can run the {artifact_.kind} artifact of {path} on this machine"
                )
            runners.append(made)
        return runners[0]

    def one_by_one(feed_: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        return [{k: v[i : i + 1] for k, v in feed_.items()} for i in range(len(next(iter(feed_.values()))))]

    def run(feed_: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if compiled is not None:  # compiled artifacts run one sample at a time, as verification ran them
            return run_each(artifact_runner(compiled), one_by_one(feed_))
        if not sessions:  # created on first use: a guard that runs the model elsewhere never pays for it
            sessions.append(session(loaded.serialized(), threads))
        return run_all(sessions[0], one_by_one(feed_) if split else [feed_])

    request = InferenceRequest(
        model_path=path,
        inputs=feed,
        run=run,
        options=values,
        model=loaded,
        threads=threads,
        artifact=compiled,
    )
    keep = {CORE, *guards}
    remove = [p for n, p in pm.list_name_plugin() if n not in keep]
    caller = pm.subset_hook_caller("guard_inference", remove_plugins=remove)
    result = caller(request=request)
    route = (compiled.info.get("route_output") if compiled is not None else None) or None
    if route and route in result.outputs and compiled.info.get("models"):
        models = compiled.info["models"]  # a cascade: which of its models answered each input
        result.flags["answered_by"] = [models[int(i)] for i in np.asarray(result.outputs[route]).ravel()]
    return result


def recorded_artifact(model: Path) -> Artifact:
    """The compiled artifact that `edgeplug run` recorded in `<stem>.edgeplug.json`: every recorded path
    confined to the model's folder (relative, no `..`, no symlink, a regular file) and hashed against the
    record, then copied as hashed into a private folder that the returned Artifact names (run_record.py).
    Nothing of it is loaded here."""
    record = RunRecord.find(model)
    if record is None:
        raise ModelError(
            f"{model}: no sidecar {sidecar_path(model).name} beside it, so it records no compiled artifact "
            "(run a compile plugin with `edgeplug run`)"
        )
    return record.artifact_for(model)


def _inputs(inputs: Mapping[str, np.ndarray] | str | Path, model: Model) -> dict[str, np.ndarray]:
    if isinstance(inputs, (str, Path)):
        arrays, _ = read_arrays(Path(inputs), model)
        where = str(inputs)
    else:
        arrays = {k: np.asarray(v) for k, v in inputs.items()}
        check_names(arrays, model, "inputs")
        where = "inputs"
    specs = {s.name: s for s in model.inputs}
    return {name: conform(arr, specs[name], where) for name, arr in arrays.items()}


def _splits_batch(model: Model, feed: Mapping[str, np.ndarray]) -> bool:
    """Run sample by sample when every input has a fixed batch of 1 and the data holds more than one."""
    specs = model.inputs
    if not specs or not all(spec.shape and spec.shape[0] == 1 for spec in specs):
        return False
    counts = {len(a) for a in feed.values() if np.ndim(a)}
    return len(counts) == 1 and counts.pop() > 1
