"""The recipes auto tries: those that fit the model (MatMul-heavy encoder or convolutional network), the chain
(only forms every later plugin consumes; the target's symmetric int8 and int8-only Q/DQ), the CPU (u8/s8,
reduce_range without VNNI) and the data (static needs real calibration data), with NNCF's bias-corrected static
recipe for convolutional networks where NNCF is installed; and for each recipe its
accuracy alternatives, which keep the same graph (so the same latency) and change only numbers: the weights'
rounding, the calibration method and reduce_range."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
from edgeplug.plugin_api import DYNAMIC_INT8, FP16, INT8_QDQ_ONLY, QDQ_INT8

from .cpu_fit import TypeChoice, needs_reduce_range
from .ptq import DYNAMIC_OPS, Recipe, dynamic_ops_for

MATMUL_OPS = ("MatMul", "Gemm", "Attention", "LSTM", "GRU", "EmbedLayerNormalization")
CONV_OPS = ("Conv", "ConvTranspose")
CALIBRATION_ORDER = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class Facts:
    """What the choice depends on besides the model."""

    mode: str  # auto | static | dynamic | fp16
    options: Mapping[str, Any]  # the plugin's option values (None: not set by the user)
    types: TypeChoice  # CPU/target-fitted types with the user's settings applied
    cpu: Mapping[str, Any]
    downstream: frozenset[str]  # forms every later plugin consumes
    target: frozenset[str]  # target properties of later compile plugins
    static_data: bool  # real (or explicitly random) calibration data is available
    exclude_nodes: tuple[str, ...] = ()
    exclude_types: tuple[str, ...] = ()
    nncf: bool = False  # NNCF is installed and the user did not turn its recipe off (quant.nncf)


@dataclass
class Plan:
    """The recipes to try, in order of preference, the FP16 fallback, and what was left out and why."""

    recipes: list[Recipe]
    fp16: Recipe | None
    skipped: list[dict[str, str]] = field(default_factory=list)
    profile: str = ""
    notes: list[str] = field(default_factory=list)


def profile_of(proto: onnx.ModelProto) -> str:
    """'encoder' when MatMul-like layers dominate (transformers, recurrent nets, MLPs), else 'convolutional'."""
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    matmul = sum(counts.get(op, 0) for op in MATMUL_OPS)
    conv = sum(counts.get(op, 0) for op in CONV_OPS)
    return "encoder" if matmul and matmul >= conv else "convolutional"


def plan(proto: onnx.ModelProto, facts: Facts, table_for: Any) -> Plan:
    """The candidate recipes for `proto`. `table_for(method)` gives the calibration table path of a method."""
    profile = profile_of(proto)
    types = facts.types
    user = {k for k, v in facts.options.items() if v is not None}
    common = {"exclude_nodes": facts.exclude_nodes, "exclude_types": facts.exclude_types}
    result = Plan([], None, profile=profile)
    fits = {
        "static": QDQ_INT8 in facts.downstream,
        "dynamic": DYNAMIC_INT8 in facts.downstream,
        "fp16": FP16 in facts.downstream,
    }
    if facts.mode != "auto":
        recipe = _explicit(facts, proto, table_for, common)
        result.recipes.append(recipe)
        return result

    if not fits["static"]:
        result.skipped.append({"recipe": "static", "why": "a later plugin does not consume int8 Q/DQ"})
    elif not facts.static_data:
        result.skipped.append(
            {"recipe": "static", "why": "needs real calibration data (--data FILE, or --data random)"}
        )
    else:
        base = _static(facts, table_for, common)
        result.recipes.append(base)
        if not types.symmetric:
            if "activation_type" not in user:
                other = "s8" if base.activation_type == "u8" else "u8"
                result.recipes.append(replace(base, activation_type=other))
            if profile == "convolutional" and "per_channel" not in user and base.per_channel:
                result.recipes.append(replace(base, per_channel=False))
        if profile == "convolutional":
            why_not = _why_not_nncf(facts, user)
            if why_not:
                result.skipped.append({"recipe": "static nncf bias-corrected", "why": why_not})
            else:
                result.recipes.append(Recipe("static", engine="nncf", table=None, **common))
    if fits["dynamic"] and profile == "convolutional" and result.recipes:
        # timed like the others: ConvInteger is slower than float on onnxruntime's CPU kernels, so it wins
        # only where that is not so; it is verified only if it is the fastest
        ops, _ = dynamic_ops_for(proto)
        if "Conv" in ops:
            result.recipes.append(
                Recipe(
                    "dynamic",
                    per_channel=True,
                    reduce_range=types.reduce_range
                    if "reduce_range" in user
                    else needs_reduce_range(facts.cpu),
                    dynamic_ops=ops,
                    **common,
                )
            )
    elif fits["dynamic"] and (profile == "encoder" or not result.recipes):
        ops, note = dynamic_ops_for(proto)
        if note:
            result.notes.append(note)
        reduce = types.reduce_range if "reduce_range" in user else needs_reduce_range(facts.cpu)
        dynamic = Recipe(
            "dynamic",
            per_channel=True,
            weight_type=types.weight_type if "weight_type" in user else "s8",
            reduce_range=reduce,
            dynamic_ops=ops,
            **common,
        )
        grains = [types.per_channel] if "per_channel" in user else [True, False]
        result.recipes.extend(replace(dynamic, per_channel=g) for g in grains)
        if "Conv" in ops:  # a convolutional net without calibration data: also the MatMul/Gemm-only variant
            result.recipes.append(replace(dynamic, dynamic_ops=DYNAMIC_OPS))
    elif not fits["dynamic"]:
        result.skipped.append({"recipe": "dynamic", "why": "a later plugin does not consume dynamic int8"})
    if fits["fp16"]:
        result.fp16 = Recipe("fp16", **common)
    else:
        result.skipped.append({"recipe": "fp16", "why": "a later plugin does not consume float16"})
    return result


def _why_not_nncf(facts: Facts, user: set[str]) -> str | None:
    """Why auto does not try NNCF's bias-corrected static recipe (nncf_ptq.py) here, or None."""
    if not facts.nncf:
        return "nncf is not installed (pip install edgeplug-quantize[nncf]) or quant.nncf=false"
    fixed = sorted(
        user
        & {
            "activation_type",
            "weight_type",
            "reduce_range",
            "symmetric",
            "per_channel",
            "calibration",
            "rounding",
        }
    )
    if fixed:
        return f"the user fixed {', '.join(fixed)} (onnxruntime's recipe only)"
    if facts.types.symmetric or INT8_QDQ_ONLY in facts.target:
        return "the target wants symmetric int8 Q/DQ"
    if needs_reduce_range(facts.cpu):
        return "its full-range s8 weights saturate u8 x s8 products on a CPU without VNNI"
    return None


