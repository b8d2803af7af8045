"""The `neon` plugin: compile an ONNX CNN into self-contained C with ARM NEON kernels and build it for
aarch64 (cross compiler) and the host. The core verifies the host library (make_runner) against the final
model; the aarch64 build, which the core cannot run here, is verified by this plugin under qemu."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from edgeplug import Artifact, Capabilities, Model, RunContext, Tolerance, VerificationError, hookimpl
from edgeplug.plugin_api import (
    BATCHNORM,
    CONTRIB,
    DYNAMIC_INT8,
    FORMS,
    FP16,
    INT8_EXACT,
    SYMMETRIC_INT8,
    Runner,
)

from . import codegen, runner, support, toolchain
from .lower import lower
from .settings import NeonSettings

KIND = "c-library"
QEMU = "qemu-aarch64 -cpu max"


@hookimpl
def plugin_capabilities() -> Capabilities:
    """neon compiles standard float32 or int8 Q/DQ ONNX without BatchNormalization (fold it first) into C
    whose int8 dot products are exact; it wants symmetric int8."""
    return Capabilities(
        consumes=FORMS - {CONTRIB, DYNAMIC_INT8, FP16, BATCHNORM},
        target=frozenset({INT8_EXACT, SYMMETRIC_INT8}),
    )


@hookimpl
def plugin_options() -> type[NeonSettings]:
    return NeonSettings


def _toolchain(settings: NeonSettings) -> toolchain.Toolchain:
    aarch64 = settings.target in ("aarch64", "both")
    return toolchain.find(
        settings.cc,
        settings.cross_cc,
        settings.dotprod,
        need_aarch64=aarch64,
        need_qemu=aarch64 and settings.verify,
    )


@hookimpl
def pre_optimize(model: Model, ctx: RunContext) -> None:
    """Refuse early: missing toolchain, dynamic shapes, unsupported operators. BatchNormalization is left to
    the core's capability check (an earlier plugin that removes it, or a refusal before any work)."""
    _toolchain(ctx.settings)
    support.check_supported(model, allow_batchnorm=True)
    support.check_static(model)


def _pin_batch(model: Model, ctx: RunContext) -> Model:
    shapes = {s.name: [1, *s.shape[1:]] for s in model.inputs if s.shape and not isinstance(s.shape[0], int)}
    if not shapes:
        return model
    ctx.log(f"pinning the batch dimension to 1 for {', '.join(shapes)}")
    return model.with_input_shapes(shapes).infer_shapes()


