"""neon's options `qemu_samples` (how many validation samples the aarch64 build runs under qemu),
`int8_min_cosine` (the cosine budget of quantized models instead of rtol/atol) and `cc` (the host compiler)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from edgeplug.cli import main
from edgeplug_neon import toolchain

from tests.conftest import conv_net
from tests.neon.conftest import EXAMPLES, fold_batchnorm, needs_aarch64


def run(model: Path, data: Path, out: Path, *options: str) -> tuple[int, str, dict[str, Any] | None]:
    args = ["run", str(model), "--plugins", "neon", "--data", str(data), "--output-dir", str(out)]
    for option in options:
        args += ["-o", f"neon.{option}"]
    result = CliRunner().invoke(main, args)
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return result.exit_code, result.output, report


@pytest.fixture
def float_model(tmp_path: Path) -> tuple[Path, Path]:
    """The tiny float conv net (batch 1) and 20 samples: 10 calibration, 10 validation."""
    model = tmp_path / "tiny.onnx"
    onnx.save(conv_net(batch=1), model)
    data = tmp_path / "tiny.npz"
    np.savez(data, x=np.random.default_rng(0).random((20, 3, 8, 8), dtype=np.float32))
    return model, data


# -- qemu_samples -------------------------------------------------------------------------------------


@needs_aarch64
@pytest.mark.parametrize(("limit", "expected"), [("3", 3), ("0", 10), (None, 10)])
def test_qemu_samples_limits_the_emulated_run_only(
    tmp_path: Path,
    float_model: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    limit: str | None,
    expected: int,
) -> None:
    """qemu_samples=3 runs the first 3 validation samples under qemu, 0 runs all, the default (64) all 10
    here; the host library is run once per validation sample, by the core's verification only."""
    from edgeplug_neon import runner

    emulated: list[int] = []
    host_calls: list[int] = []
    real_run_qemu, real_library = runner.run_qemu, runner.HostLibrary

    def counting(tc, driver, io, samples):
        emulated.append(len(samples))
        return real_run_qemu(tc, driver, io, samples)

    class CountingLibrary(real_library):  # type: ignore[misc, valid-type]
        def __call__(self, inputs):
            host_calls.append(1)
            return super().__call__(inputs)

    monkeypatch.setattr(runner, "run_qemu", counting)
    monkeypatch.setattr(runner, "HostLibrary", CountingLibrary)
    model, data = float_model
    options = [f"qemu_samples={limit}"] if limit is not None else []
    code, output, report = run(model, data, tmp_path / "out", *options)
    assert code == 0, output
    assert emulated == [expected]
    verification = report["compile"]["details"]["verification"]
    assert set(verification) == {"aarch64"}  # neon does not run the host library a second time
    assert verification["aarch64"]["samples"] == expected and verification["aarch64"]["passed"]
    assert verification["aarch64"]["runs_on"] == "qemu-aarch64 -cpu max"
    assert "core cannot run an aarch64 library" in report["compile"]["details"]["verified_by"]["aarch64"]
    assert len(host_calls) == 10 and report["data"]["validation_samples"] == 10
    assert report["compile"]["verification"]["passed"]
    assert ("running 3 of the 10 validation samples under qemu" in output) is (expected == 3)


# -- int8_min_cosine ----------------------------------------------------------------------------------


def at_cosine(outputs: dict[str, np.ndarray], cosine: float) -> dict[str, np.ndarray]:
    """Each sample's output moved off its direction so that its cosine to the original is `cosine`."""
    rng = np.random.default_rng(0)
    ratio = np.sqrt(1.0 / cosine**2 - 1.0)
    moved = {}
    for name, value in outputs.items():
        rows = value.reshape(len(value), -1).astype(np.float64)
        out = np.empty_like(rows)
        for i, row in enumerate(rows):
            noise = rng.standard_normal(row.shape)
            noise -= noise @ row / (row @ row) * row  # orthogonal to the row
            out[i] = row + ratio * np.linalg.norm(row) / np.linalg.norm(noise) * noise
        moved[name] = out.reshape(value.shape).astype(value.dtype)
    return moved


