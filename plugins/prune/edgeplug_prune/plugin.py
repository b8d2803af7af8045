"""The `prune` plugin's hooks: options, Keras training-time pruning (load_model) and ONNX pruning
(transform_graph: unstructured, N:M or structured, optionally searching the sparsity for a budget)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
from edgeplug import Capabilities, Model, PluginError, RunContext, hookimpl
from edgeplug.plugin_api import DYNAMIC_INT8, FORMS, QDQ_INT8, get_metadata, is_keras_path

from .accounting import compare_layers, totals
from .keras_training import TRAINED_KEY, TRAINED_STEP, prune_keras
from .magnitude import has_float_weights, is_quantized, prune_weights
from .reconstruct import reconstruct
from .search import bisect_sparsity
from .sensitivity import channel_sensitivity
from .settings import DEFAULT_SPARSITY, PruneSettings
from .storage import densify, has_sparse_constants, sizes, to_sparse
from .structured import prune_channels

MAX_CALIBRATION = 2048


@hookimpl
def plugin_capabilities() -> Capabilities:
    """Pruning edits float weights: it takes no int8 Q/DQ or dynamic int8 model (run it on the float model)."""
    return Capabilities(consumes=FORMS - {QDQ_INT8, DYNAMIC_INT8})


@hookimpl
def plugin_options() -> type[PruneSettings]:
    return PruneSettings


@hookimpl
def load_model(path: Path, ctx: RunContext) -> Model | None:
    """Keras files (.h5, .keras, SavedModel folders): prune while fine-tuning with tfmot, export to ONNX."""
    if not is_keras_path(path):
        return None
    settings: PruneSettings = ctx.settings
    return prune_keras(path, ctx, settings.checked())


@hookimpl
def pre_optimize(model: Model, ctx: RunContext) -> None:
    """Refuse a bad N:M pattern or override (the core has checked the other values) and reconstruction on
    generated data before any step runs."""
    cfg: PruneSettings = ctx.settings
    cfg.checked()
    if cfg.mode == "structured" and cfg.reconstruct:
        ctx.require_real_data("least-squares reconstruction after structured pruning")


@hookimpl
def transform_graph(model: Model, ctx: RunContext) -> Model | None:
    cfg: PruneSettings = ctx.settings
    weighted = any(n.op_type in ("Conv", "Gemm", "MatMul") for n in model.proto.graph.node)
    if not weighted and not is_quantized(model.proto):
        ctx.log("no Conv, Gemm or MatMul weights to prune")
        return None
    trained = get_metadata(model.proto, TRAINED_KEY)
    if TRAINED_STEP in model.history and trained is not None and cfg.mode == "unstructured":
        ctx.log(f"weights already pruned to {trained} during training (tfmot); storing them only")
        return _finish(model, model.proto, ctx, cfg, {"mode": "tfmot", "sparsity": float(trained)})
    if has_sparse_constants(model.proto):  # e.g. a model this plugin stored sparse earlier: prune it again
        model = model.replace(densify(model.proto))
    _require_float_weights(model.proto)
    use_lsq = _wants_reconstruction(cfg, ctx)
    calibration = ctx.data.calibration[:MAX_CALIBRATION] if use_lsq else []
    budgets = ctx.tolerance.metric_budgets
    user_budget = {k: v for k, v in budgets.items() if f"min_{k}" in ctx.tolerance.user_set}
    info: dict[str, Any] = {"mode": cfg.mode, "reconstruct": use_lsq}

    kept: dict[float, tuple[onnx.ModelProto, dict[str, Any]]] = {}  # the last passing build of the search

    def build(sparsity: float) -> tuple[onnx.ModelProto, dict[str, Any]]:
        if sparsity in kept:
            return kept[sparsity]
        return _prune(model.proto, cfg, sparsity, ctx, use_lsq, calibration)

    if cfg.sparsity is None and cfg.mode != "nm" and budgets:
        # a budget the user set: the highest sparsity that meets it; the step's default budget: the default
        # sparsity, lowered by bisection until the budget holds (never a step that fails when one fits)
        budget = user_budget or budgets
        shown = ", ".join(f"{k} {v:g}" for k, v in sorted(budget.items()))

        def passes(sparsity: float) -> tuple[bool, dict[str, Any]]:
            """Judged as the core will judge the step: against the outputs it holds for this step's input."""
            built = build(sparsity)
            verdict = ctx.check(model.replace(built[0]))
            if verdict.passed:
                kept.clear()
                kept[sparsity] = built
            summary = {k: v.value for k, v in verdict.metrics.items() if v.value is not None}
            return verdict.passed, summary

        if user_budget:
            high = 0.9 if cfg.mode == "structured" else 0.95
            ctx.log(f"searching the highest sparsity meeting {shown} on {len(ctx.data.validation)} samples")
        else:
            high = DEFAULT_SPARSITY
            ctx.log(
                f"sparsity {high:g} unless it misses the step's budget ({shown}); then bisecting below it"
            )
        best, trace = bisect_sparsity(passes, high=high)
        info["search"] = {"budget": budget, "user_set": bool(user_budget), "trace": trace}
        if best is None:
            raise PluginError(
                f"prune: no sparsity down to {trace[-1]['sparsity']:.3f} meets {shown} on the validation data; "
                "loosen the budget or set prune.sparsity"
            )
        sparsity = best
        if len(trace) > 1:
            ctx.log(f"search chose sparsity {sparsity:.4f}")
    else:
        if cfg.sparsity is None and user_budget and cfg.mode == "nm":
            ctx.log("mode=nm has a fixed pattern; the budget is verified, not searched")
        sparsity = DEFAULT_SPARSITY if cfg.sparsity is None else cfg.sparsity
    proto, details = build(sparsity)
    if cfg.mode == "structured" and not any(g["kept"] < g["channels"] for g in details["groups"]):
        reasons = sorted({g["policy"] for g in details["groups"]}) or [
            "the graph has no Conv (group 1) layers"
        ]
        ctx.log(
            f"no channel group can be pruned ({'; '.join(reasons[:3])}); structured pruning does not apply"
        )
        return None
    if cfg.mode != "structured" and not any(
        r["nonzero_after"] < r["nonzero_before"] for r in details["weights"]
    ):
        ctx.log(_nothing_pruned(cfg, sparsity))
        return None
    info.update(details)
    info["sparsity_target"] = sparsity if cfg.mode != "nm" else cfg.pattern[0] / cfg.pattern[1]
    if cfg.sensitivity and cfg.mode == "structured":
        info["sensitivity"] = channel_sensitivity(model, cfg, sparsity, ctx)
    return _finish(model, proto, ctx, cfg, info)


