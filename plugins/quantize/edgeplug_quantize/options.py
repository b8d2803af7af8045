"""The options of the `quant` plugin (the names scripts rely on) and the default verification budget."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgeplug import Option, OptionError
from edgeplug.options import Tolerance, check_tolerance_values

MODES = ("static", "dynamic", "fp16")
CALIBRATIONS = ("minmax", "entropy", "percentile")
INT8_TYPES = ("u8", "s8")

# Default verification budget of an INT8/FP16 step: outputs must stay close in direction, not elementwise
# exact (rounding to 8 bits cannot be). No default top-1 budget: the core treats every 2-D output as logits,
# and argmax agreement of embeddings (BERT's pooler_output) or of random-weight classifiers with near-equal
# logits flips under any rounding; users set min_top1 for their classifiers (which also runs the search).
DEFAULT_MIN_COSINE = 0.98

OPTIONS: list[Option] = [
    Option(
        "mode",
        "str",
        None,
        "static | dynamic | fp16 (default: static when --data is a real file, else dynamic)",
        MODES,
    ),
    Option("per_channel", "bool", True, "quantize weights per output channel"),
    Option(
        "calibration",
        "str",
        "minmax",
        "static calibration method: minmax | entropy | percentile",
        CALIBRATIONS,
    ),
    Option("exclude", "list", [], "node names or op types (e.g. Softmax) kept in float"),
    Option(
        "activation_type", "str", None, "u8 | s8 (default: chosen for this CPU and the chain)", INT8_TYPES
    ),
    Option("weight_type", "str", None, "s8 | u8 (default: chosen for this CPU and the chain)", INT8_TYPES),
    Option(
        "reduce_range", "bool", None, "7-bit weights against u8*s8 saturation (default: on x86 without VNNI)"
    ),
    Option(
        "symmetric",
        "bool",
        None,
        "symmetric activations and weights, zero point 0 (default: when trt or neon follows)",
    ),
    Option("calibration_samples", "int", 128, "calibration samples used (at most)"),
    Option(
        "calibration_table",
        "path",
        None,
        "JSON calibration ranges: written after calibration, reused when the file exists",
    ),
    Option("qat_epochs", "int", 2, "fine-tuning epochs of quantization-aware training (Keras input)"),
    Option("qat_batch_size", "int", 32, "batch size of quantization-aware training"),
    Option(
        "metric",
        "callable",
        None,
        "budget metric: a Python callable, or 'module:function' / 'file.py:function', called (reference, candidate, labels)"
        " -> float, higher is better; drives the mixed-precision search with min_metric",
    ),
    Option("min_metric", "float", None, "smallest value of `metric` the quantized model may score"),
    Option("sensitivity_samples", "int", 64, "validation samples used to rank node sensitivity"),
    Option(
        "min_cosine",
        "float",
        DEFAULT_MIN_COSINE,
        "smallest cosine between float and quantized outputs; setting it runs the mixed-precision search",
    ),
    Option(
        "min_top1",
        "float",
        None,
        "smallest top-1 agreement on logits (0..1); setting it runs the mixed-precision search",
    ),
]

# Counts that must be at least 1 (0 or a negative value is refused, never replaced by the default).
AT_LEAST_ONE = ("calibration_samples", "sensitivity_samples", "qat_epochs", "qat_batch_size")
QAT_KEYS = ("qat_epochs", "qat_batch_size")


def check_counts(options: Mapping[str, Any], keys: tuple[str, ...] = AT_LEAST_ONE) -> None:
    """Refuse a count option below 1 (or unset, from Python) with an OptionError naming it."""
    for key in keys:
        value = options.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise OptionError(
                f"quant.{key} must be an integer of at least 1 (allowed: 1 or more), got {value!r}"
            )


def check_tolerance(tolerance: Tolerance) -> None:
    """Refuse a user-set budget outside its range (min_cosine in [-1, 1], min_top1 in [0, 1], ...), with the
    core's bounds and message (the core checks them too when it parses options; hooks may be called directly)."""
    check_tolerance_values("quant", {key: getattr(tolerance, key) for key in tolerance.user_set})
