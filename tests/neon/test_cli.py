"""The command line and the refusals: BatchNormalization, unsupported operators, dynamic shapes, toolchain."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from edgeplug.cli import main
from onnx import helper

from tests.neon.conftest import EXAMPLES, make_model, needs_aarch64, random_samples, write_npz
from tests.neon.test_models import folded_source


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@needs_aarch64
def test_cli_writes_sources_and_both_libraries(tmp_path: Path) -> None:
    model, chain = folded_source(EXAMPLES / "digits_cnn.onnx", tmp_path)
    out = tmp_path / "out"
    code, text = run_cli(
        "run",
        str(model),
        "--plugins",
        ",".join(chain),
        "-o",
        "neon.target=both",
        "-o",
        "neon.verify=true",
        "--data",
        str(EXAMPLES / "digits_test.npz"),
        "--output-dir",
        str(out),
    )
    assert code == 0, text
    for name in (
        "model.c",
        "model.h",
        "Makefile",
        "libedgeplug_model_host.so",
        "libedgeplug_model_aarch64.so",
    ):
        assert (out / name).is_file(), name
    arm = (
        subprocess.run(
            ["file", str(out / "libedgeplug_model_aarch64.so")], capture_output=True, text=True
        ).stdout
        if shutil.which("file")
        else "aarch64"
    )
    assert "aarch64" in arm.lower() or "arm" in arm.lower()
    assert (out / "libedgeplug_model_aarch64.so").read_bytes()[18] == 183  # ELF e_machine EM_AARCH64
    report = json.loads((out / "report.json").read_text())
    verification = report["compile"]["details"]["verification"]  # what neon ran itself: qemu only
    assert set(verification) == {"aarch64"}
    assert verification["aarch64"]["passed"] and verification["aarch64"]["metrics"]["logits"]["top1"] == 1.0
    assert report["compile"]["kind"] == "c-library" and report["compile"]["verification"]["passed"]
    assert report["compile"]["verification"]["vs_final_model"]["logits"]["top1"] == 1.0  # the host library
    if shutil.which("make"):  # the shipped Makefile rebuilds the host library
        (out / "libedgeplug_model_host.so").unlink()
        subprocess.run(["make", "-C", str(out), "host"], check=True, capture_output=True, timeout=120)
        assert (out / "libedgeplug_model_host.so").is_file()


def test_batchnorm_refused_with_fuse_hint(tmp_path: Path) -> None:
    code, text = run_cli(
        "run",
        str(EXAMPLES / "digits_cnn.onnx"),
        "--plugins",
        "neon",
        "-o",
        "neon.target=host",
        "--data",
        str(EXAMPLES / "digits_test.npz"),
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert code == 2
    assert "would receive BatchNormalization nodes" in text
    assert "put a plugin that removes them before neon (installed: fuse)" in text
    assert not (tmp_path / "out" / "model.c").exists()


def test_unsupported_operators_listed_before_codegen(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok_relu"),
        helper.make_node("LeakyRelu", ["a"], ["b"], name="leaky"),
        helper.make_node("Tanh", ["b"], ["y"], name="squash"),
    ]
    proto = make_model(nodes, {"x": (1, 3, 4, 4)}, ["y"])
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    with pytest.raises(edgeplug.PluginError) as err:
        edgeplug.optimize(path, ["neon"], options={"neon": {"target": "host"}}, output_dir=tmp_path / "out")
    message = str(err.value)
    assert "leaky (LeakyRelu)" in message and "squash (Tanh)" in message and "ok_relu" not in message
    assert not (tmp_path / "out" / "model.c").exists()


def test_dynamic_dimension_refused(tmp_path: Path) -> None:
    proto = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (1, 3, 4, 4)}, ["y"])
    proto.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    path = tmp_path / "dyn.onnx"
    onnx.save(proto, path)
    code, text = run_cli(
        "run", str(path), "--plugins", "neon", "-o", "neon.target=host", "--output-dir", str(tmp_path / "out")
    )
    assert code == 2 and "--input-shapes" in text


def test_missing_cross_compiler_named_and_host_still_works(tmp_path: Path) -> None:
    proto = make_model([helper.make_node("Sigmoid", ["x"], ["y"])], {"x": (1, 3, 4, 4)}, ["y"])
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    data = write_npz(tmp_path / "d.npz", random_samples(proto, 3))
    code, text = run_cli(
        "run",
        str(path),
        "--plugins",
        "neon",
        "-o",
        "neon.cross_cc=/nonexistent/aarch64-gcc",
        "--data",
        str(data),
        "--output-dir",
        str(tmp_path / "a"),
    )
    assert code == 2
    assert "gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user" in text
    code, text = run_cli(
        "run",
        str(path),
        "--plugins",
        "neon",
        "-o",
        "neon.cross_cc=/nonexistent/aarch64-gcc",
        "-o",
        "neon.target=host",
        "--data",
        str(data),
        "--output-dir",
        str(tmp_path / "b"),
    )
    assert code == 0, text
    assert (tmp_path / "b" / "libedgeplug_model_host.so").is_file()
    assert not (tmp_path / "b" / "libedgeplug_model_aarch64.so").exists()


def test_disagreement_fails_verification(tmp_path: Path) -> None:
    """A zero tolerance cannot hold for reordered float sums: the run must stop with exit 1."""
    model, chain = folded_source(EXAMPLES / "digits_cnn.onnx", tmp_path)
    code, text = run_cli(
        "run",
        str(model),
        "--plugins",
        ",".join(chain),
        "-o",
        "neon.target=host",
        "-o",
        "neon.rtol=0",
        "-o",
        "neon.atol=0",
        "--data",
        str(EXAMPLES / "digits_test.npz"),
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert code == 1
    assert "compiled c-library differs from the final model" in text


def test_make_runner_runs_host_library(tmp_path: Path) -> None:
    proto = make_model([helper.make_node("Softmax", ["x"], ["y"])], {"x": (1, 10)}, ["y"])
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    result = edgeplug.optimize(
        path, ["neon"], options={"neon": {"target": "host"}}, output_dir=tmp_path / "out"
    )
    pm = edgeplug.load_plugins()
    run = pm.hook.make_runner(artifact=result.artifact, options={})
    x = np.arange(10, dtype=np.float32)[None] / 3
    y = run({"x": x})["y"]
    e = np.exp(x - x.max())
    np.testing.assert_allclose(y, e / e.sum(), rtol=1e-5)


@needs_aarch64
def test_missing_qemu_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeplug_neon import toolchain

    real_which = shutil.which
    monkeypatch.setattr(toolchain.shutil, "which", lambda name: None if "qemu" in name else real_which(name))
    with pytest.raises(edgeplug.MissingDependencyError) as err:
        toolchain.find(None, None, True, need_aarch64=True, need_qemu=True)
    assert "qemu-aarch64 is missing" in str(err.value) and "qemu-user" in str(err.value)
    # building for aarch64 without verification does not need qemu
    assert toolchain.find(None, None, True, need_aarch64=True, need_qemu=False).qemu is None


def test_resize_linear_refused(tmp_path: Path) -> None:
    nodes = [helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear", name="up")]
    proto = make_model(nodes, {"x": (1, 2, 4, 4)}, ["y"], {"sc": np.array([1, 1, 2, 2], np.float32)})
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    with pytest.raises(edgeplug.PluginError, match="only mode=nearest"):
        edgeplug.optimize(path, ["neon"], options={"neon": {"target": "host"}}, output_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "model.c").exists()
