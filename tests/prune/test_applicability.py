"""When prune must refuse or not apply: quantized weights (in the model, or from an earlier step), sparsity
0, and the totals of an empty model."""

from __future__ import annotations

import json
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from edgeplug import Capabilities, Model, RunContext, hookimpl
from edgeplug.cli import main
from edgeplug.plugin_api import QDQ_INT8
from edgeplug_prune.accounting import compare_layers, totals
from edgeplug_prune.magnitude import has_float_weights

from tests.conftest import quantize_example, registered
from tests.prune.conftest import DIGITS, TEST_DATA


def _qdq_digits(path: Path) -> Path:
    """The example CNN quantized to QDQ by onnxruntime.quantization (weights behind DequantizeLinear)."""
    return quantize_example(path, DIGITS)


def test_quantized_model_is_refused_with_one_sentence(tmp_path: Path) -> None:
    qdq = _qdq_digits(tmp_path / "qdq.onnx")
    proto = onnx.load(qdq)
    assert sum(n.op_type == "DequantizeLinear" for n in proto.graph.node) >= 4
    assert not has_float_weights(proto)
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(qdq),
            "--plugins",
            "prune",
            "--data",
            str(TEST_DATA),
            "--output-dir",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "plugin 'prune' cannot take this model: it would receive int8 Q/DQ" in result.output
    assert "run prune on the float model, before quantization" in result.output
    assert "100.0% removed" not in result.output
    with pytest.raises(edgeplug.PluginError, match="run prune on the float model, before quantization"):
        edgeplug.optimize(qdq, ["prune"], data=TEST_DATA, output_dir=tmp_path / "api")


class EmitsQdq:
    """A step declaring that it produces int8 Q/DQ (as a quantizer does); it never runs here."""

    @hookimpl
    def plugin_capabilities(self) -> Capabilities:
        return Capabilities(produces=frozenset({QDQ_INT8}))

    @hookimpl
    def transform_graph(self, model: Model, ctx: RunContext) -> Model:
        raise AssertionError("the chain must be refused before any step runs")


def test_prune_after_a_step_producing_int8_qdq_is_refused(tmp_path: Path) -> None:
    """prune declares that it consumes no int8 Q/DQ: the core refuses the chain before any work and says
    where to move prune (the words are the core's; prune names no other plugin)."""
    with registered((EmitsQdq(), "qdqmaker")):
        result = CliRunner().invoke(
            main,
            [
                *("run", str(DIGITS), "--plugins", "qdqmaker,prune", "--data", str(TEST_DATA)),
                *("--output-dir", str(tmp_path)),
            ],
        )
    assert result.exit_code == 2, result.output
    assert "plugin 'prune' cannot take this model: it would receive int8 Q/DQ" in result.output
    assert "(produced by qdqmaker)" in result.output and "put prune before qdqmaker" in result.output
    assert json.loads((tmp_path / "report.json").read_text())["steps"] == []


def test_totals_of_no_parameters_report_no_sparsity() -> None:
    assert totals([])["sparsity"] == 0.0
    empty = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        )
    )
    assert totals(compare_layers(empty, empty))["sparsity"] == 0.0
    digits = onnx.load(DIGITS)
    assert totals(compare_layers(digits, digits))["sparsity"] == 0.0


def test_sparsity_zero_is_not_applicable(tmp_path: Path) -> None:
    args = ["run", str(DIGITS), "--plugins", "prune", "-o", "prune.sparsity=0"]
    result = CliRunner().invoke(
        main, [*args, "--data", str(TEST_DATA), "--output-dir", str(tmp_path), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["steps"][0]["status"] == "not_applicable"
    run = edgeplug.optimize(
        DIGITS,
        ["prune"],
        data=TEST_DATA,
        output_dir=tmp_path / "api",
        options={"prune": {"sparsity": 0.0}},
    )
    assert run.report["steps"][0]["status"] == "not_applicable"
    before, after = dict(edgeplug.Model.load(DIGITS).weights()), dict(run.model.weights())
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value)


def test_every_layer_spared_is_not_applicable(tmp_path: Path) -> None:
    run = edgeplug.optimize(
        DIGITS,
        ["prune"],
        data=TEST_DATA,
        output_dir=tmp_path,
        options={"prune": {"sparsity": 0.5, "overrides": ["*:0"]}},
    )
    assert run.report["steps"][0]["status"] == "not_applicable"
