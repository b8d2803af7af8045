"""The `security` plugin: records an input spec and a feature-squeezing threshold during `edgeplug run`, and
guards `edgeplug infer --guard security`: model integrity, input checks, isolated execution with a timeout
and a memory limit, adversarial-input detection, and output filtering (abstention, label deny list)."""

from __future__ import annotations

import math
import re
from collections.abc import Generator
from dataclasses import replace
from typing import Any

import numpy as np
from edgeplug import (
    GuardRefusal,
    InferenceRequest,
    InferenceResult,
    Model,
    Option,
    OptionError,
    RunContext,
    hookimpl,
)
from edgeplug.context import Runner

from . import inprocess, integrity, isolation
from .calibration import build_record
from .input_spec import InputSpec, check_inputs, parse_ranges
from .output_filter import abstention, classifier_output, confidence
from .record import SecurityRecord, read_record
from .squeeze import Squeezer

NAME = "security"
OPTIONS = [
    # recorded during `edgeplug run`
    Option(
        "range_margin",
        "float",
        0.05,
        "widen the value range observed on the calibration data by this fraction of its span on each side",
    ),
    Option(
        "input_range",
        "list",
        [],
        "allowed input values: LOW,HIGH for every input, or NAME:LOW:HIGH items "
        "(at run time: recorded instead of the observed range; at inference: overrides the record)",
    ),
    Option(
        "squeeze_fpr",
        "float",
        0.05,
        "false-positive rate the feature-squeezing threshold is calibrated to "
        "on the clean calibration images",
    ),
    Option("squeeze_bits", "int", 3, "bit depth of the bit-depth-reduction squeezer (0 disables it)"),
    Option("squeeze_median", "int", 2, "window side of the median-smoothing squeezer (0 or 1 disables it)"),
    Option(
        "squeeze_min_agreement",
        "float",
        0.95,
        "drop a squeezer that keeps the top-1 class of fewer than "
        "this fraction of the clean calibration images (0 keeps every squeezer)",
    ),
    # guarded inference
    Option(
        "require_hash",
        "bool",
        True,
        "refuse a model without a <stem>.edgeplug.json sidecar recording its "
        "sha256 (a sidecar, when present, is always checked)",
    ),
    Option(
        "sha256",
        "str",
        None,
        "sha256 pinned out of band: of the model's run record <stem>.edgeplug.json when it has one (one pin "
        "covers the model, its external data and its compiled artifact), else of the .onnx file itself; "
        "satisfies require_hash",
    ),
    Option("check_inputs", "bool", True, "check dtype, shape, NaN/Inf and value range of every input"),
    Option(
        "isolate",
        "bool",
        True,
        "run the model in a separate worker process with timeout_s and memory_mb (false: in this process, "
        "still from the verified bytes)",
    ),
    Option(
        "timeout_s",
        "float",
        None,
        f"wall-clock limit of one call into the isolated worker, starting it and loading the model included "
        f"when the call needs a fresh one; past it the worker is killed (default {isolation.TIMEOUT_S:g}; "
        "refused with isolate=false)",
    ),
    Option(
        "memory_mb",
        "int",
        None,
        f"address-space limit (RLIMIT_AS) of the isolated worker in MiB, runtime included (default "
        f"{isolation.MEMORY_MB}; 0: no limit; refused with isolate=false)",
    ),
    Option(
        "squeeze",
        "bool",
        False,
        "flag adversarial images by feature squeezing (one extra inference per recorded squeezer)",
    ),
    Option("squeeze_threshold", "float", None, "override the recorded feature-squeezing threshold"),
    Option(
        "on_adversarial",
        "str",
        "flag",
        "what a flagged input gets: a flag, an abstention, or a refusal",
        choices=("flag", "abstain", "refuse"),
    ),
    Option("min_confidence", "float", 0.0, "abstain when the top-1 probability is below this (0: off)"),
    Option("deny_labels", "list", [], "abstain when the top-1 label is one of these class indices"),
]


@hookimpl
def plugin_options() -> list[Option]:
    return OPTIONS


@hookimpl
def pre_optimize(model: Model, ctx: RunContext) -> None:
    """Check the option values before the core's reference pass and any earlier step do any work."""
    check_options(ctx.options)
    parse_ranges(ctx.options.get("input_range") or [], [s.name for s in model.inputs])


