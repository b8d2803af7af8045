"""What adaptive refuses, before any step runs: one sentence on stderr and exit code 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from edgeplug.cli import main
from onnx import TensorProto, helper, numpy_helper

from .conftest import image_model, offset_model, save


def linear_model(classes: int, output: str = "logits") -> helper.ModelProto:
    """x [N, 3] -> x @ W: logits [N, classes]."""
    weights = np.arange(3 * classes, dtype=np.float32).reshape(3, classes) / 10
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], [output])],
        f"linear_{classes}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(weights, "W")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: Path, data: Path, out: Path, *options: str):
    args = ["run", str(model), "--plugins", "adaptive", "--data", str(data), "--output-dir", str(out)]
    for option in options:
        args += ["-o", option]
    return CliRunner().invoke(main, args)


def refusal(result) -> str:
    """The one error line of a run that exit 2 (progress lines before it aside)."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("edgeplug: error: ")]
    assert errors == lines[-1:], result.output
    assert "Traceback" not in result.output
    assert "[adaptive] compile" not in result.output  # refused in pre_optimize, before any work
    return errors[0]


@pytest.fixture
def vectors(tmp_path) -> Path:
    path = tmp_path / "x.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32))
    return path


def test_fewer_than_two_models(tmp_path, vectors):
    small = save(offset_model(0), tmp_path / "small.onnx")
    line = refusal(run(small, vectors, tmp_path / "out", f"adaptive.models={small}"))
    assert "a cascade needs at least two models" in line and "gives 1" in line


def test_the_chain_changed_nothing(tmp_path, vectors):
    """By default the cascade is the chain's final model and its original: the same model without steps."""
    small = save(offset_model(0), tmp_path / "small.onnx")
    line = refusal(run(small, vectors, tmp_path / "out"))
    assert "they are the same model; put a compressing step before adaptive" in line


@pytest.mark.parametrize(
    ("large", "why"),
    [
        (linear_model(3, output="scores"), "names logits against scores"),
        (linear_model(5), "logits: float32 [Nx3] against logits: float32 [Nx5]"),
    ],
)
def test_models_whose_outputs_differ(tmp_path, vectors, large, why):
    small = save(linear_model(3), tmp_path / "small.onnx")
    other = save(large, tmp_path / "large.onnx")
    line = refusal(run(small, vectors, tmp_path / "out", f"adaptive.models={small},{other}"))
    assert "the cascade's models must have the same outputs" in line and why in line


def test_a_logits_gate_on_a_model_without_logits(tmp_path):
    data = tmp_path / "images.npz"
    np.savez(data, x=np.random.default_rng(0).random((20, 1, 4, 4)).astype(np.float32))
    small = save(image_model(1.0), tmp_path / "small.onnx")
    large = save(image_model(2.0), tmp_path / "large.onnx")
    models = f"adaptive.models={small},{large}"
    for gate in ("confidence", "margin", "entropy"):
        line = refusal(run(small, data, tmp_path / gate, models, f"adaptive.gate={gate}"))
        assert f"the {gate} gate reads logits" in line and "no 2-D [N, C>=2] float output" in line
    line = refusal(run(small, data, tmp_path / "named", models, "adaptive.output=y"))
    assert "output y: float32 [Nx1x4x4]" in line and "is not 2-D [N, C>=2] floats" in line


def test_bad_gate_and_costs(tmp_path, vectors):
    small = save(linear_model(3), tmp_path / "small.onnx")
    large = save(linear_model(3), tmp_path / "large.onnx")
    models = f"adaptive.models={small},{large}"
    line = refusal(run(small, vectors, tmp_path / "a", models, "adaptive.gate=confidance"))
    assert "bad value 'confidance' for adaptive.gate" in line
    line = refusal(run(small, vectors, tmp_path / "b", models, "adaptive.gate=nosuchmodule:score"))
    assert "importing nosuchmodule failed" in line
    line = refusal(run(small, vectors, tmp_path / "c", models, "adaptive.costs=1"))
    assert "for adaptive.costs: expected 2 positive numbers" in line
    line = refusal(run(small, vectors, tmp_path / "d", models, "adaptive.costs=1,-2"))
    assert "for adaptive.costs" in line


def test_generated_data_is_refused(tmp_path):
    small = save(linear_model(3), tmp_path / "small.onnx")
    large = save(linear_model(4), tmp_path / "large.onnx")
    args = ["run", str(small), "--plugins", "adaptive", "-o", f"adaptive.models={small},{large}"]
    result = CliRunner().invoke(main, [*args, "--output-dir", str(tmp_path / "out")])
    assert "needs real data" in refusal(result)
