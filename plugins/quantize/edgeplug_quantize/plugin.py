"""The `quant` plugin's hooks: options, Keras QAT loading, checks before the chain, and quantization."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import onnx
from edgeplug import Capabilities, Model, Option, OptionError, PluginError, RunContext, hookimpl
from edgeplug.capabilities import DYNAMIC_INT8, FP16, QDQ_INT8
from edgeplug.cpu import cpu_info
from edgeplug.model import get_metadata, set_metadata

from .budget import Budget, load_metric
from .calibration import check_samples, check_table, check_table_target, strided
from .cpu_fit import choose_types
from .int8_weights import pack_qat_weights
from .mixed_precision import Search, SearchResult
from .options import OPTIONS, QAT_KEYS, check_counts, check_tolerance
from .prepare import prepare
from .ptq import Recipe, candidates, dynamic_ops_for, quantize, resolve_exclusions

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")
QUANTIZED_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "DynamicQuantizeMatMul",
    "QAttention",
    "DynamicQuantizeLSTM",
}
SEARCH_KEYS = ("min_cosine", "min_top1", "max_abs_error")
METADATA_KEY = "edgeplug.quant"


@hookimpl
def plugin_capabilities(options: dict[str, Any], downstream: frozenset[str]) -> Capabilities:
    """What quant emits: the mode asked for, else the forms every later plugin consumes (int8 Q/DQ first)."""
    forms = {"static": {QDQ_INT8}, "dynamic": {DYNAMIC_INT8}, "fp16": {FP16}}
    mode = options.get("mode")
    produces = forms[mode] if mode in forms else {QDQ_INT8, DYNAMIC_INT8, FP16} & downstream
    return Capabilities(produces=frozenset(produces))


@hookimpl
def plugin_options() -> list[Option]:
    return OPTIONS


@hookimpl
def load_model(path: Path, ctx: RunContext) -> Model | None:
    """A tf_keras model (.h5, .keras, SavedModel folder): quantization-aware training, then ONNX."""
    is_keras = path.suffix.lower() in KERAS_SUFFIXES or (path.is_dir() and (path / "saved_model.pb").exists())
    if not is_keras:
        return None
    check_counts(ctx.options, QAT_KEYS)  # before training, which runs ahead of pre_optimize
    from .qat import train_and_export

    return train_and_export(path, ctx)


@hookimpl
def pre_optimize(model: Model, ctx: RunContext) -> None:
    """Refuse bad option values and combinations and mismatched data before any step runs."""
    check_counts(ctx.options)
    check_tolerance(ctx.tolerance)
    if already_quantized(model.proto):
        return
    mode = resolve_mode(ctx)[0]
    check_chain(mode, ctx)
    budget_of(ctx)
    resolve_exclusions(ctx.options.get("exclude") or [], model.proto)
    if mode == "static":
        table = ctx.options.get("calibration_table")
        if table:
            check_table_target(Path(table))
        check_samples(ctx.data.calibration, model.proto, "calibration")


@hookimpl
def transform_graph(model: Model, ctx: RunContext) -> Model | None:
    if get_metadata(model.proto, "edgeplug.quant.qat"):
        return pack_qat(model, ctx)
    if already_quantized(model.proto):
        ctx.record("skipped", "the model is already quantized")
        ctx.log("the model is already quantized; nothing to do")
        return None
    opts = ctx.options
    mode, why = resolve_mode(ctx)
    check_chain(mode, ctx)
    ctx.record("mode", mode)
    ctx.record("mode_reason", why)
    ctx.log(f"mode {mode} ({why})")
    if mode == "dynamic" and any(n.op_type == "Conv" for n in model.proto.graph.node):
        ctx.log(
            "warning: dynamic INT8 convolutions (ConvInteger) run slower than float on onnxruntime's CPU "
            "kernels (ResNet-50 here: 5x slower); pass --data for static INT8"
        )
    budget = budget_of(ctx)

    prepared = prepare(model.proto)
    for note in prepared.notes:
        ctx.log(note)
    ctx.record("prepare", prepared.notes)
    batchnorm_hint(prepared.batchnorm_before, prepared.batchnorm_after, ctx)

    names, types = exclusions(model.proto, prepared.proto, ctx)
    with tempfile.TemporaryDirectory(prefix="edgeplug-quant-table-") as tmp:
        recipe = build_recipe(mode, prepared.proto, ctx, names, types, Path(tmp) / "calibration.json")
        calibration = calibration_samples(mode, recipe, prepared.proto, ctx)
        if budget is not None:
            result = Search(
                prepared.proto,
                recipe,
                calibration,
                ctx.data.validation,
                ctx.data.validation_labels,
                budget,
                ctx,
                opts["sensitivity_samples"],
            ).run()
            proto = result.proto
            ctx.record("mixed_precision", search_record(result, budget))
            recipe = recipe.excluding(result.kept_float)
        else:
            proto = quantize(prepared.proto, recipe, calibration)
        if mode != "fp16" and not already_quantized(proto):
            return nothing_quantized(recipe, ctx)
        save_table(recipe, opts, ctx)

    if mode == "dynamic":
        # Inferred value_info left in a dynamically quantized model slows onnxruntime down: on BERT-base at
        # 1 thread, 45.2 ms with it and 33.5 ms without (benchmarks/perf_table.py); onnxruntime re-infers.
        del proto.graph.value_info[:]
    summary = recipe.summary()
    summary["compute_nodes"] = len(candidates(prepared.proto, Recipe(mode)))
    summary["op_counts"] = quantized_op_counts(proto)
    ctx.record("recipe", summary)
    set_metadata(proto, METADATA_KEY, json.dumps({k: summary[k] for k in ("mode", "excluded_nodes")}))
    return model.replace(proto)


def nothing_quantized(recipe: Recipe, ctx: RunContext) -> None:
    """Not applicable: the quantizer left every node in float (e.g. every compute op type excluded)."""
    excluded = ",".join(ctx.options.get("exclude") or [])
    cause = (
        f"-o quant.exclude={excluded} leaves no node that onnxruntime quantizes"
        if excluded
        else "onnxruntime found no node of this model to quantize"
    )
    why = f"no node was quantized ({recipe.mode} INT8): {cause}"
    ctx.record("skipped", why)
    ctx.record("recipe", recipe.summary())
    ctx.log(f"{why}; step not applied")
    return None


def pack_qat(model: Model, ctx: RunContext) -> Model | None:
    """After QAT: store the fake-quantized float weights as INT8 behind DequantizeLinear."""
    proto, packed = pack_qat_weights(model.proto)
    ctx.record("mode", "qat")
    ctx.record("qat_weights_packed", packed)
    if not packed:
        ctx.log("quantization-aware trained model: no float weight on an INT8 grid to pack; nothing to do")
        return None
    ctx.log(
        f"quantization-aware trained model: stored {len(packed)} weight tensor(s) as INT8 "
        "(per-channel scales recovered from tfmot's grid)"
    )
    ctx.record("recipe", {"mode": "qat", "op_counts": quantized_op_counts(proto)})
    return model.replace(proto)


def exclusions(
    original: onnx.ModelProto, prepared: onnx.ModelProto, ctx: RunContext
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`exclude` resolved against the user's model, then mapped onto the prepared one."""
    names, types = resolve_exclusions(ctx.options.get("exclude") or [], original)
    present = {n.name for n in prepared.graph.node}
    gone = [n for n in names if n not in present]
    if gone:
        ctx.log(f"excluded node(s) {', '.join(gone)} were folded away by pre-processing")
    by_type = [n.name for n in prepared.graph.node if n.op_type in types and n.name]
    return tuple(dict.fromkeys([n for n in names if n in present] + by_type)), types


