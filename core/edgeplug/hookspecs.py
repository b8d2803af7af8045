"""The hooks a plugin may implement. Decorate implementations with `edgeplug.hookimpl`.

A plugin is a module (or object) registered under its CLI name through the entry-point group
`edgeplug`. The core calls `pre_optimize`, `transform_graph` and `compile` only on the plugins the
user selected, one plugin at a time, in the user's order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .capabilities import Capabilities
    from .context import Artifact, InferenceRequest, RunContext, Runner
    from .model import Model
    from .options import Option

hookspec = pluggy.HookspecMarker("edgeplug")
hookimpl = pluggy.HookimplMarker("edgeplug")


@hookspec
def plugin_options() -> type | list[Option]:
    """The plugin's options: a settings dataclass whose fields are declared with `edgeplug.option(...)`
    (type from the annotation, default, help, choices, bounds; the plugin then gets an instance as
    `ctx.settings`), or a list of Option. An option named like a tolerance (min_<metric> such as min_cosine, min_top1,
    max_abs_error, rtol, atol, max_slice_error) sets the plugin's default verification budget; with none,
    steps must be exact."""


@hookspec(firstresult=True)
def plugin_capabilities(options: dict[str, Any], downstream: frozenset[str]) -> Capabilities | None:
    """What the plugin consumes, produces and removes (model forms) and, for a compile plugin, the
    properties of its target, given its option values and the forms every later plugin consumes (so a
    plugin that adapts declares what it will really produce); see edgeplug.capabilities. None: it takes
    any model and adds nothing the others need to know about."""


@hookspec(firstresult=True)
def load_model(path: Path, ctx: RunContext) -> Model | None:
    """Turn a file into the ONNX IR, or return None to leave it to the next plugin (the core takes .onnx)."""


@hookspec
def pre_optimize(model: Model, ctx: RunContext) -> None:
    """Check support and gather what later steps need before any transform; raise PluginError to refuse."""


@hookspec(firstresult=True)
def transform_graph(model: Model, ctx: RunContext) -> Model | None:
    """Return a NEW Model (`model.replace(proto)`), never mutating the argument, or None if not applicable."""


@hookspec(firstresult=True)
def compile(model: Model, ctx: RunContext) -> Artifact | None:
    """Build a deployable artifact under ctx.workdir (an engine, a C library; by default the .onnx)."""


@hookspec(firstresult=True)
def make_runner(artifact: Artifact, options: dict[str, Any]) -> Runner | None:
    """Return a callable running `artifact` on an input dict, or None if this plugin cannot run it."""


@hookspec(firstresult=True)
def guard_inference(request: InferenceRequest) -> Any:
    """Guard one inference. Implement as `@hookimpl(wrapper=True)`: check `request.inputs`, optionally
    replace `request.run`, `result = yield`, then check or filter the InferenceResult and return it.
    The core's innermost implementation returns `InferenceResult(request.run(request.inputs))`."""
