"""The `security` plugin: records an input spec and a feature-squeezing threshold during `edgeplug run`, and
guards `edgeplug infer --guard security`: model integrity, input checks, isolated execution with a timeout
and a memory limit, adversarial-input detection, and output filtering (abstention, label deny list)."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import replace

import numpy as np
from edgeplug import (
    GuardRefusal,
    InferenceRequest,
    InferenceResult,
    Model,
    OptionError,
    RunContext,
    hookimpl,
)
from edgeplug.plugin_api import Runner

from . import inprocess, integrity, isolation
from .calibration import build_record
from .input_spec import InputSpec, check_inputs, parse_ranges
from .output_filter import abstention, classifier_output, confidence
from .record import SecurityRecord, read_record
from .settings import NAME, SecuritySettings
from .squeeze import Squeezer


@hookimpl
def plugin_options() -> type[SecuritySettings]:
    return SecuritySettings


@hookimpl
def pre_optimize(model: Model, ctx: RunContext) -> None:
    """Check what the core's option parsing cannot (ranges against the model's inputs, the pin's form, worker
    limits without a worker) before the core's reference pass and any earlier step do any work."""
    settings: SecuritySettings = ctx.settings
    settings.checked()
    parse_ranges(settings.input_range, [s.name for s in model.inputs])


@hookimpl
def transform_graph(model: Model, ctx: RunContext) -> Model:
    """Write the input spec and the squeezing threshold into metadata_props (the graph is untouched)."""
    if ctx.following:
        ctx.log(
            "warning: later steps of the chain change the model after its input spec is recorded; put "
            "security last so the record describes the final model"
        )
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
    opts = SecuritySettings.of(request.options.get(NAME)).checked()
    verified = integrity.verify_model(request.model_path, opts.require_hash, opts.sha256)
    if request.artifact is not None:  # the core's private copy, byte for byte what the pinned record lists
        integrity.check_artifact(request.model_path, verified, request.artifact)
    model = request.model if request.model is not None else Model.load(request.model_path)
    record = read_record(model)
    if opts.check_inputs:
        specs = _specs(record, opts)
        check_inputs(
            request.inputs, specs, batch_free=any(s.shape and s.shape[0] == 1 for s in specs.values())
        )
    squeezer = _squeezer(record, opts) if opts.squeeze else None
    min_confidence, deny = _filters(model, opts)
    request.run = _runner(request, verified, opts)

    result = yield

    reasons = [result.reason] if result.abstained and result.reason else []
    if verified.recorded or opts.sha256:
        result.flags["model_sha256"] = verified.sha256
    if squeezer is not None:
        reasons += _squeeze(request, result, squeezer, opts.on_adversarial)
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


def _specs(record: SecurityRecord, opts: SecuritySettings) -> dict[str, InputSpec]:
    """The recorded input specs, with the ranges given at inference (`input_range`) taking precedence."""
    specs = dict(record.inputs)
    for name, (low, high) in parse_ranges(opts.input_range, list(specs)).items():
        specs[name] = specs[name].with_range(low, high, "security.input_range")
    return specs


def _runner(request: InferenceRequest, verified: integrity.Verified, opts: SecuritySettings) -> Runner:
    """The model runs from the verified bytes: in the isolated worker, or in a session of this process, with
    the caller's thread count (`edgeplug infer --threads`, `edgeplug.infer(threads=...)`)."""
    threads = max(int(request.threads), 1)
    if request.artifact is not None:  # `edgeplug infer --artifact`: the core's run is the artifact's runner
        if opts.isolate:
            raise OptionError(
                "security: the isolated worker runs .onnx models only; to guard a compiled artifact "
                "(--artifact) pass -o security.isolate=false"
            )
        return request.run
    if opts.isolate:
        memory_mb = isolation.MEMORY_MB if opts.memory_mb is None else opts.memory_mb
        timeout_s = isolation.TIMEOUT_S if opts.timeout_s is None else opts.timeout_s
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


def _filters(model: Model, opts: SecuritySettings) -> tuple[float, list[int]]:
    """min_confidence and deny_labels, checked before anything runs: they need a class-score output."""
    deny = opts.denied_labels()
    scores = [o for o in model.outputs if o.dtype.kind == "f" and len(o.shape) == 2 and o.shape[1] != 1]
    if (opts.min_confidence > 0 or deny) and not scores:
        raise OptionError(
            "security.min_confidence and security.deny_labels need a classifier output "
            "([N, C] floats); this model has none"
        )
    return opts.min_confidence, deny


def _squeezer(record: SecurityRecord, opts: SecuritySettings) -> Squeezer:
    """The recorded squeezer (threshold overridable), or an OptionError saying how to record one."""
    squeezer = record.squeezer
    if squeezer is None:
        raise OptionError(
            "security.squeeze needs a model recorded by `edgeplug run MODEL --plugins security "
            "--data IMAGES.npz` (an image classifier with a calibrated threshold)"
        )
    if opts.squeeze_threshold is not None:
        squeezer = replace(squeezer, threshold=float(opts.squeeze_threshold))
    if squeezer.threshold is None:
        raise OptionError(
            "security.squeeze: the model's record has no calibrated threshold; rerun "
            "`edgeplug run` with --data, or pass -o security.squeeze_threshold=T"
        )
    return squeezer
