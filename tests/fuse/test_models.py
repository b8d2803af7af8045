"""Real models: the example digits CNN through the CLI, the zoo's ResNet- and MobileNet-style CNNs through
the Python API, and one small model at every opset from 11 to 17."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from edgeplug.cli import main
from onnx import helper

from tests import zoo

from .graphs import assert_same_outputs, bn_node, bn_params, domains, make_model, ops, step, tensor

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits_cnn.onnx"
DIGITS_DATA = ROOT / "examples" / "digits_test.npz"


def test_digits_cli_folds_every_batchnorm(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["run", str(DIGITS), "--plugins", "fuse", "--data", str(DIGITS_DATA), "--output-dir", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    entry = report["steps"][0]
    assert entry["status"] == "applied"
    assert entry["details"]["batchnorm_folded"] == {"Conv": 3}
    fused = onnx.load(str(out / "digits_cnn.onnx"))
    assert ops(onnx.load(str(DIGITS)))["BatchNormalization"] == 3
    assert ops(fused)["BatchNormalization"] == 0
    assert entry["metrics"]["nodes"] == report["original"]["metrics"]["nodes"] - 3
    # accuracy on the 225 labelled validation samples is unchanged, and so are the logits
    assert entry["metrics"]["accuracy"] == report["original"]["metrics"]["accuracy"] >= 0.99
    assert entry["verification"]["vs_previous"]["logits"]["max_abs_error"] < 1e-4


def test_digits_cli_subprocess_exit_code(tmp_path: Path) -> None:
    """The installed console script, as a user runs it."""
    cmd = [
        sys.executable,
        "-m",
        "edgeplug",
        "run",
        str(DIGITS),
        "--plugins",
        "fuse",
        "--data",
        str(DIGITS_DATA),
        "-o",
        "fuse.target=onnxruntime",
        "--output-dir",
        str(tmp_path / "o"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "3 BatchNormalization folded" in proc.stderr
    fused = onnx.load(str(tmp_path / "o" / "digits_cnn.onnx"))
    assert ops(fused)["FusedConv"] == 3 and ops(fused)["BatchNormalization"] == 0


def test_bad_option_is_a_user_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(DIGITS),
            "--plugins",
            "fuse",
            "-o",
            "fuse.target=tensorrt",
            "--output-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2
    assert "onnx, onnxruntime" in result.output


@pytest.mark.parametrize("name", ["resnet_style", "mobilenet_style"])
@pytest.mark.parametrize("target", ["onnx", "onnxruntime"])
def test_zoo_cnn(fuse, name: str, target: str) -> None:
    path = zoo.cached(name)
    original = onnx.load(str(path))
    bns = ops(original)["BatchNormalization"]
    assert bns > 0
    result = fuse(path, target=target)
    entry = step(result)
    after = result.model.proto
    assert entry["status"] == "applied"
    assert sum(entry["details"]["batchnorm_folded"].values()) == bns
    assert ops(after)["BatchNormalization"] == 0
    assert [o.name for o in after.graph.output] == ["logits"]
    if target == "onnx":
        assert domains(after) <= {""}
        onnx.checker.check_model(after, full_check=True)
    else:
        relu = "Clip" if name == "mobilenet_style" else "Relu"
        assert entry["details"]["activations_fused"][relu] > 0
        assert ops(after)["FusedConv"] > 0
    assert len(after.graph.node) < len(original.graph.node)
    feeds = zoo.example_inputs(original)
    from .graphs import run_unoptimized

    ref, got = run_unoptimized(original, feeds), run_unoptimized(after, feeds)
    np.testing.assert_allclose(got["logits"], ref["logits"], rtol=1e-4, atol=1e-5)


def opset_model(opset: int) -> onnx.ModelProto:
    """Conv-BN-Clip(ReLU6) -> Dropout -> Identity -> Flatten -> MatMul+Add, in opset `opset`'s forms."""
    rng = np.random.default_rng(opset)
    inits = [
        tensor("W", rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)),
        *bn_params("bn", 4, rng),
        tensor("lo", np.array(0.0, np.float32)),
        tensor("hi", np.array(6.0, np.float32)),
        tensor("Wfc", rng.normal(0, 0.5, (64, 5)).astype(np.float32)),
        tensor("bfc", rng.normal(0, 0.5, 5).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        bn_node("bn", "c", "b"),
        helper.make_node("Clip", ["b", "lo", "hi"], ["r"]),
        helper.make_node("Dropout", ["r"], ["d"]),
        helper.make_node("Identity", ["d"], ["i"]),
        helper.make_node("Flatten", ["i"], ["f"]),
        helper.make_node("MatMul", ["f", "Wfc"], ["m"]),
        helper.make_node("Add", ["m", "bfc"], ["y"]),
    ]
    return make_model(nodes, {"x": [1, 3, 4, 4]}, ["y"], inits, opset=opset)


@pytest.mark.parametrize("opset", range(11, 18))
@pytest.mark.parametrize("target", ["onnx", "onnxruntime"])
def test_every_opset(fuse, opset: int, target: str) -> None:
    before = opset_model(opset)
    result = fuse(before, target=target)
    after = result.model.proto
    details = step(result)["details"]
    assert details["batchnorm_folded"] == {"Conv": 1}
    assert (details["identity_removed"], details["dropout_removed"], details["matmul_add_to_gemm"]) == (
        1,
        1,
        1,
    )
    expected = {"Conv": 1, "Clip": 1} if target == "onnx" else {"FusedConv": 1}
    assert ops(after) == {**expected, "Flatten": 1, "Gemm": 1}
    assert result.model.opset == opset
    assert_same_outputs(before, after)


@pytest.mark.slow
@pytest.mark.parametrize("opset", range(11, 18))
def test_zoo_resnet_style_every_opset(fuse, opset: int) -> None:
    path = zoo.cached("resnet_style", opset=opset)
    result = fuse(path)
    assert step(result)["status"] == "applied"
    assert ops(result.model.proto)["BatchNormalization"] == 0
    assert result.model.opset == opset


def test_onnxruntime_target_refused_before_neon_cli(tmp_path: Path) -> None:
    """The refusal comes from pre_optimize: exit 2 with one line, before any step has run."""
    from edgeplug import load_plugins

    if "neon" not in {name for name, _ in load_plugins().list_name_plugin()}:
        pytest.skip("the neon plugin is not installed")
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(DIGITS),
            "--plugins",
            "fuse,neon",
            "-o",
            "fuse.target=onnxruntime",
            "--data",
            str(DIGITS_DATA),
            "--output-dir",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2
    # refused before any step, by fuse's own pre_optimize, in capability words
    assert (
        "emits onnxruntime contrib ops (com.microsoft), which a later step does not consume" in result.output
    )
    assert "transform_graph" not in result.output
