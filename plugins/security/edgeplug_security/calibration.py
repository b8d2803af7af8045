"""Run-time work of `--plugins security`: record the input spec and calibrate the squeezing threshold."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
from edgeplug import DataError, Dataset, Model, PluginError, RunContext
from edgeplug.plugin_api import run_all, session

from .input_spec import InputSpec, observed_range, parse_ranges
from .record import SecurityRecord
from .settings import SecuritySettings
from .squeeze import Squeezer, classifier_io, threshold_for

CHUNK = 64  # samples per onnxruntime call when the batch dimension is dynamic


def build_record(model: Model, ctx: RunContext) -> SecurityRecord:
    """Input spec from the model, ranges from the user or the calibration data, and a squeezing threshold."""
    settings: SecuritySettings = ctx.settings
    names = [s.name for s in model.inputs]
    user = parse_ranges(settings.input_range, names)
    real = ctx.data.is_real
    if real:
        require_finite(ctx.data.calibration)
    margin = settings.range_margin
    specs: dict[str, InputSpec] = {}
    for tensor in model.inputs:
        spec = InputSpec.from_tensor(tensor)
        if tensor.name in user:
            spec = spec.with_range(*user[tensor.name], "user")
        elif real and tensor.dtype.kind == "f":
            spec = spec.with_range(
                *observed_range(ctx.data.calibration, tensor.name, margin),
                f"calibration data with margin {margin:g}",
            )
        specs[tensor.name] = spec
    if not real and not user:
        ctx.log(
            f"warning: {ctx.data.source} data: no value range recorded (pass --data or -o security.input_range)"
        )
    return SecurityRecord(specs, calibrate_squeezer(model, ctx, specs, user), True)


def require_finite(samples: Sequence[dict[str, np.ndarray]]) -> None:
    """DataError on the first calibration sample holding NaN or Inf: its range would be [NaN, NaN], and a
    NaN bound compares false with every value, which would switch the range check off."""
    for index, sample in enumerate(samples):
        for name, array in sample.items():
            array = np.asarray(array)
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                bad = int(np.count_nonzero(~np.isfinite(array)))
                raise DataError(
                    f"security: calibration sample {index} holds {bad} NaN or Inf value(s) in input "
                    f"{name!r}; the input range and squeezing threshold need finite calibration data"
                )


def calibrate_squeezer(
    model: Model, ctx: RunContext, specs: dict[str, InputSpec], user: dict[str, tuple[float, float]]
) -> Squeezer | None:
    """For an image classifier on real data: the threshold flagging `squeeze_fpr` of clean calibration images."""
    found = classifier_io(model.inputs, model.outputs)
    if found is None:
        return None
    if not ctx.data.is_real:
        ctx.log("warning: no real data: the feature-squeezing threshold is not calibrated")
        return None
    name, output, layout = found
    low, high = user.get(name) or observed_range(ctx.data.calibration, name, 0.0)
    settings: SecuritySettings = ctx.settings
    fpr = settings.squeeze_fpr
    squeezer = Squeezer(name, output, layout, low, high, settings.squeeze_bits, settings.squeeze_median)
    run = batch_runner(model, ctx.threads)
    batches = chunks(ctx.data.calibration, model)
    originals = [run(chunk)[output] for chunk in batches]
    squeezer = keep_harmless(squeezer, run, batches, originals, ctx)
    if squeezer is None:
        return None
    scores = [
        squeezer.scores(run, chunk, original)
        for chunk, original in ctx.progress(
            zip(batches, originals), "calibrating feature squeezing", total=len(batches)
        )
    ]
    all_scores = np.concatenate(scores)
    threshold = threshold_for(all_scores, fpr)
    if not np.isfinite(threshold):
        raise PluginError(
            "security: the model's outputs on the calibration data give a non-finite feature-squeezing "
            "threshold; check the model's outputs on that data or pass -o security.squeeze_bits=0 "
            "-o security.squeeze_median=0 to record no squeezer"
        )
    ctx.log(
        f"feature squeezing: threshold {threshold:.4f} flags {np.mean(all_scores > threshold):.1%} "
        f"of {len(all_scores)} clean calibration images (target {fpr:.1%})"
    )
    return Squeezer(
        name, output, layout, low, high, squeezer.bits, squeezer.median, threshold, fpr, len(all_scores)
    )


def keep_harmless(
    squeezer: Squeezer,
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    batches: Sequence[dict[str, np.ndarray]],
    originals: Sequence[np.ndarray],
    ctx: RunContext,
) -> Squeezer | None:
    """Drop a squeezer that keeps the top-1 class of fewer than `squeeze_min_agreement` of the clean images
    (default 95%): it destroys the
    image (e.g. a 2x2 median on 8x8 digits) and would drown the adversarial signal (Xu et al. choose
    squeezers that keep the accuracy on legitimate inputs)."""
    kept = {"bits": squeezer.bits, "median": squeezer.median}
    for field, value in (("bits", squeezer.bits), ("median", squeezer.median if squeezer.median > 1 else 0)):
        if not value:
            continue
        alone = replace(squeezer, **{"bits": 0, "median": 0, field: value})
        agree = np.mean(
            np.concatenate(
                [
                    run({**chunk, squeezer.input: alone.squeezed(chunk[squeezer.input])[0]})[
                        squeezer.output
                    ].argmax(1)
                    == original.argmax(1)
                    for chunk, original in zip(batches, originals)
                ]
            )
        )
        ctx.record(f"squeeze_{field}_top1_agreement", round(float(agree), 4))
        if agree < ctx.settings.squeeze_min_agreement:
            kept[field] = 0
            ctx.log(
                f"feature squeezing: dropping the {field}={value} squeezer: it changes the top-1 class of "
                f"{1 - agree:.1%} of the clean calibration images"
            )
    if not kept["bits"] and not kept["median"]:
        ctx.log("warning: no feature squeezer keeps the clean predictions; squeezing is not recorded")
        return None
    return replace(squeezer, **kept)


def batch_runner(model: Model, threads: int) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Run a batch in one call when the batch dimension is dynamic, else one sample at a time."""
    sess = session(model.serialized(), threads)
    one = any(s.shape and s.shape[0] == 1 for s in model.inputs)

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(next(iter(feed.values())))
        samples = [{k: v[i : i + 1] for k, v in feed.items()} for i in range(count)] if one else [feed]
        return run_all(sess, samples)

    return run


def chunks(samples: Sequence[dict[str, np.ndarray]], model: Model) -> list[dict[str, np.ndarray]]:
    size = CHUNK if all(not isinstance(s.shape[0], int) for s in model.inputs if s.shape) else 1
    return [Dataset.stack(samples[i : i + size]) for i in range(0, len(samples), size)]