def search_record(result: SearchResult, budget: Budget) -> dict[str, Any]:
    extra = {"metric": budget.metric_name, "min_metric": budget.min_metric} if budget.metric else {}
    return {
        "budget": {**budget.tolerance.as_dict(), **extra},
        "quantizable_nodes": result.quantizable,
        "kept_float": result.kept_float,
        "kept_float_fraction": round(len(result.kept_float) / max(result.quantizable, 1), 4),
        "plain": result.plain,
        "final": result.final,
        "evaluations": result.evaluations,
        "sensitivity": result.table,
    }


# -- decisions --------------------------------------------------------------------------------------
def resolve_mode(ctx: RunContext) -> tuple[str, str]:
    mode = ctx.options.get("mode")
    if mode:
        return mode, "as given"
    if ctx.data is not None and ctx.data.source == "file":
        return "static", "real calibration data given"
    if ctx.data is not None and ctx.data.source == "random":
        return "static", "--data random: calibrated on random inputs, as asked"
    return "dynamic", "no real calibration data (pass --data FILE.npz for static INT8)"


def check_chain(mode: str, ctx: RunContext) -> None:
    if "trt" in ctx.following and mode == "dynamic":
        raise PluginError(
            "quant: TensorRT (trt) needs static QDQ INT8, not dynamic quantization; pass --data "
            "FILE.npz for calibration and -o quant.mode=static (or fp16)"
        )


