"""The `quant` plugin's hooks: options, capabilities, Keras QAT loading, checks before the chain, and
quantization (auto: the recipes that fit, verified, timed and repaired; or one recipe as asked)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx
from edgeplug.plugin_api import (
    DYNAMIC_INT8,
    FP16,
    QDQ_INT8,
    Capabilities,
    Model,
    Option,
    PluginError,
    RunContext,
    cpu_info,
    get_metadata,
    hookimpl,
    is_keras_path,
    op_histogram,
    set_metadata,
)

from . import timing
from .calibration import check_samples, check_table, check_table_target, strided
from .cpu_fit import choose_types
from .int8_weights import pack_qat_weights
from .judging import Judge
from .nncf_ptq import available as nncf_available
from .options import OPTIONS, QAT_KEYS, TYPE_KEYS, check_counts, time_budget
from .prepare import prepare
from .ptq import Recipe, compute_nodes, resolve_exclusions
from .recipes import Facts, alternatives, plan, table_path
from .selection import QUANTIZED_OPS, Outcome, Selection

METADATA_KEY = "edgeplug.quant"
FORMS_OF_MODE = {"static": QDQ_INT8, "dynamic": DYNAMIC_INT8, "fp16": FP16}


@hookimpl
def plugin_capabilities(options: dict[str, Any], downstream: frozenset[str]) -> Capabilities:
    """What quant emits: the mode asked for, or under auto every form that all later plugins consume."""
    mode = options.get("mode") or "auto"
    if mode in FORMS_OF_MODE:
        return Capabilities(produces=frozenset({FORMS_OF_MODE[mode]}))
    return Capabilities(produces=frozenset({QDQ_INT8, DYNAMIC_INT8, FP16}) & downstream)


@hookimpl
def plugin_options() -> list[Option]:
    return OPTIONS


@hookimpl
def load_model(path: Path, ctx: RunContext) -> Model | None:
    """A tf_keras model (.h5, .keras, SavedModel folder): quantization-aware training, then ONNX."""
    if not is_keras_path(path):
        return None
    check_counts(ctx.options, QAT_KEYS)  # before training, which runs ahead of pre_optimize
    from .qat import train_and_export

    return train_and_export(path, ctx)


@hookimpl
def pre_optimize(model: Model, ctx: RunContext) -> None:
    """Refuse bad option values and combinations and mismatched data before any step runs."""
    check_counts(ctx.options)
    ctx.state["time_budget_s"] = time_budget(ctx.options)
    if already_quantized(model.proto):
        return
    mode = ctx.options.get("mode") or "auto"
    check_chain(mode, ctx)
    resolve_exclusions(ctx.options.get("exclude") or [], model.proto)
    table = ctx.options.get("calibration_table")
    if table and mode in ("auto", "static"):
        check_table_target(Path(table))
    if mode == "static" or (mode == "auto" and _static_data(ctx)):
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
    mode = opts.get("mode") or "auto"
    check_chain(mode, ctx)
    budget_s = ctx.state["time_budget_s"] if "time_budget_s" in ctx.state else time_budget(opts)
    deadline = None if budget_s is None else time.monotonic() + budget_s
    ctx.record("mode", mode)

    prepared = prepare(model.proto)
    for note in prepared.notes:
        ctx.log(note)
    ctx.record("prepare", prepared.notes)
    batchnorm_hint(prepared.batchnorm_before, prepared.batchnorm_after, ctx)

    names, types = exclusions(model.proto, prepared.proto, ctx)
    choice = choose_types(opts, cpu_info(), ctx.target)
    ctx.record("types", choice.as_dict())
    facts = Facts(
        mode=mode,
        options={k: opts.get(k) for k in (*TYPE_KEYS, "calibration", "rounding")},
        types=choice,
        cpu=cpu_info(),
        downstream=ctx.downstream,
        target=ctx.target,
        static_data=_static_data(ctx),
        exclude_nodes=names,
        exclude_types=types,
        nncf=bool(opts.get("nncf", True)) and nncf_available(),
    )
    with tempfile.TemporaryDirectory(prefix="edgeplug-quant-") as tmp:
        scratch = Path(tmp)
        user_table = opts.get("calibration_table")
        primary = opts.get("calibration") or "minmax"
        table_for = table_path(scratch, Path(user_table) if user_table else None, primary)
        candidates = plan(prepared.proto, facts, table_for)
        for note in candidates.notes:
            ctx.log(note)
        if candidates.skipped:
            ctx.record("not_candidates", candidates.skipped)
        recipes = candidates.recipes
        ctx.record("profile", candidates.profile)
        if not recipes:
            why = "no int8 recipe fits this model and chain: " + "; ".join(
                f"{s['recipe']}: {s['why']}" for s in candidates.skipped
            )
            ctx.record("skipped", why)
            ctx.log(f"{why}; step not applied")
            return None
        why = mode_reason(mode, recipes, ctx)
        ctx.record("mode_reason", why)
        ctx.log(f"mode {mode} ({why})")
        warn_dynamic_conv(mode, model.proto, ctx)
        calibration = calibration_samples(recipes, prepared.proto, ctx)
        timed = mode == "auto" and len(recipes) > 1 and not ctx.qdq_as_float
        if ctx.qdq_as_float and mode == "auto":
            ctx.log("not timing Q/DQ candidates on this CPU: the target computes int8 exactly")
        selection = Selection(
            proto=prepared.proto,
            received=model.proto,
            recipes=recipes,
            fp16=candidates.fp16,
            alternatives=lambda r: alternatives(r, facts, table_for),
            calibration=calibration,
            judge=Judge(ctx, model),
            ctx=ctx,
            scratch=scratch,
            timer=timing.timer_for(ctx) if timed else None,
            repair=bool(opts.get("repair", True)),
            deadline=deadline,
            sensitivity_samples=opts["sensitivity_samples"],
        )
        outcome = selection.run()
        record_outcome(outcome, ctx, timed)
        chosen = outcome.chosen
        if chosen is None or chosen.proto is None:
            return nothing_quantized(outcome, ctx)
        save_table(chosen.recipe, opts, ctx)
        proto = chosen.proto

    summary = chosen.recipe.summary()
    summary["compute_nodes"] = len(compute_nodes(prepared.proto, Recipe(chosen.recipe.mode)))
    summary["op_counts"] = op_histogram(proto)
    ctx.record("recipe", summary)
    set_metadata(proto, METADATA_KEY, json.dumps({"mode": chosen.recipe.mode, "recipe": chosen.recipe.label}))
    return model.replace(proto)


def _static_data(ctx: RunContext) -> bool:
    return ctx.data is not None and ctx.data.source in ("file", "random")


def mode_reason(mode: str, recipes: list[Recipe], ctx: RunContext) -> str:
    if mode != "auto":
        return "as given"
    kinds = sorted({r.mode for r in recipes})
    if not recipes:
        return "no int8 recipe fits this model and chain"
    where = "on this CPU" if not ctx.qdq_as_float else "for the exact int8 target"
    return f"{len(recipes)} candidate recipe(s) ({', '.join(kinds)}) verified and compared {where}"


def warn_dynamic_conv(mode: str, proto: onnx.ModelProto, ctx: RunContext) -> None:
    if mode == "dynamic" and any(n.op_type == "Conv" for n in proto.graph.node):
        ctx.log(
            "warning: dynamic INT8 convolutions (ConvInteger) run slower than float on onnxruntime's CPU "
            "kernels (ResNet-50 here: 5x slower); pass --data for static INT8"
        )


def record_outcome(outcome: Outcome, ctx: RunContext, timed: bool) -> None:
    rows = [v.row() for v in outcome.variants]
    ctx.record("candidates", rows)
    if outcome.float_latency_ms is not None:
        ctx.record("float_latency_ms", round(outcome.float_latency_ms, 3))
    if not timed and ctx.qdq_as_float:
        ctx.record("timing", "not timed: Q/DQ runs on the exact int8 target, not on this CPU")
    if outcome.notes:
        ctx.record("notes", outcome.notes)
    if outcome.repairs:
        ctx.record("repair", outcome.repairs)
    if outcome.search is not None:
        ctx.record("mixed_precision", outcome.search)
    chosen = outcome.chosen
    if chosen is not None:
        ctx.record("chosen", {"recipe": chosen.label, "origin": chosen.origin, "status": chosen.status})
        ctx.log(f"kept {chosen.label} ({chosen.origin}): {chosen.why}")
    if len(rows) > 1:
        for row in rows:
            latency = "-" if row["latency_ms"] is None else f"{row['latency_ms']:.2f} ms"
            ctx.log(f"  {row['recipe']:<48} {row['origin']:<18} {latency:>10}  {row['status']}")


def nothing_quantized(outcome: Outcome, ctx: RunContext) -> None:
    """Not applicable: no recipe quantized anything (e.g. every compute op type excluded), or every variant
    that meets the budget runs slower than the float model on this CPU."""
    if outcome.slower_than_float:
        why = (
            f"{outcome.slower_than_float}: the model stays float. A looser budget (--budget, "
            "-o quant.min_<metric>) may admit a faster variant; -o quant.mode=static keeps one recipe "
            "whatever its speed (e.g. for size)"
        )
        ctx.record("skipped", why)
        ctx.log(f"{why}; step not applied")
        return None
    excluded = ",".join(ctx.options.get("exclude") or [])
    cause = (
        f"-o quant.exclude={excluded} leaves no node that onnxruntime quantizes"
        if excluded
        else "onnxruntime found no node of this model to quantize"
    )
    kinds = "/".join(sorted({v.recipe.mode for v in outcome.variants})) or "int8"
    why = f"no node was quantized ({kinds} INT8): {cause}"
    ctx.record("skipped", why)
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
    ctx.record("recipe", {"mode": "qat", "op_counts": op_histogram(proto)})
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


# -- decisions --------------------------------------------------------------------------------------
def check_chain(mode: str, ctx: RunContext) -> None:
    """An explicit mode must emit a form every later plugin consumes (capabilities, not names)."""
    form = FORMS_OF_MODE.get(mode)
    if form is not None and form not in ctx.downstream:
        allowed = [m for m, f in FORMS_OF_MODE.items() if f in ctx.downstream]
        raise PluginError(
            f"quant: mode={mode} emits {form}, which a later plugin does not consume; use "
            + (" or ".join(f"-o quant.mode={m}" for m in ["auto", *allowed]))
        )


def calibration_samples(recipes: list[Recipe], proto: onnx.ModelProto, ctx: RunContext) -> list[dict]:
    """The calibration samples static recipes need (none when only reused calibration tables are used)."""
    static = [r for r in recipes if r.mode == "static"]
    if not static:
        return []
    tables = [r.table for r in static if r.table is not None and r.table.exists()]
    for table in dict.fromkeys(tables):
        method = next(r.calibration for r in static if r.table == table)
        count = check_table(table, proto, method)
        ctx.log(f"reusing calibration table {table} ({count} tensors)")
        ctx.record("calibration", {"table": str(table), "reused": True, "tensors": count})
    if len(tables) == len(static) and ctx.options.get("mode") == "static":
        return []
    ctx.require_real_data("static calibration")
    limit = ctx.options["calibration_samples"]
    samples = strided(list(ctx.data.calibration[:limit]))[0]  # whole chunks of onnxruntime's strided MinMax
    check_samples(samples, proto, "calibration")
    if "calibration" not in ctx.details:
        ctx.record(
            "calibration",
            {"method": static[0].calibration, "samples": len(samples), "source": ctx.data.source},
        )
    ctx.log(f"calibrating on {len(samples)} samples")
    return samples


def save_table(recipe: Recipe, opts: dict[str, Any], ctx: RunContext) -> None:
    """Record the calibration table written at quant.calibration_table (calibration writes it there)."""
    wanted = opts.get("calibration_table")
    if recipe.mode != "static" or not wanted or recipe.table is None:
        return
    if (
        Path(wanted) == recipe.table
        and recipe.table.exists()
        and not ctx.details.get("calibration", {}).get("reused")
    ):
        ctx.log(f"calibration table written to {wanted}")
        ctx.details.setdefault("calibration", {})["table_written"] = str(wanted)


def batchnorm_hint(before: int, after: int, ctx: RunContext) -> None:
    if after:
        ctx.log(
            f"hint: {after} BatchNormalization node(s) remain and stay in float; put a plugin that folds "
            "BatchNormalization before quant to fold them"
        )
        ctx.record("batchnorm_remaining", after)
    elif before:
        ctx.log(
            f"folded {before} BatchNormalization node(s) into their Conv (onnxruntime pre-processing); a "
            "plugin that folds BatchNormalization before quant makes it its own verified step"
        )


def already_quantized(proto: onnx.ModelProto) -> bool:
    if get_metadata(proto, "edgeplug.quant.qat"):
        return True
    return any(n.op_type in QUANTIZED_OPS for n in proto.graph.node)
