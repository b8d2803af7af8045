"""Whole models: the trained example CNN under qemu, MobileNet-style depthwise blocks, an INT8 QDQ model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest

from tests import zoo
from tests.conftest import quantize_example
from tests.neon.conftest import EXAMPLES, assert_close, fold_batchnorm, needs_aarch64, ort_outputs

HAVE_FUSE = importlib.util.find_spec("edgeplug_fuse") is not None


def folded_source(path: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """The model and the chain to compile it: `fuse,neon` when the fuse plugin is installed, else BN folded here."""
    if HAVE_FUSE:
        return path, ["fuse", "neon"]
    target = tmp_path / f"{path.stem}-folded.onnx"
    onnx.save(fold_batchnorm(onnx.load(path)), target)
    return target, ["neon"]


def digits() -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    data = np.load(EXAMPLES / "digits_test.npz")
    return [{"input": x[None]} for x in data["input"]], data["labels"]


@needs_aarch64
def test_example_cnn_identical_top1_under_qemu(tmp_path: Path) -> None:
    from edgeplug_neon import runner, toolchain

    model, chain = folded_source(EXAMPLES / "digits_cnn.onnx", tmp_path)
    result = edgeplug.optimize(model, chain, data=EXAMPLES / "digits_test.npz", output_dir=tmp_path / "out")
    report = result.report["compile"]
    assert report["details"]["verification"]["aarch64"]["passed"]
    assert report["verification"]["passed"]  # the core ran the host library through make_runner too
    samples, labels = digits()  # all 450 held-out digits, not only the validation split
    tc = toolchain.find(None, None, True, need_aarch64=True, need_qemu=True)
    io = result.artifact.info["io"]
    arm = runner.run_qemu(tc, tmp_path / "out" / toolchain.AARCH64_DRIVER, io, samples)["logits"]
    ref = ort_outputs(EXAMPLES / "digits_cnn.onnx", samples)["logits"]
    assert arm.shape == (450, 10)
    np.testing.assert_array_equal(arm.argmax(1), ref.argmax(1))
    assert np.mean(arm.argmax(1) == labels) >= 0.99
    np.testing.assert_allclose(arm, ref, rtol=1e-3, atol=1e-4)


@needs_aarch64
def test_mobilenet_style_depthwise_blocks(tmp_path: Path, compile_model) -> None:
    source = zoo.cached("mobilenet_style", zoo.mobilenet_style)
    proto = onnx.load(source) if HAVE_FUSE else fold_batchnorm(onnx.load(source))
    got = compile_model(proto, samples=2, plugins=["fuse", "neon"] if HAVE_FUSE else ["neon"])
    kernels = got["result"].report["compile"]["details"]["kernels"]
    assert kernels["dwconv"] >= 5 and kernels["conv"] >= 5  # depthwise 3x3 and pointwise convolutions
    assert "act" not in kernels  # every ReLU6 (Clip) fused into its convolution
    assert_close(got["host"], got["reference"])
    assert_close(got["aarch64"], got["reference"])
    memory = got["result"].report["compile"]["details"]["memory"]
    assert memory["scratch_bytes"] < memory["arena_without_reuse_bytes"]  # buffers are reused


def make_qdq(
    tmp_path: Path,
    source: Path = EXAMPLES / "digits_cnn.onnx",
    calibration: np.ndarray | None = None,
    symmetric: bool = True,
) -> Path:
    """`source` with BN folded, statically quantized by onnxruntime: symmetric s8 per-channel weights and
    symmetric s8 activations (what quant emits when neon follows it), or asymmetric u8 activations."""
    folded = tmp_path / f"{source.stem}_folded.onnx"
    onnx.save(fold_batchnorm(onnx.load(source)), folded)
    train = np.load(EXAMPLES / "digits_train.npz")["input"][:64] if calibration is None else calibration
    return quantize_example(
        tmp_path / f"{source.stem}_qdq.onnx",
        folded,
        samples=train,
        activations="s8" if symmetric else "u8",
        symmetric=symmetric,
    )


@needs_aarch64
@pytest.mark.parametrize("dotprod", [True, False], ids=["vdotq", "vmull-vpadal"])
def test_int8_qdq_model(tmp_path: Path, dotprod: bool) -> None:
    from edgeplug_neon import runner, toolchain

    qdq = make_qdq(tmp_path)
    result = edgeplug.optimize(
        qdq,
        ["neon"],
        data=EXAMPLES / "digits_test.npz",
        options={"neon": {"dotprod": dotprod}},
        output_dir=tmp_path / "out",
    )
    details = result.report["compile"]["details"]
    assert details["kernels"]["qconv"] == 3 and details["kernels"]["qgemm"] == 1
    assert details["tolerance"]["min_cosine"] == 0.99
    assert ("dotprod" in details["flags"]["aarch64"]) is dotprod
    source = (tmp_path / "out" / "model.c").read_text()
    assert "vdotq_s32" in source and "vmull_s8" in source and "vpadalq_s16" in source
    assert "static const int8_t" in source  # weights stay int8
    samples, labels = digits()
    samples = samples[:120]
    ref = ort_outputs(qdq, samples)["logits"]
    float_ref = ort_outputs(EXAMPLES / "digits_cnn.onnx", samples)["logits"]
    tc = toolchain.find(None, None, dotprod, need_aarch64=True, need_qemu=True)
    io = result.artifact.info["io"]
    for got in (
        runner.run_qemu(tc, tmp_path / "out" / toolchain.AARCH64_DRIVER, io, samples)["logits"],
        runner.run_host(tmp_path / "out" / toolchain.HOST_LIB, io, samples)["logits"],
    ):
        cos = float(np.dot(got.ravel(), ref.ravel()) / np.linalg.norm(got) / np.linalg.norm(ref))
        assert cos > 0.999
        assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.99
        assert np.mean(got.argmax(1) == float_ref.argmax(1)) >= 0.97
        assert np.mean(got.argmax(1) == labels[:120]) >= 0.95


@pytest.mark.int8
@pytest.mark.skipif(
    importlib.util.find_spec("edgeplug_quantize") is None or not HAVE_FUSE,
    reason="the quant and fuse plugins are not installed",
)
@needs_aarch64
def test_fuse_quant_neon_chain(tmp_path: Path) -> None:
    result = edgeplug.optimize(
        EXAMPLES / "digits_cnn.onnx",
        ["fuse", "quant", "neon"],
        data=EXAMPLES / "digits_test.npz",
        options={"quant": {"mode": "static"}},
        output_dir=tmp_path / "out",
    )
    details = result.report["compile"]["details"]
    assert details["kernels"].get("qconv", 0) >= 3
    assert details["verification"]["aarch64"]["metrics"]["logits"]["top1"] >= 0.99
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["compile"]["verification"]["passed"]
    assert report["compile"]["verification"]["vs_final_model"]["logits"]["top1"] >= 0.99  # the host library


@needs_aarch64
def test_int8_mobilenet_style_grouped_strided(tmp_path: Path, compile_model) -> None:
    """Depthwise (groups), stride 2, padding, residual Adds and ReLU6 in int8, host and qemu."""
    rng = np.random.default_rng(0)
    source = zoo.cached("mobilenet_style", zoo.mobilenet_style)
    qdq = make_qdq(tmp_path, source, rng.random((16, 3, 32, 32), dtype=np.float32))
    got = compile_model(onnx.load(qdq), samples=3)
    kernels = got["result"].report["compile"]["details"]["kernels"]
    assert kernels["qconv"] == 16 and kernels["qgemm"] == 1
    for build in ("host", "aarch64"):
        a, b = got[build]["logits"].ravel(), got["reference"]["logits"].ravel()
        assert float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)) > 0.999, build


@pytest.mark.parametrize("int8", [False, pytest.param(True, marks=pytest.mark.int8)], ids=["float32", "int8"])
def test_plain_scalar_path(tmp_path: Path, compile_model, int8: bool) -> None:
    """-DEDGEPLUG_SCALAR: the same model.c without NEON or compiler vectors still matches onnxruntime."""
    import subprocess

    from edgeplug_neon import runner

    source = zoo.cached("mobilenet_style", zoo.mobilenet_style)
    if int8:
        proto = onnx.load(
            make_qdq(tmp_path, source, np.random.default_rng(0).random((8, 3, 32, 32), np.float32))
        )
    else:
        proto = fold_batchnorm(onnx.load(source))
    got = compile_model(proto, samples=2, target="host")
    out = got["out"]
    lib = out / "libscalar.so"
    subprocess.run(
        [
            "cc",
            "-O2",
            "-std=gnu11",
            "-fPIC",
            "-shared",
            "-DEDGEPLUG_SCALAR",
            "model.c",
            "-o",
            lib.name,
            "-lm",
        ],
        cwd=out,
        check=True,
        capture_output=True,
        timeout=300,
    )
    scalar = runner.run_host(lib, got["artifact"].info["io"], got["feeds"])
    if int8:
        a, b = scalar["logits"].ravel(), got["reference"]["logits"].ravel()
        assert float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)) > 0.999
    else:
        assert_close(scalar, got["reference"])


@needs_aarch64
def test_asymmetric_u8_qdq_runs_as_fake_quantization(tmp_path: Path) -> None:
    """u8 activations with zero points: no int8 kernels, float kernels between fake quantizations."""
    qdq = make_qdq(tmp_path, symmetric=False)
    result = edgeplug.optimize(qdq, ["neon"], data=EXAMPLES / "digits_test.npz", output_dir=tmp_path / "out")
    details = result.report["compile"]["details"]
    assert "qconv" not in details["kernels"] and details["kernels"]["fakequant"] >= 3
    host = result.report["compile"]["verification"]["vs_final_model"]["logits"]  # judged by the core
    arm = details["verification"]["aarch64"]["metrics"]["logits"]  # judged by neon, under qemu
    for logits in (host, arm):
        assert logits["cosine"] > 0.999 and logits["top1"] >= 0.99
