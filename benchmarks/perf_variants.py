"""The variants of one model in the performance table: `edgeplug run` with each chain's default options, as a
user runs it, and the peers a user would try instead (onnxruntime's quantize_static with its defaults and as
its documentation advises, quantize_dynamic with its defaults and per-channel, onnxslim). A variant that
cannot be made is a row with its error, never the end of the run.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.perf_models import Prepared, Sample, Spec, load_npz, outputs_of, samples_of, task_metrics

CHAINS = ("fuse", "fuse,quant", "fuse,prune,quant")
GROUPS = {"fuse": "float", "fuse,quant": "int8", "fuse,prune,quant": "pruned"}


@dataclass
class Variant:
    label: str
    group: str  # fp32 | float | int8 | pruned
    by: str  # - | edgeplug | onnxruntime | onnxslim
    path: Path | None
    recipe: str = ""
    seconds: float | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


# -- edgeplug --------------------------------------------------------------------------------------
def edgeplug_variant(chain: str, prepared: Prepared, folder: Path, threads: int, timeout: float) -> Variant:
    """`edgeplug run MODEL --plugins CHAIN --data VALIDATION --calibration-data CALIBRATION` with no plugin
    option, as a user runs it; the exit status and the last line of stderr are the error of a failed run."""
    label, group, out = f"edgeplug {chain}", GROUPS[chain], folder / chain.replace(",", "-")
    args = [
        "--plugins",
        chain,
        "--data",
        "VALIDATION",
        "--calibration-data",
        "CALIBRATION",
        "--threads",
        str(threads),
    ]
    details: dict[str, Any] = {"command": "edgeplug run MODEL " + " ".join(args)}
    real = {"VALIDATION": str(prepared.validation), "CALIBRATION": str(prepared.calibration)}
    cmd = [sys.executable, "-m", "edgeplug", "run", str(prepared.model), *(real.get(a, a) for a in args)]
    cmd += ["--output-dir", str(out), "--quiet"]
    (out / "report.json").unlink(missing_ok=True)  # a --work folder measured before: no stale report
    start, cpu = time.perf_counter(), _children_cpu()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        error = f"did not finish within {timeout:.0f} s (--chain-timeout)"
        return Variant(label, group, "edgeplug", None, seconds=time.perf_counter() - start, error=error)
    seconds = time.perf_counter() - start
    details["cpu_seconds"] = round(_children_cpu() - cpu, 1)  # with its measuring children; load-independent
    try:
        report = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        report = {}
    details["steps"] = _steps(report)
    final = (report.get("final") or {}).get("path")
    if proc.returncode != 0 or not final:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        error = f"exit {proc.returncode}: {lines[-1] if lines else 'no message'}"
        if proc.returncode == 0:
            error = "exit 0 but report.json names no final model"
        return Variant(label, group, "edgeplug", None, seconds=seconds, error=error[:300], details=details)
    if chain == "fuse,prune,quant":
        details["pruning"] = _pruning(report)
    return Variant(label, group, "edgeplug", Path(final), _recipe(report), seconds, details=details)


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def _steps(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    steps = []
    for step in report.get("steps", []):
        verification = step.get("verification") or {}
        steps.append(
            {
                "plugin": step.get("plugin"),
                "status": step.get("status"),
                "passed": verification.get("passed"),
                "failures": (verification.get("failures") or [])[:3],
            }
        )
    return steps


def _recipe(report: Mapping[str, Any]) -> str:
    """What quant chose (its kept candidate), or which steps applied."""
    for step in report.get("steps", []):
        if step.get("plugin") == "quant" and step.get("status") == "applied":
            details = step.get("details") or {}
            kept = [c for c in details.get("candidates") or [] if c.get("status") == "kept"]
            chosen = details.get("chosen") if isinstance(details.get("chosen"), Mapping) else None
            for candidate in [chosen, *kept]:
                if candidate and candidate.get("recipe"):
                    origin = candidate.get("origin")
                    return str(candidate["recipe"]) + (f" ({origin})" if origin and origin != "plain" else "")
            return str(details.get("mode", "applied"))
    applied = [s["plugin"] for s in report.get("steps", []) if s.get("status") == "applied"]
    return "applied: " + ",".join(applied) if applied else "nothing applied: model unchanged"


def _pruning(report: Mapping[str, Any]) -> dict[str, Any]:
    """The pruning settings the chain ran with (its defaults) and the share of weights they zeroed."""
    settings = report.get("settings") or {}
    options = (settings.get("options") or {}).get("prune") or {}
    tolerance = (settings.get("tolerances") or {}).get("prune") or {}
    step = next((s for s in report.get("steps", []) if s.get("plugin") == "prune"), {})
    weights = (step.get("details") or {}).get("weights") or []
    total = sum(int(w.get("parameters", 0)) for w in weights)
    kept = sum(int(w.get("nonzero_after", w.get("parameters", 0))) for w in weights)
    return {
        "mode": options.get("mode"),
        "sparsity_option": options.get("sparsity"),
        "min_cosine": tolerance.get("min_cosine"),
        "status": step.get("status"),
        "weights_zeroed": round(1 - kept / total, 4) if total else None,
    }


# -- peers -----------------------------------------------------------------------------------------
class Reader:
    """onnxruntime's CalibrationDataReader over a list of samples."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples, self.index = list(samples), 0

    def get_next(self) -> Sample | None:
        if self.index >= len(self.samples):
            return None
        self.index += 1
        return self.samples[self.index - 1]