def _require_float_weights(proto: onnx.ModelProto) -> None:
    """Refuse a model whose Conv/Gemm/MatMul weights are not float constants: pruning would change nothing."""
    if has_float_weights(proto):
        return
    if is_quantized(proto):
        raise PluginError(
            "prune: no float Conv/Gemm/MatMul weights to prune (the model is quantized: its weights sit "
            "behind DequantizeLinear or in integer ops); prune the float model, before quantization"
        )
    raise PluginError(
        "prune: no float Conv/Gemm/MatMul weights to prune (the weights are computed or graph inputs, "
        "not constants); export the model with its weights as initializers"
    )


def _nothing_pruned(cfg: PruneSettings, sparsity: float) -> str:
    if cfg.mode == "nm":
        n, m = cfg.pattern
        return f"no layer takes the {n}:{m} pattern; nothing pruned, the step does not apply"
    if sparsity == 0:
        return "sparsity 0 removes no weight; nothing pruned, the step does not apply"
    return (
        f"sparsity {sparsity:g} removes no further weight (layers spared by policy, too small, or already "
        "that sparse); nothing pruned, the step does not apply"
    )


def _wants_reconstruction(cfg: PruneSettings, ctx: RunContext) -> bool:
    if cfg.mode != "structured":
        if cfg.reconstruct:
            ctx.log("reconstruct applies to mode=structured only; ignored")
        return False
    if cfg.reconstruct is None:
        return ctx.data.source == "file"
    if cfg.reconstruct and ctx.data.source == "generated":  # pre_optimize already warned about random data
        ctx.require_real_data("least-squares reconstruction after structured pruning")
    return bool(cfg.reconstruct)


def _prune(
    proto: onnx.ModelProto,
    cfg: PruneSettings,
    sparsity: float,
    ctx: RunContext,
    use_lsq: bool,
    calibration: list[dict[str, Any]],
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    if cfg.mode in ("unstructured", "nm"):
        pruned, rows = prune_weights(proto, cfg, sparsity, log=ctx.log)
        return pruned, {"weights": rows}
    result = prune_channels(proto, cfg, sparsity, log=_silent)  # the search builds many candidates
    details: dict[str, Any] = {"groups": result.groups}
    if use_lsq and result.sinks:
        refit, rows = reconstruct(
            proto,
            result.proto,
            result.sinks,
            result.kept_out,
            calibration,
            threads=ctx.threads,
            seed=ctx.seed,
            progress=ctx.progress,
        )
        details["reconstruction"] = {"calibration_samples": len(calibration), "layers": rows}
        return refit, details
    return result.proto, details


def _finish(
    model: Model, proto: onnx.ModelProto, ctx: RunContext, cfg: PruneSettings, info: dict[str, Any]
) -> Model:
    """Sparse storage where it pays, the per-layer report, and the new Model."""
    layers = compare_layers(model.proto, proto)
    stored: list[dict[str, Any]] = []
    if cfg.storage == "sparse" and cfg.mode != "structured":
        if ctx.following:  # sparse initializers are for the deployed file; later steps edit dense weights
            info["storage_note"] = "kept dense: later steps of the chain take dense weights"
        else:
            weights = [r["weight"] for r in info.get("weights", [])] or _zeroed(proto)
            proto, stored = to_sparse(proto, weights)
    info["storage"] = {
        "mode": cfg.storage,
        "sparse_weights": stored,
        "size_before": sizes(model.proto),
        "size_after": sizes(proto),
    }
    info["layers"] = layers
    info["totals"] = totals(layers)
    for key, value in info.items():
        ctx.record(key, value)
    t = info["totals"]
    ctx.log(
        f"{cfg.mode}: parameters {t['parameters_before']} -> {t['nonzero_parameters_after']} non-zero "
        f"({t['sparsity']:.1%} removed), FLOPs {t['flops_before']} -> {t['flops_after']}; "
        f"{len(stored)} weights stored sparse"
    )
    return model.replace(proto, "prune")


def _silent(message: str) -> None:
    del message


def _zeroed(proto: onnx.ModelProto) -> list[str]:
    from .magnitude import weight_sites

    return [s.weight for s in weight_sites(proto)]