@hookimpl
def transform_graph(model: Model, ctx: RunContext) -> Model:
    """Write the input spec and the squeezing threshold into metadata_props (the graph is untouched)."""
    if ctx.following:
        ctx.log(
            f"warning: {', '.join(ctx.following)} run after security; put security last so the record "
            "describes the final model"
        )
    check_options(ctx.options)
    record = build_record(model, ctx)
    proto = model.copy_proto()
    record.write(proto)
    ctx.record("input_spec", {name: spec.as_dict() for name, spec in record.inputs.items()})
    ctx.record("squeeze", record.squeezer.as_dict() if record.squeezer else None)
    return model.replace(proto)


@hookimpl(wrapper=True)
def guard_inference(request: InferenceRequest) -> Generator[None, InferenceResult, InferenceResult]:
    """Integrity, input checks and the isolated (or verified in-process) runner; then squeezing and
    output filtering on the result."""
    opts = options_of(request)
    verified = integrity.verify_model(request.model_path, bool(opts["require_hash"]), opts["sha256"])
    if request.artifact is not None:  # the core's private copy, byte for byte what the pinned record lists
        integrity.check_artifact(request.model_path, verified, request.artifact)
    model = request.model if request.model is not None else Model.load(request.model_path)
    record = read_record(model)
    if opts["check_inputs"]:
        specs = _specs(record, opts)
        check_inputs(
            request.inputs, specs, batch_free=any(s.shape and s.shape[0] == 1 for s in specs.values())
        )
    squeezer = _squeezer(record, opts) if opts["squeeze"] else None
    min_confidence, deny = _filters(model, opts)
    request.run = _runner(request, verified, opts)

    result = yield

    reasons = [result.reason] if result.abstained and result.reason else []
    if verified.recorded or opts["sha256"]:
        result.flags["model_sha256"] = verified.sha256
    if squeezer is not None:
        reasons += _squeeze(request, result, squeezer, opts["on_adversarial"])
    name = classifier_output(result.outputs)
    if name is not None and (min_confidence > 0 or deny):
        labels, scores = confidence(result.outputs[name])
        result.flags["confidence"] = [round(float(s), 4) for s in scores]
        why = abstention(labels, scores, min_confidence, deny)
        if why:
            reasons.append(why)
    if reasons:
        result.abstained = True
        result.reason = "; ".join(reasons)
    return result


def _specs(record: SecurityRecord, opts: dict[str, Any]) -> dict[str, InputSpec]:
    """The recorded input specs, with the ranges given at inference (`input_range`) taking precedence."""
    specs = dict(record.inputs)
    for name, (low, high) in parse_ranges(opts["input_range"] or [], list(specs)).items():
        specs[name] = specs[name].with_range(low, high, "security.input_range")
    return specs


def _runner(request: InferenceRequest, verified: integrity.Verified, opts: dict[str, Any]) -> Runner:
    """The model runs from the verified bytes: in the isolated worker, or in a session of this process, with
    the caller's thread count (`edgeplug infer --threads`, `edgeplug.infer(threads=...)`)."""
    threads = max(int(request.threads), 1)
    if request.artifact is not None:  # `edgeplug infer --artifact`: the core's run is the artifact's runner
        if opts["isolate"]:
            raise OptionError(
                "security: the isolated worker runs .onnx models only; to guard a compiled artifact "
                "(--artifact) pass -o security.isolate=false"
            )
        return request.run
    if opts["isolate"]:
        memory_mb = isolation.MEMORY_MB if opts["memory_mb"] is None else opts["memory_mb"]
        timeout_s = isolation.TIMEOUT_S if opts["timeout_s"] is None else opts["timeout_s"]
        key = isolation.model_key(
            request.model_path,
            verified.sha256,
            memory_mb,
            threads,
            verified.external,
            verified.external_sha256,
        )
        return isolation.runner(key, float(timeout_s))
    return inprocess.runner(
        request.model_path, verified.sha256, threads, verified.external, verified.external_sha256
    )


