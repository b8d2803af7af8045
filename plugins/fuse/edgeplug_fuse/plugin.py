"""The `fuse` plugin: exact graph fusions with onnx-graphsurgeon.

target=onnx (default) keeps the model standard ONNX (what quantizers and compilers take); target=onnxruntime
also fuses Conv+activation into com.microsoft FusedConv and lets transformer=auto fuse encoders.
"""

from __future__ import annotations

from typing import Any

import onnx
import onnx_graphsurgeon as gs
from edgeplug import Capabilities, Model, OptionError, PluginError, RunContext, hookimpl
from edgeplug.plugin_api import BATCHNORM, CONTRIB, DYNAMIC_INT8, QDQ_INT8, evaluate, structure_problem

from . import activation, batchnorm, cleanup, folding, passes, support, transformer
from .patterns import graph_of
from .settings import FuseSettings

CLEANUPS = (
    "constant_nodes_to_initializers",
    "dead_nodes_removed",
    "constant_nodes_folded",
    "identity_removed",
    "dropout_removed",
    "matmul_add_to_gemm",
    "duplicate_initializers_merged",
)


@hookimpl
def plugin_options() -> type:
    return FuseSettings


@hookimpl
def plugin_capabilities(options: dict[str, Any], downstream: frozenset[str]) -> Capabilities:
    """fuse folds BatchNormalization; it emits onnxruntime contrib ops only for target=onnxruntime (or
    transformer=bert), and only when every later step consumes them (else it refuses in pre_optimize)."""
    contrib = FuseSettings.of(None, options).emits_contrib and CONTRIB in downstream
    return Capabilities(
        produces=frozenset({CONTRIB}) if contrib else frozenset(), removes=frozenset({BATCHNORM})
    )


@hookimpl
def pre_optimize(model: Model, ctx: RunContext) -> None:
    """Refuse contrib ops in front of a step that does not consume them, before any step runs."""
    _refuse_chain(FuseSettings.of(ctx.settings, ctx.options), ctx)


@hookimpl
def transform_graph(model: Model, ctx: RunContext) -> Model | None:
    settings = FuseSettings.of(ctx.settings, ctx.options)
    _refuse_chain(settings, ctx)
    options = {f: getattr(settings, f) for f in ("target", "transformer", "num_heads", "hidden_size")}
    if settings.target == "onnxruntime" and ctx.ahead & {QDQ_INT8, DYNAMIC_INT8}:
        ctx.log(
            "warning: a later step quantizes, and com.microsoft FusedConv is not quantized; target=onnx keeps "
            "those Convs int8-able"
        )
    counts: dict[str, Any] = {"nodes_before": len(model.proto.graph.node)}
    try:
        graph = graph_of(model)
    except Exception as exc:  # a type or construct onnx-graphsurgeon cannot represent
        reason = f"onnx-graphsurgeon cannot read this model ({type(exc).__name__}: {exc})".splitlines()[0]
        ctx.record("skipped", [reason])
        ctx.log(f"left as it was: {reason}")
        return None
    skipped = support.untouched(graph)
    work = _encoder_step(model, graph, options, counts, ctx, skipped)
    outcome = passes.apply(
        work.proto,
        _graph_passes(options),
        like=model.proto,
        changed=_changed,
        graph=graph if work is model else None,
    )
    counts.update(outcome.counts)
    skipped += [f"pass {name} rolled back: {why}" for name, why in outcome.rolled_back.items()]
    for key, value in counts.items():
        ctx.record(key, value)
    if skipped:
        ctx.record("skipped", skipped)
        ctx.log("left as it was: " + "; ".join(skipped))
    _warn_left(counts, ctx)
    if work is model and not _changed(counts):
        _explain_nothing(counts, ctx)
        return None
    result = model.replace(outcome.proto)
    ctx.record("nodes_after", len(result.proto.graph.node))
    _log_summary(counts, len(result.proto.graph.node), ctx)
    return result


