"""The options of the `quant` plugin, each declared once with its type, default, bounds and help, and the
default verification budget."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgeplug.plugin_api import Option, OptionError, parse_duration

MODES = ("auto", "static", "dynamic", "fp16")
CALIBRATIONS = ("minmax", "entropy", "percentile")
ROUNDINGS = ("nearest", "gptq")
INT8_TYPES = ("u8", "s8")

# Default budget: every output's cosine with the float model on every validation sample (the worst sample,
# not one figure over the batch). No default top-1 budget: the argmax of an embedding or of a random-weight
# classifier flips under any rounding; users set min_top1 (or --metric/--budget) for their classifiers.
DEFAULT_MIN_COSINE = 0.99
# A quantizer's slice budget (issue 13): loose enough for int8 logits, tight enough to catch a row that is
# reversed or scaled by 2 (error > 0.8; a zeroed row fails as dead whatever the budget). Measured: plain
# static INT8 of a 3-layer MLP (tests/quant/test_mixed_precision.py) puts one class's logits 0.26 of their
# range off over 200 samples, with whole-output cosine 0.991; 0.25 would fail it.
DEFAULT_MAX_SLICE_ERROR = 0.5

OPTIONS: list[Option] = [
    Option(
        "mode",
        "str",
        "auto",
        "auto: try the recipes that fit the model and the chain, keep the fastest that meets the budget; "
        "static | dynamic | fp16: that recipe only",
        MODES,
    ),
    Option(
        "time_budget_s",
        "str",
        None,
        "wall-clock limit of auto's search and of the repair, e.g. 90s or 30m (default: none); the best "
        "variant found by then is kept",
    ),
    Option(
        "repair",
        "bool",
        True,
        "when a recipe misses the budget, keep the tensors and nodes that cause it in float",
    ),
    Option(
        "nncf",
        "bool",
        True,
        "auto also tries NNCF's bias-corrected static recipe on convolutional networks (needs nncf: "
        "pip install edgeplug-quantize[nncf])",
    ),
    Option("per_channel", "bool", None, "quantize weights per output channel (default: chosen)"),
    Option(
        "calibration",
        "str",
        None,
        "static calibration method: minmax | entropy | percentile (default: minmax, others tried by auto)",
        CALIBRATIONS,
    ),
    Option(
        "rounding",
        "str",
        None,
        "static int8 weights: nearest | gptq (each Conv/Gemm/MatMul's rounding errors compensated through its "
        "calibration inputs; same scales and speed); default nearest, gptq tried by auto when a recipe misses",
        ROUNDINGS,
    ),
    Option("exclude", "list", [], "node names or op types (e.g. Softmax) kept in float"),
    Option(
        "activation_type", "str", None, "u8 | s8 (default: chosen for this CPU and the target)", INT8_TYPES
    ),
    Option("weight_type", "str", None, "s8 | u8 (default: chosen for this CPU and the target)", INT8_TYPES),
    Option(
        "reduce_range", "bool", None, "7-bit weights against u8*s8 saturation (default: on x86 without VNNI)"
    ),
    Option(
        "symmetric",
        "bool",
        None,
        "symmetric activations and weights, zero point 0 (default: when the target wants symmetric int8)",
    ),
    Option("calibration_samples", "int", 128, "calibration samples used (at most)", minimum=1),
    Option(
        "calibration_table",
        "path",
        None,
        "JSON calibration ranges: written after calibration, reused when the file exists",
    ),
    Option(
        "qat_epochs", "int", 2, "fine-tuning epochs of quantization-aware training (Keras input)", minimum=1
    ),
    Option("qat_batch_size", "int", 32, "batch size of quantization-aware training", minimum=1),
    Option("sensitivity_samples", "int", 64, "validation samples used to rank node sensitivity", minimum=1),
    Option(
        "min_cosine",
        "float",
        DEFAULT_MIN_COSINE,
        "smallest cosine between float and quantized outputs on any validation sample",
        minimum=-1.0,
        maximum=1.0,
    ),
    Option(
        "max_slice_error",
        "float",
        DEFAULT_MAX_SLICE_ERROR,
        "largest error of any output slice (row, channel, class) relative to its reference range",
        minimum=0.0,
    ),
]

# Counts that must be at least 1 (0 or a negative value is refused, never replaced by the default).
AT_LEAST_ONE = tuple(o.name for o in OPTIONS if o.type == "int" and o.minimum == 1)
QAT_KEYS = ("qat_epochs", "qat_batch_size")
TYPE_KEYS = ("activation_type", "weight_type", "reduce_range", "symmetric", "per_channel")
_BY_NAME = {o.name: o for o in OPTIONS}


def check_counts(options: Mapping[str, Any], keys: tuple[str, ...] = AT_LEAST_ONE) -> None:
    """Refuse a count below its minimum (or unset, from Python) with the core's message format; hooks may be
    called directly, without the core's parsing."""
    for key in keys:
        value = options.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise OptionError(f"bad value {value!r} for quant.{key}: expected {_BY_NAME[key].expectation()}")
        _BY_NAME[key].parse(value, "quant")


def time_budget(options: Mapping[str, Any]) -> float | None:
    """`time_budget_s` in seconds (None: no limit); a bad duration is an OptionError."""
    value = options.get("time_budget_s")
    if value is None or value == "":
        return None
    return parse_duration(value, "quant.time_budget_s")