def _squeeze(
    request: InferenceRequest, result: InferenceResult, squeezer: Squeezer, action: str
) -> list[str]:
    """Score the inputs (one extra inference per squeezer), flag them, and refuse or abstain if asked."""
    scores = squeezer.scores(request.run, request.inputs, result.outputs[squeezer.output])
    flagged = scores > squeezer.threshold
    result.flags.update(
        adversarial=[bool(f) for f in flagged],
        squeeze_score=[round(float(s), 4) for s in scores],
        squeeze_threshold=round(float(squeezer.threshold), 4),
    )
    if not flagged.any() or action == "flag":
        return []
    which = ", ".join(f"{scores[i]:.3f} (sample {i})" for i in np.flatnonzero(flagged)[:5])
    why = f"flagged as adversarial by feature squeezing: score {which} > threshold {squeezer.threshold:.3f}"
    if action == "refuse":
        raise GuardRefusal(f"input {squeezer.input!r} {why}")
    return [why]


def _filters(model: Model, opts: dict[str, Any]) -> tuple[float, list[int]]:
    """min_confidence and deny_labels, checked before anything runs: they need a class-score output."""
    min_confidence = float(opts["min_confidence"])
    try:
        deny = [int(i) for i in opts["deny_labels"] or []]
    except ValueError:
        raise OptionError(
            f"security.deny_labels must be class indices, got {','.join(opts['deny_labels'])!r}"
        ) from None
    scores = [o for o in model.outputs if o.dtype.kind == "f" and len(o.shape) == 2 and o.shape[1] != 1]
    if (min_confidence > 0 or deny) and not scores:
        raise OptionError(
            "security.min_confidence and security.deny_labels need a classifier output "
            "([N, C] floats); this model has none"
        )
    return min_confidence, deny


def options_of(request: InferenceRequest) -> dict[str, Any]:
    """This plugin's parsed options from the request, defaults filled in (for direct pluggy calls)."""
    given = request.options.get(NAME) or {}
    return check_options({opt.name: given.get(opt.name, opt.default) for opt in OPTIONS})


BOUNDS = {  # option: (lowest, highest, inclusive lowest)
    "range_margin": (0.0, None, True),
    "squeeze_fpr": (0.0, 1.0, False),
    "squeeze_bits": (0, 16, True),
    "squeeze_median": (0, 15, True),
    "squeeze_min_agreement": (0.0, 1.0, True),
    "timeout_s": (0.0, 604800.0, False),  # a week: beyond, the wait no longer fits the clock calls
    "memory_mb": (0, None, True),
    "squeeze_threshold": (0.0, None, True),
    "min_confidence": (0.0, 1.0, True),
}


def check_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Refuse values outside their meaningful range, a malformed pin, and the worker's limits where no
    worker runs, with an OptionError naming the option."""
    for name, (low, high, inclusive) in BOUNDS.items():
        value = opts.get(name)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise OptionError(f"bad value {value!r} for {NAME}.{name}: expected a finite number")
        too_low = value < low if inclusive else value <= low
        if too_low or (high is not None and value > high):
            above = f"{'at least' if inclusive else 'above'} {low}"
            limit = f"{above} and at most {high}" if high is not None else above
            raise OptionError(f"bad value {value!r} for {NAME}.{name}: expected a number {limit}")
    pin = opts.get("sha256")
    if pin is not None and not re.fullmatch(r"[0-9a-f]{64}", str(pin).strip().lower()):
        raise OptionError(f"bad value {pin!r} for {NAME}.sha256: expected a sha256 (64 hex digits)")
    if opts.get("isolate") is False:
        for name in ("timeout_s", "memory_mb"):
            if opts.get(name) is not None:
                raise OptionError(
                    f"{NAME}.{name} limits the isolated worker, and {NAME}.isolate=false runs the model in "
                    f"this process, where nothing enforces it: drop {NAME}.{name} or set {NAME}.isolate=true"
                )
    return opts


def _squeezer(record: SecurityRecord, opts: dict[str, Any]) -> Squeezer:
    """The recorded squeezer (threshold overridable), or an OptionError saying how to record one."""
    squeezer = record.squeezer
    if squeezer is None:
        raise OptionError(
            "security.squeeze needs a model recorded by `edgeplug run MODEL --plugins security "
            "--data IMAGES.npz` (an image classifier with a calibrated threshold)"
        )
    if opts["squeeze_threshold"] is not None:
        squeezer = replace(squeezer, threshold=float(opts["squeeze_threshold"]))
    if squeezer.threshold is None:
        raise OptionError(
            "security.squeeze: the model's record has no calibrated threshold; rerun "
            "`edgeplug run` with --data, or pass -o security.squeeze_threshold=T"
        )
    return squeezer
