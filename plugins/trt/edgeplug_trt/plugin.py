"""The `trt` plugin: prepare an ONNX model for TensorRT on any machine, build a TensorRT engine
(FP32/FP16, INT8 from a Q/DQ model) where TensorRT and an NVIDIA GPU are, and run engines for verification."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeplug import (
    Artifact,
    Capabilities,
    MissingDependencyError,
    Model,
    PluginError,
    RunContext,
    Tolerance,
    hookimpl,
)
from edgeplug.plugin_api import (
    CONTRIB,
    DYNAMIC_INT8,
    FORMS,
    INT8_EXACT,
    INT8_QDQ_ONLY,
    QDQ_INT8,
    SYMMETRIC_INT8,
    write_json,
)

from . import availability
from .engine_build import BuildFailure, BuildSettings, build_engine
from .operators import TABLE_TENSORRT_VERSION
from .preparation import prepare
from .profiles import Profile, build_profile, check_shape_options
from .qdq import qdq_summary, require_int8_qdq
from .settings import TrtSettings

ENGINE_KIND = "tensorrt-engine"
# How close an engine must stay to the ONNX model it was built from, unless the user sets a tolerance:
# FP32 kernels sum in another order than onnxruntime; FP16 and INT8 lose precision by design.
ENGINE_TOLERANCE = {
    "fp32": Tolerance(rtol=1e-3, atol=1e-3),
    "fp16": Tolerance(min_cosine=0.999, min_top1=0.99),
    "int8": Tolerance(min_cosine=0.99, min_top1=0.97),
}


@hookimpl
def plugin_capabilities(options: dict[str, Any]) -> Capabilities:
    """TensorRT's ONNX parser takes standard ONNX (no onnxruntime contrib ops, no dynamic int8); in int8 it
    computes Q/DQ exactly, wants symmetric int8 and parses int8 Q/DQ only (no int32 bias DequantizeLinear)."""
    int8 = options.get("precision") == "int8"
    return Capabilities(
        consumes=FORMS - {CONTRIB, DYNAMIC_INT8},
        target=frozenset({INT8_EXACT, SYMMETRIC_INT8, INT8_QDQ_ONLY}) if int8 else frozenset({INT8_EXACT}),
    )


@hookimpl
def plugin_options() -> type[TrtSettings]:
    return TrtSettings


@hookimpl
def pre_optimize(model: Model, ctx: RunContext) -> None:
    """Check the min/opt/max shapes against the model's inputs (the core has checked every value's type and
    bounds) before the core's reference pass and any earlier step run; refuse a float model asked for int8
    unless an earlier step produces int8 Q/DQ."""
    settings: TrtSettings = ctx.settings
    check_shape_options(model.inputs, settings)
    if settings.precision != "int8":
        return
    if QDQ_INT8 not in ctx.upstream:  # no earlier step produces int8 Q/DQ: the model must hold it now
        require_int8_qdq(model.proto, int32_biases_folded_later=True)


def _sample(ctx: RunContext) -> dict[str, Any] | None:
    return ctx.data.validation[0] if ctx.data is not None and ctx.data.validation else None


def _check_precision(model: Model, precision: str) -> dict[str, Any]:
    summary = qdq_summary(model.proto)
    if precision == "int8":
        return require_int8_qdq(model.proto)
    if summary["quantize_nodes"] or summary["dequantize_nodes"]:
        raise PluginError(
            f"trt: the model has Q/DQ nodes (explicit quantization), which TensorRT builds as INT8; "
            f"ask for it with -o trt.precision=int8 instead of {precision}"
        )
    return summary


@hookimpl
def transform_graph(model: Model, ctx: RunContext) -> Model | None:
    """The preparation: fold constants, narrow int64 initializers, check every operator, derive the profile."""
    settings: TrtSettings = ctx.settings
    prep = prepare(model, fold=settings.fold_constants)
    ctx.record("constant_folding", prep.folding)
    ctx.record("int64", prep.int64)
    ctx.record("operators", prep.operators)
    ctx.record("quantization", _check_precision(prep.model, settings.precision))
    ctx.record("profile", build_profile(prep.model.inputs, settings, _sample(ctx)).as_dict())
    ops = prep.operators
    folding = prep.folding
    ctx.log(
        f"constant folding {folding.get('nodes_before', '-')} -> {folding.get('nodes_after', '-')} nodes; "
        f"{len(folding['int32_bias_dequantize_folded'])} int32 bias DequantizeLinear folded; "
        f"{len(prep.int64['narrowed_to_int32'])} int64 initializers narrowed to int32"
    )
    if prep.int64["out_of_int32_range"]:
        names = ", ".join(e["name"] for e in prep.int64["out_of_int32_range"][:5])
        ctx.log(f"int64 values outside int32 (TensorRT < 10 would clamp them): {names}")
    for entry in ops["unsupported"] + ops["custom_domain"]:
        ctx.log(
            f"not supported by TensorRT's ONNX parser ({ops['table']}): node {entry['node']} "
            f"({entry['op_type']}): {entry['reason']}"
        )
    if not ops["opset_supported"]:
        ctx.log(f"opset {ops['opset']} is outside the parser's range ({ops['table']})")
    return prep.model


def refuse_unsupported(operators: dict[str, Any]) -> None:
    """Stop before any build when ONNX-domain operators are unsupported (custom-domain ones may have plugins)."""
    bad = operators["unsupported"]
    if bad:
        listed = ", ".join(f"{e['node']} ({e['op_type']})" for e in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise PluginError(
            f"trt: TensorRT's ONNX parser ({operators['table']}) does not support {listed}{more}; "
            "replace these operators or run without trt"
        )


def _engine_tolerance(ctx: RunContext, precision: str) -> Tolerance:
    """The budget the core verifies the engine with: the user's when set, else the precision's default."""
    if ctx.tolerance.user_set:
        return ctx.tolerance
    return ENGINE_TOLERANCE[precision]


@hookimpl
def compile(model: Model, ctx: RunContext) -> Artifact | None:
    """Build the engine. Checks run first (operators, Q/DQ, profile), then the TensorRT/GPU requirement."""
    options: TrtSettings = ctx.settings
    from .operators import check_operators

    operators = check_operators(model.proto)
    refuse_unsupported(operators)
    precision = options.precision
    _check_precision(model, precision)
    profile: Profile = build_profile(model.inputs, options, _sample(ctx))
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    settings = BuildSettings(
        precision=precision,
        workspace_mb=options.workspace_mb,
        profile=profile,
        timing_cache=Path(options.timing_cache or ctx.workdir / "trt-timing.cache"),
        tf32=options.tf32,
        optimization_level=options.optimization_level,
    )
    ctx.record("build_settings", settings.as_dict())
    problem = availability.missing()
    if problem:
        ctx.record("engine", {"built": False, "reason": problem})
        raise MissingDependencyError(problem)

    engine_path = ctx.workdir / "model.engine"
    log_path = ctx.workdir / "trt-build.log"
    onnx_path = ctx.workdir / "trt-input.onnx"
    model.save(onnx_path)
    header = [f"[edgeplug] settings {json.dumps(settings.as_dict(), default=str)}"]
    try:
        result = build_engine(onnx_path, settings, engine_path)
    except BuildFailure as exc:
        log_path.write_text("\n".join(header + exc.log) + "\n")
        ctx.record("engine", {"built": False, "reason": str(exc), "log": str(log_path)})
        raise
    log_path.write_text("\n".join(header + result.log) + "\n")
    tolerance = _engine_tolerance(ctx, precision)
    used = {
        **settings.as_dict(),
        "tensorrt_version": result.tensorrt_version,
        "operator_table_tensorrt_version": TABLE_TENSORRT_VERSION,
        "network_flags": result.network_flags,
        "builder_flags": result.builder_flags,
        "timing_cache_reused": result.timing_cache_reused,
        "build_seconds": round(result.seconds, 3),
        "onnx": onnx_path.name,
        "verification_tolerance": tolerance.as_dict(),
    }
    settings_path = ctx.workdir / "trt-settings.json"
    write_json(settings_path, used)
    ctx.record("engine", {"built": True, **used})
    ctx.log(
        f"built {engine_path.name} ({precision}) in {result.seconds:.1f} s with TensorRT {result.tensorrt_version}"
    )
    return Artifact.of(
        ENGINE_KIND,
        [engine_path, log_path, settings_path],
        precision=precision,
        tensorrt_version=result.tensorrt_version,
        tolerance=tolerance,  # the core verifies the engine against the ONNX model with this budget
    )


@hookimpl
def make_runner(artifact: Artifact, options: dict[str, Any]) -> Any:
    """A callable running a built engine on one input dict (needs TensorRT, cuda-python and a GPU)."""
    if artifact.kind != ENGINE_KIND:
        return None
    from .engine_runner import EngineRunner

    return EngineRunner(artifact.main)
