"""The `distill` plugin's hooks: knowledge distillation from the chain's original model into the current
one (converted to PyTorch with onnx2torch, trained, exported back to ONNX), judged against the original."""

from __future__ import annotations

import dataclasses
from importlib import metadata
from typing import Any

import numpy as np
from edgeplug import Capabilities, DataError, Model, PluginError, RunContext, hookimpl
from edgeplug.plugin_api import CONTRIB, DYNAMIC_INT8, FORMS, FP16, QDQ_INT8, forms_of

from .converter import load_onnx2torch, torchvision_missing
from .export import fidelity, to_onnx
from .settings import DistillSettings
from .training import train

QUANTIZED = frozenset({QDQ_INT8, DYNAMIC_INT8})
FIDELITY_LIMIT = 1e-4  # the export must compute what the trained module computes (measured: ~1e-6)
NOT_AFTER_QUANT = (
    "distill trains float weights and cannot fine-tune a quantized model (its Q/DQ structure would be "
    "lost); put distill before quantization in --plugins (after pruning, before the step that adds Q/DQ)"
)


@hookimpl
def plugin_options() -> type:
    return DistillSettings


@hookimpl
def plugin_capabilities(options: dict[str, Any], downstream: frozenset[str]) -> Capabilities:
    """Takes float ONNX that the converter can hold (no quantized, contrib or float16 operators); its step
    changes what the model computes by design, so the core judges it against the chain's original."""
    return Capabilities(consumes=FORMS - {CONTRIB, FP16, *QUANTIZED}, judged_against="original")


def settings_of(ctx: RunContext) -> DistillSettings:
    """The typed settings the core hands over (built from ctx.options for a context made by hand)."""
    if isinstance(ctx.settings, DistillSettings):
        return ctx.settings
    names = {f.name for f in dataclasses.fields(DistillSettings)}
    return DistillSettings(**{k: v for k, v in ctx.options.items() if k in names})


@hookimpl
def pre_optimize(model: Model, ctx: RunContext) -> None:
    """Refuse before any step runs: a quantized input, generated data, a bad duration, missing torch or
    onnx2torch."""
    settings = settings_of(ctx)
    settings.time_budget()
    if (forms_of(model.proto) | ctx.upstream) & QUANTIZED:
        raise PluginError(NOT_AFTER_QUANT)
    if settings.data is None:
        ctx.require_real_data("distillation (it trains on the calibration split)")
    elif not settings.data.exists():
        raise DataError(f"distill.data {settings.data} does not exist")
    load_onnx2torch()


@hookimpl
def transform_graph(model: Model, ctx: RunContext) -> Model | None:
    settings = settings_of(ctx)
    if forms_of(model.proto) & QUANTIZED:
        raise PluginError(NOT_AFTER_QUANT)
    if ctx.original is None:
        raise PluginError("distill: the run context holds no original model to learn from (ctx.original)")
    if _nothing_to_recover(model, ctx):
        ctx.log("the model computes what the chain's original computes: nothing to distil, not applied")
        return None
    outcome = train(model, ctx, settings)
    ctx.record("converter", _converter_note())
    ctx.record("training", outcome.summary())
    exported = to_onnx(outcome.converted, model.proto, outcome.split.selection[0])
    error = fidelity(outcome.converted, exported, outcome.split.selection[:8])
    ctx.record("export_fidelity", error)
    if error > FIDELITY_LIMIT:
        raise PluginError(
            f"distill: the exported ONNX model differs from the trained PyTorch module by {error:.3g} "
            f"(relative to the output scale; at most {FIDELITY_LIMIT:g} is expected)"
        )
    best = outcome.history[outcome.best_epoch]["selection"]
    ctx.log(
        f"kept epoch {outcome.best_epoch} after {outcome.steps} steps in {outcome.seconds:.1f}s "
        f"(selection margin {outcome.history[0]['selection']['margin']:+.4f} -> {best['margin']:+.4f}; "
        f"export matches the trained module to {error:.1e})"
    )
    return model.replace(exported, "distill")


def _nothing_to_recover(model: Model, ctx: RunContext) -> bool:
    """The model is the original, or computes what it computes (the steps before were exact)."""
    assert ctx.original is not None
    if model.serialized() == ctx.original.serialized():
        return True
    if ctx.previous is None or ctx.reference is None or set(ctx.previous) != set(ctx.reference):
        return False
    return all(_same(ctx.previous[name], ctx.reference[name]) for name in ctx.reference)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        if a.shape != b.shape:
            return False
        if a.dtype.kind == "f":
            return bool(np.allclose(a, b, rtol=1e-4, atol=1e-5))
        return bool(np.array_equal(a, b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return all(_same(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    return False


def _converter_note() -> str:
    version = metadata.version("onnx2torch")
    shim = (
        " with edgeplug-distill's torchvision stand-in (torchvision absent)" if torchvision_missing() else ""
    )
    return f"onnx2torch {version}{shim}; export: torch.onnx TorchScript exporter (torch {_torch_version()})"


def _torch_version() -> str:
    import torch

    return str(torch.__version__)