def _encoder_step(
    model: Model,
    graph: gs.Graph,
    options: dict[str, Any],
    counts: dict[str, Any],
    ctx: RunContext,
    skipped: list[str],
) -> Model:
    """The model with its transformer encoder fused when that is asked for, valid and exact, else `model`."""
    encoder = transformer.detect_encoder(graph)
    if not _wants_transformer(options, encoder, ctx):
        if encoder.found:
            counts["transformer"] = {"detected": encoder.as_dict(), "fused": {}}
        return model
    blockers = support.encoder_blockers(graph)
    if blockers:
        counts["transformer"] = {"detected": encoder.as_dict(), "fused": {}}
        skipped.append("transformer encoder fusion not run: " + ", ".join(blockers))
        return model
    heads = options["num_heads"] or encoder.num_heads
    hidden = options["hidden_size"] or encoder.hidden_size
    if heads and hidden and hidden % heads:
        raise OptionError(
            f"fuse: hidden_size {hidden} is not a multiple of num_heads {heads}; "
            "set -o fuse.num_heads and -o fuse.hidden_size to the model's values"
        )
    proto, fused = transformer.fuse_encoder(model.proto, heads, hidden)
    counts["transformer"] = {
        "num_heads": heads,
        "hidden_size": hidden,
        "fused": fused,
        "detected": encoder.as_dict(),
    }
    if not fused:
        ctx.log("transformer encoder fusion found nothing to fuse")
        return model
    invalid = structure_problem(proto)
    if invalid is not None:
        counts["transformer"]["dropped"] = f"the fused model is invalid: {invalid}"
        skipped.append(f"transformer encoder fusion rolled back: the fused model is invalid ({invalid})")
        return model
    if not _encoder_within_tolerance(model, proto, ctx, counts["transformer"]):
        return model
    return model.replace(proto)


def _graph_passes(options: dict[str, Any]) -> list[passes.Pass]:
    """The graphsurgeon rewrites, in an order where each one sets up the next."""
    chain = [
        passes.Pass(
            "constant_nodes_to_initializers",
            _constants_and_dead_nodes,
            {"constant_nodes_to_initializers": 0, "dead_nodes_removed": 0},
        ),
        passes.Pass(
            "constant_folding",
            lambda g: {"constant_nodes_folded": folding.fold_constants(g)},
            {"constant_nodes_folded": 0},
        ),
        passes.Pass("passthrough_removal", _passthrough, {"identity_removed": 0, "dropout_removed": 0}),
        passes.Pass(
            "matmul_add_to_gemm",
            lambda g: {"matmul_add_to_gemm": cleanup.matmul_add_to_gemm(g)},
            {"matmul_add_to_gemm": 0},
        ),
        passes.Pass(
            "batchnorm_folding",
            lambda g: batchnorm.fold_batchnorms(g).as_dict(),
            {"batchnorm_folded": {}, "batchnorm_left": {}},
        ),
    ]
    if options["target"] == "onnxruntime":
        chain.append(
            passes.Pass(
                "activation_fusion",
                lambda g: {"activations_fused": dict(sorted(activation.fuse_conv_activations(g).items()))},
                {"activations_fused": {}},
            )
        )
    # after the folds, so that folding never sees weights shared only because their values matched
    chain.append(
        passes.Pass(
            "duplicate_initializers",
            lambda g: {"duplicate_initializers_merged": cleanup.merge_duplicate_initializers(g)},
            {"duplicate_initializers_merged": 0},
        )
    )
    return chain


def _changed(counts: dict[str, Any]) -> bool:
    """True when the graph passes rewrote something (by their counts)."""
    rewrites = sum(counts.get(key, 0) for key in CLEANUPS) + sum(counts.get("batchnorm_folded", {}).values())
    return bool(rewrites + sum(counts.get("activations_fused", {}).values()))


def _constants_and_dead_nodes(graph: gs.Graph) -> dict[str, int]:
    nodes = len(graph.nodes)
    converted = cleanup.constant_nodes_to_initializers(graph)
    graph.cleanup(recurse_subgraphs=False, recurse_functions=False)
    return {
        "constant_nodes_to_initializers": converted,
        "dead_nodes_removed": nodes - len(graph.nodes) - converted,
    }


