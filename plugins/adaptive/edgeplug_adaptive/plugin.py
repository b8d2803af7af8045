"""The `adaptive` plugin: compile a cascade of models (smallest first) whose gate, calibrated to the run's
budget against the largest model, sends each input on only when the smaller model's answer is in doubt.

    edgeplug run model.onnx --plugins STEP,...,adaptive --data data.npz -o adaptive.min_top1=0.99

By default the cascade is the chain's final model, then the model the chain started from
(`-o adaptive.models=a.onnx,b.onnx` names others; @final and @original the chain's). The artifact (kind
`cascade`) is `cascade/cascade.json` and the models beside it; `make_runner` runs it, answering each input
with the model the gate picks and saying which one answered in the extra output `cascade_model`.
"""

from __future__ import annotations

from typing import Any

from edgeplug.plugin_api import (
    FORMS,
    Artifact,
    Capabilities,
    Model,
    PluginError,
    RunContext,
    Runner,
    hookimpl,
)

from . import cascade, gates, members
from .cascade import KIND
from .runner import CascadeRunner
from .settings import FINAL, ORIGINAL, AdaptiveSettings, settings_of


@hookimpl
def plugin_options() -> type:
    return AdaptiveSettings


@hookimpl
def plugin_capabilities(options: dict[str, Any], downstream: frozenset[str]) -> Capabilities:
    """adaptive runs its models with onnxruntime, which takes every model form; it changes no model."""
    return Capabilities(consumes=FORMS)


@hookimpl
def pre_optimize(model: Model, ctx: RunContext) -> None:
    """Refuse before any work: fewer than two models, a gate that is not one, costs that do not fit,
    models that cannot stand in for each other or lack what the gate reads, generated data."""
    settings = settings_of(ctx)
    texts = members.specs_of(settings.models)
    members.check_count(texts)
    gate = gates.parse(settings.gate, settings.output, settings.complexity_input, settings.pad_token)
    settings.parsed_costs(len(texts))
    ctx.require_real_data("calibrating the cascade's gate")
    loaded = {t: Model.load(t) for t in texts if t not in (FINAL, ORIGINAL)}
    if not loaded and not [p for p in ctx.chain if p != ctx.plugin]:
        raise PluginError(
            "adaptive: the cascade's default models are the chain's final model and its original, and with "
            "no other step in the chain they are the same model; put a compressing step before adaptive "
            "or name the models with -o adaptive.models=small.onnx,large.onnx"
        )
    # the chain's models keep the input model's interface: check what is known now with it standing in
    known = [members.Member(loaded.get(t, model), t, t if t in loaded else "the input model") for t in texts]
    members.check_compatible(known)
    first = known[0]
    gates.fit(gate, first.model.inputs, first.model.outputs, first.file)
    ctx.state["loaded"] = loaded
    ctx.state["gate"] = gate
    ctx.state["selection"] = cascade.hold_out(ctx, settings.selection)


@hookimpl
def compile(model: Model, ctx: RunContext) -> Artifact:
    """Build, calibrate and report the cascade; the core verifies it against its largest model (the
    artifact's reference) with the cascade's budget."""
    settings = settings_of(ctx)
    gate = ctx.state.get("gate") or gates.parse(
        settings.gate, settings.output, settings.complexity_input, settings.pad_token
    )
    built = cascade.build(
        model, ctx, settings, gate, ctx.state.get("loaded") or {}, ctx.state.get("selection")
    )
    return cascade.with_reference(built)


@hookimpl
def make_runner(artifact: Artifact, options: dict[str, Any]) -> Runner | None:
    """Run a cascade artifact (every file checked against its manifest before any model loads)."""
    if artifact.kind != KIND:
        return None
    return CascadeRunner(artifact, int(options.get("threads", 1) or 1))
