"""The `neon` plugin: compile an ONNX CNN into self-contained C with ARM NEON kernels, build it for
aarch64 (cross compiler) and the host, and verify both builds against onnxruntime."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from edgeplug import Artifact, Capabilities, Model, Option, RunContext, Tolerance, hookimpl
from edgeplug.capabilities import BATCHNORM, CONTRIB, DYNAMIC_INT8, FORMS, FP16, INT8_EXACT, SYMMETRIC_INT8
from edgeplug.context import Runner
from edgeplug.errors import VerificationError
from edgeplug.verify import evaluate, outputs_of

from . import codegen, runner, support, toolchain
from .lower import lower

KIND = "c-library"


@hookimpl
def plugin_capabilities() -> Capabilities:
    """neon compiles standard float32 or int8 Q/DQ ONNX without BatchNormalization (fold it first) into C
    whose int8 dot products are exact; it wants symmetric int8."""
    return Capabilities(
        consumes=FORMS - {CONTRIB, DYNAMIC_INT8, FP16, BATCHNORM},
        target=frozenset({INT8_EXACT, SYMMETRIC_INT8}),
    )


@hookimpl
def plugin_options() -> list[Option]:
    return [
        Option(
            "target",
            "str",
            "both",
            "which builds to make: aarch64, host or both",
            ("aarch64", "host", "both"),
        ),
        Option(
            "verify",
            "bool",
            True,
            "run each build on the validation inputs (aarch64 under qemu) and compare with onnxruntime",
        ),
        Option(
            "qemu_samples",
            "int",
            64,
            "at most this many validation samples run under qemu (emulation is slow); 0 = all of them",
        ),
        Option("dotprod", "bool", True, "build aarch64 for armv8.2-a+dotprod (int8 vdotq); false: armv8-a"),
        Option("cc", "str", "cc", "host C compiler"),
        Option("cross_cc", "str", "aarch64-linux-gnu-gcc", "aarch64 cross compiler"),
        Option(
            "int8_min_cosine",
            "float",
            0.99,
            "cosine budget used instead of rtol/atol for quantized (QDQ) models",
        ),
        # float kernels reorder sums (blocked GEMM, FMA): not bit-exact with onnxruntime
        Option(
            "rtol", "float", 1e-3, "relative tolerance of each build against onnxruntime (float32 models)"
        ),
        Option(
            "atol", "float", 1e-4, "absolute tolerance of each build against onnxruntime (float32 models)"
        ),
    ]


def _toolchain(options: dict[str, Any]) -> toolchain.Toolchain:
    target = options.get("target", "both")
    aarch64 = target in ("aarch64", "both")
    return toolchain.find(
        options.get("cc"),
        options.get("cross_cc"),
        bool(options.get("dotprod", True)),
        need_aarch64=aarch64,
        need_qemu=aarch64 and bool(options.get("verify", True)),
    )


@hookimpl
def pre_optimize(model: Model, ctx: RunContext) -> None:
    """Refuse early: missing toolchain, dynamic shapes, unsupported operators. BatchNormalization is left to
    the core's capability check (an earlier plugin that removes it, or a refusal before any work)."""
    _toolchain(ctx.options)
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
    opts = ctx.options
    target = opts.get("target", "both")
    tc = _toolchain(opts)
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
    if target in ("host", "both"):
        builds["host"] = toolchain.build_host(tc, out)
        files.append(builds["host"])
    if target in ("aarch64", "both"):
        built = toolchain.build_aarch64(tc, out, driver=bool(opts.get("verify", True)))
        builds["aarch64"] = built[0]
        if len(built) > 1:
            builds["aarch64_driver"] = built[1]
        files.extend(built)
    ctx.record("build_seconds", round(time.perf_counter() - t0, 3))
    ctx.record("builds", {k: v.name for k, v in builds.items()})
    ctx.record(
        "flags",
        {
            "host": f"{toolchain.COMMON_FLAGS} -march=native",
            "aarch64": f"{toolchain.COMMON_FLAGS} {tc.aarch64_march}",
        },
    )
    tolerance = ctx.tolerance
    if program.is_quantized and not ({"rtol", "atol"} & tolerance.user_set):
        # int8 kernels round at other points than onnxruntime's QLinearConv, and one rounding flip moves a
        # value by a whole quantization step: compare QDQ models by cosine
        tolerance = Tolerance(
            min_cosine=float(opts.get("int8_min_cosine", 0.99)),
            min_top1=tolerance.min_top1,
            max_abs_error=tolerance.max_abs_error,
            user_set=tolerance.user_set,
        )
        ctx.record("tolerance", {"quantized": True, **tolerance.as_dict()})
    if opts.get("verify", True):
        _verify(model, ctx, tc, gen.io, builds, tolerance)
    # the artifact declares its budget: the core checks the host library (make_runner) with it too
    return Artifact.of(
        KIND,
        files,
        io=gen.io,
        target=target,
        builds={k: v.name for k, v in builds.items()},
        tolerance=tolerance.as_dict(),
    )


def _verify(
    model: Model,
    ctx: RunContext,
    tc: toolchain.Toolchain,
    io: dict[str, Any],
    builds: dict[str, Path],
    tolerance: Tolerance,
) -> None:
    limit = int(ctx.options.get("qemu_samples", 64) or 0)
    results: dict[str, Any] = {}
    failures: list[str] = []
    for build in ("host", "aarch64"):
        if build not in builds:
            continue
        samples = ctx.data.validation
        if build == "aarch64" and 0 < limit < len(samples):
            samples = samples[:limit]
            ctx.log(
                f"running {limit} of the {len(ctx.data.validation)} validation samples under qemu "
                "(-o neon.qemu_samples=0 for all)"
            )
        reference = outputs_of(model, samples, ctx.threads)
        t0 = time.perf_counter()
        if build == "host":
            got = runner.run_host(builds["host"], io, samples)
        else:
            got = runner.run_qemu(tc, builds["aarch64_driver"], io, samples)
        metrics, failed = evaluate(reference, got, tolerance)
        results[build] = {
            "metrics": metrics,
            "passed": not failed,
            "samples": len(samples),
            "seconds": round(time.perf_counter() - t0, 3),
            "runs_on": "qemu-aarch64 -cpu max" if build == "aarch64" else "host (ctypes)",
        }
        failures += [f"{build} build: {f}" for f in failed]
        summary = ", ".join(
            f"{k}: max abs {m.get('max_abs_error', float('nan')):.3g}, cosine "
            f"{m.get('cosine', float('nan')):.6f}"
            for k, m in metrics.items()
        )
        ctx.log(f"verified the {build} build on {len(samples)} samples: {summary}")
    ctx.record("verification", results)
    if failures:
        raise VerificationError(
            "neon: compiled C differs from onnxruntime: " + "; ".join(failures), step="neon"
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