def qdq_7bit_weights(tmp_path: Path) -> Path:
    """The example CNN, BN folded, quantized by onnxruntime with symmetric s8 activations and 7-bit
    (reduce_range) symmetric s8 weights: its int8 kernels give the same results on AVX2 as on VNNI (8-bit
    weights saturate AVX2's u8*s8 pair sums), so onnxruntime's reference does not depend on the CPU."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    folded = tmp_path / "digits_folded.onnx"
    onnx.save(fold_batchnorm(onnx.load(EXAMPLES / "digits_cnn.onnx")), folded)
    images = np.load(EXAMPLES / "digits_train.npz")["input"][:64]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"input": images[i : i + 1]} for i in range(len(images))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    out = tmp_path / "digits_qdq.onnx"
    quantize_static(
        str(folded),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    return out


@pytest.fixture
def host_build_at_cosine_0_995(monkeypatch: pytest.MonkeyPatch) -> None:
    """The host library's outputs, as the core's verification sees them (make_runner), at cosine 0.995 to
    the truth on every sample."""
    from edgeplug_neon import runner

    class Moved(runner.HostLibrary):  # type: ignore[misc, name-defined]
        def __call__(self, inputs):
            return at_cosine(super().__call__(inputs), 0.995)

    monkeypatch.setattr(runner, "HostLibrary", Moved)


def test_int8_min_cosine_is_the_budget_of_a_quantized_model(
    tmp_path: Path, host_build_at_cosine_0_995: None
) -> None:
    qdq = qdq_7bit_weights(tmp_path)
    data = EXAMPLES / "digits_test.npz"
    code, output, report = run(qdq, data, tmp_path / "loose", "target=host", "int8_min_cosine=0.99")
    assert code == 0, output
    details = report["compile"]["details"]
    assert details["tolerance"]["quantized"] is True and details["tolerance"]["min_cosine"] == 0.99
    core = report["compile"]["verification"]  # the artifact's typed tolerance is what the core judged with
    assert core["tolerance"]["min_cosine"] == 0.99 and core["passed"]
    assert 0.99 < core["vs_final_model"]["logits"]["min_sample_cosine"] < 0.999
    code, output, report = run(qdq, data, tmp_path / "tight", "target=host", "int8_min_cosine=0.999")
    assert code == 1, output
    assert "compiled c-library differs from the final model" in output and "cosine" in output
    assert report["compile"]["details"]["tolerance"]["min_cosine"] == 0.999
    assert report["compile"]["verification"]["tolerance"]["min_cosine"] == 0.999
    assert report["compile"]["verification"]["passed"] is False


def test_int8_min_cosine_yields_to_a_user_rtol_and_to_float_models(
    tmp_path: Path, float_model: tuple[Path, Path]
) -> None:
    qdq = qdq_7bit_weights(tmp_path)
    data = EXAMPLES / "digits_test.npz"
    # rtol/atol set by the user: the elementwise check applies, not the cosine budget (1.0 cannot hold)
    code, output, report = run(
        qdq, data, tmp_path / "q", "target=host", "int8_min_cosine=1.0", "rtol=1", "atol=100"
    )
    assert code == 0, output
    assert "tolerance" not in report["compile"]["details"]
    # a float model is checked with rtol/atol whatever int8_min_cosine says
    model, samples = float_model
    code, output, report = run(model, samples, tmp_path / "f", "target=host", "int8_min_cosine=1.0")
    assert code == 0, output
    assert "tolerance" not in report["compile"]["details"]
    assert report["compile"]["verification"]["passed"]
    assert report["compile"]["verification"]["tolerance"]["rtol"] == 1e-3


# -- cc ----------------------------------------------------------------------------------------------


def logging_compiler(tmp_path: Path) -> tuple[Path, Path]:
    """A compiler wrapper that appends its arguments to a log, then runs gcc."""
    log = tmp_path / "cc.log"
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc is not None
    wrapper = tmp_path / "bin" / "my-cc"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexec "{gcc}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper, log


def test_cc_builds_the_host_library(tmp_path: Path, float_model: tuple[Path, Path]) -> None:
    wrapper, log = logging_compiler(tmp_path)
    model, data = float_model
    code, output, report = run(model, data, tmp_path / "out", "target=host", f"cc={wrapper}")
    assert code == 0, output
    calls = [c for c in log.read_text().splitlines() if "model.c" in c.split()]  # not the -march probes
    assert len(calls) == 1
    march = [flag for flag in calls[0].split() if flag.startswith("-march=")]
    assert len(march) == 1 and (march != ["-march=native"] or platform.machine() not in ("x86_64", "AMD64"))
    assert "model.c" in calls[0].split()
    assert "libedgeplug_model_host.so" in calls[0]
    assert report["compile"]["verification"]["passed"]  # the wrapper's library ran, in the core's check


def test_cc_that_does_not_exist_is_refused(tmp_path: Path, float_model: tuple[Path, Path]) -> None:
    model, data = float_model
    missing = tmp_path / "no-such-cc"
    assert not os.path.exists(missing)
    code, output, _ = run(model, data, tmp_path / "out", "target=host", f"cc={missing}")
    assert code == 2, output
    assert str(missing) in output


def test_the_host_library_targets_the_instructions_this_process_can_use() -> None:
    """Never -march=native on x86: gcc would read the machine's CPUID, not the (emulated, VM-masked) CPU this
    process runs on, and the library would die with an illegal instruction on an AVX2-only box."""
    avx512 = {"machine": "x86_64", "flags": ["avx2", "avx512f", "avx512bw", "avx512_vnni"]}
    assert toolchain.host_march(avx512) == "-march=x86-64-v4"
    assert toolchain.host_march({"machine": "x86_64", "flags": ["avx2"]}) == "-march=x86-64-v3"
    assert toolchain.host_march({"machine": "x86_64", "flags": []}) == "-march=x86-64"
    assert toolchain.host_march({"machine": "aarch64", "flags": ["asimddp"]}) == "-march=native"