def _passthrough(graph: gs.Graph) -> dict[str, int]:
    removed = cleanup.remove_passthrough(graph)
    return {"identity_removed": removed["Identity"], "dropout_removed": removed["Dropout"]}


def _refuse_chain(settings: FuseSettings, ctx: RunContext) -> None:
    """Refuse contrib ops that a later step does not consume (a compiler of standard ONNX)."""
    if settings.emits_contrib and CONTRIB not in ctx.downstream:
        raise PluginError(
            f"fuse with target={settings.target}/transformer={settings.transformer} emits onnxruntime contrib "
            "ops (com.microsoft), which a later step does not consume; use -o fuse.target=onnx "
            "-o fuse.transformer=auto"
        )


def _wants_transformer(options: dict[str, Any], encoder: transformer.EncoderInfo, ctx: RunContext) -> bool:
    mode = options["transformer"]
    if mode == "bert":
        if options["target"] == "onnx":
            ctx.log("transformer=bert: the fused encoder uses com.microsoft ops that only onnxruntime runs")
        return True
    if mode == "off" or not encoder.found:
        return False
    if options["target"] != "onnxruntime":
        ctx.log(
            f"transformer encoder detected ({encoder.attention_blocks} attention blocks); its fusions emit "
            "onnxruntime ops, enable them with -o fuse.target=onnxruntime (or fuse.transformer=bert)"
        )
        return False
    return True


def _encoder_within_tolerance(
    model: Model, proto: onnx.ModelProto, ctx: RunContext, record: dict[str, Any]
) -> bool:
    """onnxruntime's fused Attention/LayerNorm/Gelu kernels round differently from the unfused graph; check
    them against this step's tolerance on validation samples so that a miss drops only the encoder fusion
    (with the measured error in the report) instead of failing the whole step."""
    if ctx.data is None or not ctx.data.validation:
        return True
    samples = ctx.data.validation[:16]
    metrics, failures = evaluate(
        ctx.evaluate(model, samples), ctx.evaluate(model.replace(proto), samples), ctx.tolerance
    )
    record["max_abs_error"] = max((m.get("max_abs_error", 0.0) for m in metrics.values()), default=0.0)
    if not failures:
        return True
    record["dropped"] = failures[0]
    ctx.log(
        f"encoder fusion dropped, it misses this step's tolerance: {failures[0]}; accept it with "
        f"-o fuse.atol={record['max_abs_error']:.1e} (or -o fuse.min_cosine=0.9999)"
    )
    return False


def _warn_left(counts: dict[str, Any], ctx: RunContext) -> None:
    left = counts.get("batchnorm_left") or {}
    if left and BATCHNORM not in ctx.downstream:
        ctx.log(
            f"warning: {sum(left.values())} BatchNormalization left unfused, which a later step does not take: "
            + ", ".join(f"{n} ({why})" for why, n in left.items())
        )


def _explain_nothing(counts: dict[str, Any], ctx: RunContext) -> None:
    left = counts.get("batchnorm_left") or {}
    if left:
        ctx.log("BatchNormalization left unfused: " + ", ".join(f"{n} ({why})" for why, n in left.items()))


def _log_summary(counts: dict[str, Any], nodes_after: int, ctx: RunContext) -> None:
    folded = sum(counts["batchnorm_folded"].values())
    left = sum(counts["batchnorm_left"].values())
    parts = []
    if folded or left:
        parts.append(f"{folded} BatchNormalization folded" + (f" ({left} left)" if left else ""))
    if counts.get("activations_fused"):
        parts.append(f"{sum(counts['activations_fused'].values())} activations fused into FusedConv")
    if counts.get("transformer", {}).get("fused"):
        parts.append("encoder: " + ", ".join(f"{n} {op}" for op, n in counts["transformer"]["fused"].items()))
    cleaned = sum(counts[k] for k in CLEANUPS)
    if cleaned:
        parts.append(f"{cleaned} clean-ups")
    ctx.log("; ".join(parts) + f"; nodes {counts['nodes_before']} -> {nodes_after}")