@hookimpl
def compile(model: Model, ctx: RunContext) -> Artifact | None:
    settings: NeonSettings = ctx.settings
    tc = _toolchain(settings)
    support.check_supported(model)
    support.check_static(model)
    model = _pin_batch(model, ctx)
    t0 = time.perf_counter()
    program = lower(model)
    gen = codegen.generate(program)
    out = Path(ctx.workdir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, text in (
        ("model.c", gen.model_c),
        ("model.h", gen.model_h),
        ("Makefile", toolchain.makefile(tc)),
        ("driver.c", gen.driver_c),
    ):
        (out / name).write_text(text)
        files.append(out / name)
    ctx.record("codegen_seconds", round(time.perf_counter() - t0, 3))
    ctx.record("kernels", gen.io["kernels"])
    ctx.record(
        "memory", {k: gen.io[k] for k in ("scratch_bytes", "arena_without_reuse_bytes", "weight_bytes")}
    )
    ctx.log(f"generated model.c ({len(program.ops)} kernel calls, arena {gen.io['scratch_bytes']} bytes)")
    builds: dict[str, Path] = {}
    t0 = time.perf_counter()
    if settings.target in ("host", "both"):
        builds["host"] = toolchain.build_host(tc, out)
        files.append(builds["host"])
    if settings.target in ("aarch64", "both"):
        built = toolchain.build_aarch64(tc, out, driver=settings.verify)
        builds["aarch64"] = built[0]
        if len(built) > 1:
            builds["aarch64_driver"] = built[1]
        files.extend(built)
    ctx.record("build_seconds", round(time.perf_counter() - t0, 3))
    ctx.record("builds", {k: v.name for k, v in builds.items()})
    ctx.record(
        "flags",
        {
            "host": f"{toolchain.COMMON_FLAGS} {tc.host_march}",
            "aarch64": f"{toolchain.COMMON_FLAGS} {tc.aarch64_march}",
        },
    )
    tolerance = _tolerance(ctx, settings, program.is_quantized)
    verified_by = {}
    if "host" in builds:
        verified_by["host"] = "the core, through make_runner, against the final model (compile.verification)"
    if "aarch64_driver" in builds:
        _verify_aarch64(model, ctx, tc, gen.io, builds["aarch64_driver"], tolerance, settings.qemu_samples)
        verified_by["aarch64"] = (
            f"neon, under {QEMU}: the core cannot run an aarch64 library on this machine (compile.details.verification)"
        )
    elif "aarch64" in builds:
        verified_by["aarch64"] = "not verified (neon.verify=false)"
    ctx.record("verified_by", verified_by)
    return Artifact.of(
        KIND,
        files,
        tolerance=tolerance,  # the core checks the host library (make_runner) with this budget
        io=gen.io,
        target=settings.target,
        builds={k: v.name for k, v in builds.items()},
    )


def _tolerance(ctx: RunContext, settings: NeonSettings, quantized: bool) -> Tolerance:
    """The step's tolerance; for a quantized model, unless the user set rtol/atol, a cosine budget instead:
    int8 kernels round at other points than onnxruntime's, and one rounding flip moves a value by a whole
    quantization step. A min_cosine the user set wins over int8_min_cosine."""
    tolerance = ctx.tolerance
    if not quantized or {"rtol", "atol"} & tolerance.user_set:
        return tolerance
    cosine = tolerance.min_cosine if "min_cosine" in tolerance.user_set else settings.int8_min_cosine
    tolerance = dataclasses.replace(tolerance, min_cosine=cosine, rtol=None, atol=None)
    ctx.record("tolerance", {"quantized": True, **tolerance.as_dict()})
    return tolerance


def _reference(model: Model, ctx: RunContext, count: int) -> dict[str, Any]:
    """The final model's outputs on the first `count` validation samples: those the core holds when it hands
    them over (ctx.previous), else evaluated as the core evaluates."""
    if ctx.previous is not None:
        total = len(
            ctx.data.validation
        )  # a sample may hold several rows (a fixed batch): slice whole samples
        return {name: value[: count * (len(value) // total)] for name, value in ctx.previous.items()}
    return ctx.evaluate(model, ctx.data.validation[:count])


def _verify_aarch64(
    model: Model,
    ctx: RunContext,
    tc: toolchain.Toolchain,
    io: dict[str, Any],
    driver: Path,
    tolerance: Tolerance,
    limit: int,
) -> None:
    """Run the aarch64 test driver under qemu on the validation samples and judge it as the core judges."""
    samples = ctx.data.validation
    if 0 < limit < len(samples):
        samples = samples[:limit]
        ctx.log(
            f"running {limit} of the {len(ctx.data.validation)} validation samples under qemu "
            "(-o neon.qemu_samples=0 for all)"
        )
    reference = _reference(model, ctx, len(samples))
    t0 = time.perf_counter()
    got = runner.run_qemu(tc, driver, io, samples)
    verdict = ctx.judge(got, reference=reference, tolerance=tolerance, samples=len(samples))
    ctx.record(
        "verification",
        {
            "aarch64": {
                "metrics": verdict.outputs,
                "passed": verdict.passed,
                "failures": verdict.failures,
                "samples": len(samples),
                "seconds": round(time.perf_counter() - t0, 3),
                "runs_on": QEMU,
            }
        },
    )
    summary = ", ".join(
        f"{k}: max abs {m.get('max_abs_error', float('nan')):.3g}, cosine {m.get('cosine', float('nan')):.6f}"
        for k, m in verdict.outputs.items()
    )
    ctx.log(f"verified the aarch64 build under qemu on {len(samples)} samples: {summary}")
    if not verdict.passed:
        raise VerificationError(
            f"neon: the aarch64 build (under qemu) differs from the model: {'; '.join(verdict.failures)}",
            step="neon",
        )


@hookimpl
def make_runner(artifact: Artifact, options: dict[str, Any]) -> Runner | None:
    """Run a c-library artifact's host library through ctypes (None when only aarch64 was built)."""
    if artifact.kind != KIND:
        return None
    host = next((f for f in artifact.files if f.name == toolchain.HOST_LIB), None)
    if host is None or not host.exists():
        return None
    return runner.HostLibrary(host, artifact.info["io"])