def peer_variants(spec: Spec, prepared: Prepared, folder: Path, vnni: bool, threads: int) -> list[Variant]:
    """onnxruntime's quantizers and onnxslim on the same calibration samples as edgeplug, made inside
    `folder` (onnxruntime's tools may leave files in the working folder); a peer that fails is a row with
    its error."""
    calibration = samples_of(load_npz(prepared.calibration)[0])
    model = prepared.model
    peers: list[tuple[str, str, str, str, Callable[[], tuple[Path, dict[str, Any]]]]] = [
        (
            "ort quantize_static, defaults",
            "int8",
            "onnxruntime",
            "QDQ, per-tensor, s8 activations and weights, MinMax",
            lambda: (ort_static(model, folder / "ort-static-defaults.onnx", calibration), {}),
        ),
        (
            "ort quantize_static, as documented",
            "int8",
            "onnxruntime",
            "quant_pre_process, QDQ, per-channel, u8/s8" + ("" if vnni else ", reduce_range"),
            lambda: ort_static_documented(spec, prepared, folder, calibration, vnni, threads),
        ),
        (
            "ort quantize_dynamic, defaults",
            "int8",
            "onnxruntime",
            "s8 weights per tensor, u8 activations at run time",
            lambda: (ort_dynamic(model, folder / "ort-dynamic-tensor.onnx", False), {}),
        ),
        (
            "ort quantize_dynamic, per-channel",
            "int8",
            "onnxruntime",
            "s8 weights per channel, u8 activations at run time",
            lambda: (ort_dynamic(model, folder / "ort-dynamic-channel.onnx", True), {}),
        ),
        ("onnxslim", "float", "onnxslim", "defaults", lambda: (slim(model, folder / "onnxslim.onnx"), {})),
    ]
    made = []
    with working_folder(folder):
        for label, group, by, recipe, build in peers:
            start = time.perf_counter()
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # onnxslim prints a summary table
                    path, details = build()
                variant = Variant(
                    label, group, by, path, recipe, time.perf_counter() - start, details=details
                )
                if details.get("calibration_chosen"):
                    variant.recipe += f", {details['calibration_chosen']}"
                    if len(details["calibration_methods"]) > 1:
                        variant.recipe += f" (best of {len(details['calibration_methods'])} on validation)"
            except Exception as exc:  # a peer that cannot handle a model is reported, not fatal
                variant = Variant(
                    label, group, by, None, recipe, time.perf_counter() - start, error=one_line(exc)
                )
            print(
                f"  {label}: {variant.error or 'made'} ({variant.seconds:.0f} s)", file=sys.stderr, flush=True
            )
            made.append(variant)
    return made


@contextlib.contextmanager
def working_folder(folder: Path) -> Iterator[None]:
    """contextlib.chdir, which Python 3.10 lacks."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def ort_static(model: Path, out: Path, calibration: Sequence[Sample], **options: Any) -> Path:
    from onnxruntime.quantization import quantize_static

    quantize_static(str(model), str(out), Reader(calibration), **options)
    return out


def ort_dynamic(model: Path, out: Path, per_channel: bool) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(model), str(out), per_channel=per_channel)
    return out


def slim(model: Path, out: Path) -> Path:
    import onnxslim

    onnxslim.slim(str(model), str(out))
    return out


def quant_pre_process(model: Path, out: Path) -> str:
    """onnxruntime's pre-processing with its defaults; where its symbolic shape inference gives up (BERT:
    "Incomplete symbolic shape inference"), again with auto_merge, then without symbolic shapes. Returns how."""
    from onnxruntime.quantization.shape_inference import quant_pre_process as pre_process

    tries = (
        ("defaults", {}),
        ("auto_merge", {"auto_merge": True}),
        ("no symbolic shapes", {"skip_symbolic_shape": True}),
    )
    for how, kwargs in tries:
        try:
            pre_process(str(model), str(out), **kwargs)
            return how
        except Exception as exc:
            print(f"  quant_pre_process ({how}) failed: {one_line(exc)}", file=sys.stderr)
    raise RuntimeError(
        "quant_pre_process failed with its defaults, with auto_merge and without symbolic shapes"
    )


def ort_static_documented(
    spec: Spec, prepared: Prepared, folder: Path, calibration: Sequence[Sample], vnni: bool, threads: int
) -> tuple[Path, dict[str, Any]]:
    """The static recipe onnxruntime's documentation advises: pre-processing, QDQ, per-channel weights, u8
    activations with s8 weights, reduce_range on CPUs without VNNI, and the calibration method that scores
    best on the validation half. Transformers get MinMax only: the docs advise dynamic quantization for them,
    and the histogram calibrators hold every activation of every calibration sample in memory."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    pre = folder / "ort-pre.onnx"
    how = quant_pre_process(prepared.model, pre)
    methods = ("MinMax", "Entropy", "Percentile") if spec.kind == "conv" else ("MinMax",)
    reference = outputs_of(prepared.model, prepared.validation_samples, threads)
    tried: dict[str, Any] = {}
    best: tuple[tuple[float, ...], str, Path] | None = None
    for method in methods:
        try:
            out = ort_static(
                pre,
                folder / f"ort-static-documented-{method.lower()}.onnx",
                calibration,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=not vnni,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, method),
            )
            got = outputs_of(out, prepared.validation_samples, threads)
        except Exception as exc:
            tried[method] = {"error": one_line(exc)}
            continue
        scores = task_metrics(spec, reference, got, prepared.validation_labels)
        tried[method] = scores
        key = tuple(-math.inf if scores.get(m) is None else float(scores[m]) for m in spec.judged_by)
        if best is None or key > best[0]:
            best = (key, method, out)
    if best is None:
        raise RuntimeError(f"every calibration method failed: {tried}")
    return best[2], {"pre_process": how, "calibration_methods": tried, "calibration_chosen": best[1]}
