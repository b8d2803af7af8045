"""The adaptive plugin's options, declared once: the core parses `-o adaptive.KEY=VALUE` into this class."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from edgeplug import option
from edgeplug.plugin_api import OptionError, RunContext

FINAL = "@final"
ORIGINAL = "@original"


@dataclass
class AdaptiveSettings:
    """How the cascade is built and calibrated. Its budget is the step's tolerance (`min_top1` below, or
    `-o adaptive.min_<metric>`, `--budget`), judged against the cascade's largest model."""

    models: list[str] = option(
        [],
        "the cascade's models, smallest first: .onnx paths, or @final (the chain's final model) and "
        "@original (the model the chain started from); default @final,@original",
    )
    gate: str = option(
        "confidence",
        "what sends an input on to the next model: confidence (top-1 probability), margin (top-1 minus "
        "top-2 probability), entropy, complexity (image gradient energy, non-padding token count), or a "
        "function module:function / file.py:function called (inputs, outputs) -> one score per input, "
        "higher meaning the model's answer is kept",
    )
    output: str | None = option(
        None, "the logits output the gate reads (default: the first 2-D [N, C>=2] float output)"
    )
    complexity_input: str | None = option(
        None, "the input the complexity gate reads (default: the first input)"
    )
    pad_token: int = option(0, "the token id the complexity gate counts as padding in integer inputs")
    # the default budget of the cascade against its largest model; the core reads it as a tolerance
    min_top1: float = option(
        0.99, "smallest top-1 agreement of the cascade with its largest model", minimum=0.0, maximum=1.0
    )
    margin: float | None = option(
        None,
        "how far above each budget the cascade must score on the selection samples; default budget/n "
        "for n selection samples, the correction of conformal risk control, which keeps the expected "
        "share of inputs that break the budget's metric on new data within the budget",
        minimum=0.0,
        maximum=0.5,
    )
    selection: float = option(
        0.5,
        "share of the calibration samples held out to choose the thresholds on, carved before any step "
        "runs so that no step fits on them (1: all calibration samples, which earlier steps fit on too)",
        minimum=0.01,
        maximum=1.0,
    )
    costs: list[str] = option(
        [],
        "each model's cost per input in ms, smallest model first (measured on the target device, say); "
        "default: measured here with the core's benchmark",
    )
    bench_runs: int = option(
        100, "timed runs per model when the costs are measured here", minimum=5, maximum=100000
    )
    thresholds: int = option(64, "candidate thresholds tried per gate stage", minimum=2, maximum=1024)

    def parsed_costs(self, count: int) -> list[float] | None:
        """The given costs as numbers (None when they are to be measured); OptionError when malformed."""
        if not self.costs:
            return None
        try:
            values = [float(v) for v in self.costs]
        except ValueError:
            values = []
        if len(values) != count or not all(v > 0 and v != float("inf") for v in values):
            raise OptionError(
                f"bad value {','.join(self.costs)!r} for adaptive.costs: expected {count} positive numbers "
                "(ms per input), one per model, smallest model first"
            )
        return values


def settings_of(ctx: RunContext) -> AdaptiveSettings:
    """The typed settings the core hands the plugin, or built from `ctx.options` (a hand-made context)."""
    if isinstance(ctx.settings, AdaptiveSettings):
        return ctx.settings
    names = {f.name for f in fields(AdaptiveSettings)}
    given: dict[str, Any] = {k: v for k, v in (ctx.options or {}).items() if k in names}
    return AdaptiveSettings(**given)