def _explicit(facts: Facts, proto: onnx.ModelProto, table_for: Any, common: dict[str, Any]) -> Recipe:
    types = facts.types
    if facts.mode == "fp16":
        return Recipe("fp16", **common)
    if facts.mode == "dynamic":
        ops, _ = dynamic_ops_for(proto)
        return Recipe(
            "dynamic",
            per_channel=types.per_channel,
            weight_type=types.weight_type,
            reduce_range=types.reduce_range,
            dynamic_ops=ops,
            **common,
        )
    return _static(facts, table_for, common)


def _static(facts: Facts, table_for: Any, common: dict[str, Any]) -> Recipe:
    """Static Q/DQ with the fitted types and the primary calibration method; float biases for a target that
    parses int8 Q/DQ only."""
    types = facts.types
    calibration = facts.options.get("calibration") or "minmax"
    return Recipe(
        "static",
        per_channel=types.per_channel,
        calibration=calibration,
        activation_type=types.activation_type,
        weight_type=types.weight_type,
        reduce_range=types.reduce_range,
        symmetric=types.symmetric,
        table=table_for(calibration),
        extra={"QuantizeBias": False} if INT8_QDQ_ONLY in facts.target else {},
        rounding=facts.options.get("rounding") or "nearest",
        **common,
    )


def alternatives(recipe: Recipe, facts: Facts, table_for: Any) -> list[Recipe]:
    """Same graph, other numbers: GPTQ's rounding, the calibration methods and reduce_range the user did not
    fix. GPTQ first: it is the one that removes weight error (rounding.py)."""
    user = {k for k, v in facts.options.items() if v is not None}
    found: list[Recipe] = []
    if recipe.engine == "nncf":
        return found  # its calibration, rounding and reduce_range are NNCF's own
    if recipe.mode == "static" and "rounding" not in user and recipe.rounding == "nearest":
        found.append(replace(recipe, rounding="gptq"))
    if recipe.mode == "static" and "calibration" not in user:
        for method in CALIBRATION_ORDER:
            if method != recipe.calibration:
                found.append(replace(recipe, calibration=method, table=table_for(method)))
    if recipe.mode in ("static", "dynamic") and "reduce_range" not in user and not recipe.symmetric:
        found.append(replace(recipe, reduce_range=not recipe.reduce_range))
    return found


def table_path(folder: Path, user_table: Path | None, primary: str) -> Any:
    """`table_for(method)`: the user's calibration table (`calibration_table`) for the primary method, a
    scratch table per method in `folder` for the others."""

    def table_for(method: str) -> Path:
        if user_table is not None and method == primary:
            return Path(user_table)
        return folder / f"calibration-{method}.json"

    return table_for