def budget_of(ctx: RunContext) -> Budget | None:
    """The search budget when the user set one (a tolerance or a metric), else None (verify only)."""
    opts = ctx.options
    metric_spec, min_metric = opts.get("metric"), opts.get("min_metric")
    if (metric_spec is None) != (min_metric is None):
        raise OptionError(
            "quant.metric and quant.min_metric go together: give the function and its threshold"
        )
    user = set(ctx.tolerance.user_set) & set(SEARCH_KEYS)
    if not user and metric_spec is None:
        return None
    metric = (metric_spec if callable(metric_spec) else load_metric(metric_spec)) if metric_spec else None
    name = (
        metric_spec
        if isinstance(metric_spec, str)
        else getattr(metric_spec, "__qualname__", repr(metric_spec))
    )
    return Budget(ctx.tolerance, metric, min_metric, name)


def build_recipe(
    mode: str,
    proto: onnx.ModelProto,
    ctx: RunContext,
    names: tuple[str, ...],
    types: tuple[str, ...],
    scratch_table: Path,
) -> Recipe:
    opts = ctx.options
    table = opts.get("calibration_table")
    if mode == "fp16":
        return Recipe("fp16", exclude_nodes=names, exclude_types=types)
    choice = choose_types(opts, cpu_info(), ctx.following)
    for reason in choice.reasons:
        ctx.log(reason)
    ctx.record("types", choice.as_dict())
    if mode == "dynamic":
        ops, note = dynamic_ops_for(proto)
        if note:
            ctx.log(note)
            ctx.record("dynamic_note", note)
        return Recipe(
            "dynamic",
            per_channel=choice.per_channel,
            weight_type=choice.weight_type,
            reduce_range=choice.reduce_range,
            exclude_nodes=names,
            exclude_types=types,
            dynamic_ops=ops,
        )
    use_table = Path(table) if table and Path(table).exists() else scratch_table
    # TensorRT's ONNX parser takes INT8 Q/DQ only, not the INT32 DequantizeLinear of quantized biases
    extra = {"QuantizeBias": False} if "trt" in ctx.following else {}
    return Recipe(
        "static",
        per_channel=choice.per_channel,
        calibration=opts.get("calibration") or "minmax",
        activation_type=choice.activation_type,
        weight_type=choice.weight_type,
        reduce_range=choice.reduce_range,
        symmetric=choice.symmetric,
        exclude_nodes=names,
        exclude_types=types,
        table=use_table,
        extra=extra,
    )


def calibration_samples(mode: str, recipe: Recipe, proto: onnx.ModelProto, ctx: RunContext) -> list[dict]:
    """The calibration samples (none when a valid calibration table is reused)."""
    if mode != "static":
        return []
    assert recipe.table is not None
    if recipe.table.exists():
        count = check_table(recipe.table, proto, recipe.calibration)
        ctx.log(f"reusing calibration table {recipe.table} ({count} tensors)")
        ctx.record("calibration", {"table": str(recipe.table), "reused": True, "tensors": count})
        return []
    ctx.require_real_data("static calibration")
    limit = ctx.options["calibration_samples"]
    samples = strided(list(ctx.data.calibration[:limit]))[0]  # whole chunks of onnxruntime's strided MinMax
    check_samples(samples, proto, "calibration")
    ctx.record(
        "calibration", {"method": recipe.calibration, "samples": len(samples), "source": ctx.data.source}
    )
    ctx.log(f"calibrating ({recipe.calibration}) on {len(samples)} samples")
    return samples


def save_table(recipe: Recipe, opts: dict[str, Any], ctx: RunContext) -> None:
    """Copy the calibration table to quant.calibration_table when the user asked for one and it is new."""
    wanted = opts.get("calibration_table")
    if recipe.mode != "static" or not wanted or recipe.table is None:
        return
    target = Path(wanted)
    if target.exists() or not recipe.table.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(recipe.table.read_bytes())
    ctx.log(f"calibration table written to {target}")
    ctx.details.setdefault("calibration", {})["table_written"] = str(target)


def batchnorm_hint(before: int, after: int, ctx: RunContext) -> None:
    if after:
        ctx.log(
            f"hint: {after} BatchNormalization node(s) remain and stay in float; put `fuse` before "
            "`quant` (--plugins fuse,quant) to fold them"
        )
        ctx.record("batchnorm_remaining", after)
    elif before:
        earlier = ctx.chain[: ctx.chain.index(ctx.plugin)] if ctx.plugin in ctx.chain else ()
        advice = "" if "fuse" in earlier else "; `fuse` before `quant` does this as its own verified step"
        ctx.log(
            f"folded {before} BatchNormalization node(s) into their Conv (onnxruntime pre-processing){advice}"
        )


def already_quantized(proto: onnx.ModelProto) -> bool:
    if get_metadata(proto, "edgeplug.quant.qat"):
        return True
    return any(n.op_type in QUANTIZED_OPS for n in proto.graph.node)


def quantized_op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
