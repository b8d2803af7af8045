"""GPTQ rounding of static int8 weights (rounding.py): the im2col it builds H from, the update itself, and the
rewritten model (same graph, scales and bounds; smaller error on the trained digits CNN), judged with the Q/DQ
pairs run as float operators (what exact int8 computes: the same on every CPU)."""

from __future__ import annotations

import edgeplug
import numpy as np
import onnx
import pytest
from edgeplug.plugin_api import session
from edgeplug_quantize.cpu_fit import choose_types
from edgeplug_quantize.keep_float import float_in_place
from edgeplug_quantize.ptq import Recipe, quantize
from edgeplug_quantize.recipes import Facts, alternatives
from edgeplug_quantize.rounding import gptq, patches, spread
from onnx import TensorProto, helper, numpy_helper

from .conftest import DIGITS, DIGITS_TEST, DIGITS_TRAIN, accuracy, run_cli
from .models import CPU_LIKE


def _conv_model(weights: np.ndarray, **attrs: object) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weights, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_patches_are_the_rows_a_grouped_strided_dilated_padded_conv_multiplies():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 9, 11)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    attrs = dict(kernel_shape=[3, 3], strides=[2, 1], pads=[1, 0, 2, 1], dilations=[2, 1], group=2)
    model = _conv_model(w, **attrs)
    expected = session(model.SerializeToString()).run(None, {"x": x})[0]  # [N, 6, Ho, Wo]
    rows = patches(x, model.graph.node[0]).astype(np.float64)  # [N*Ho*Wo, 2, 2*3*3]
    grouped = w.reshape(2, 3, -1).astype(np.float64)  # groups, out per group, columns
    got = np.einsum("mgi,goi->mgo", rows, grouped).reshape(len(rows), 6)
    n, _, ho, wo = expected.shape
    np.testing.assert_allclose(got, expected.transpose(0, 2, 3, 1).reshape(n * ho * wo, 6), atol=1e-4)


def _grid(rows: int) -> tuple[np.ndarray, ...]:
    scale = np.full((1, rows), 0.05)
    zero = np.zeros((1, rows))
    return scale, zero, np.full((1, rows), -127.0), np.full((1, rows), 127.0)


def test_gptq_is_nearest_rounding_when_the_inputs_are_uncorrelated():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((1, 5, 12))
    h = np.diag(rng.random(12) + 0.5)[None]  # no column tells anything about another
    scale, zero, low, high = _grid(5)
    got = gptq(w, h, scale, zero, low, high)
    np.testing.assert_array_equal(got, np.clip(np.round(w / 0.05), -127, 127))


def test_gptq_lowers_the_output_error_on_correlated_inputs_it_was_not_fitted_on():
    rng = np.random.default_rng(2)
    mixing = rng.standard_normal((4, 16))

    def inputs(count: int) -> np.ndarray:  # correlated columns with a common offset, like image patches
        return rng.standard_normal((count, 4)) @ mixing + 0.1 * rng.standard_normal((count, 16)) + 1.0

    w = rng.standard_normal((1, 8, 16))
    fit, held_out = inputs(2000), inputs(2000)
    scale, zero, low, high = _grid(8)
    nearest = np.clip(np.round(w / 0.05), -127, 127) * 0.05
    compensated = gptq(w, (fit.T @ fit)[None], scale, zero, low, high) * 0.05

    def error(q: np.ndarray) -> float:
        return float(np.mean((held_out @ (q[0] - w[0]).T) ** 2))

    assert error(compensated) < 0.5 * error(nearest)
    assert np.all(np.abs(compensated / 0.05) <= 127)


def test_spread_takes_evenly_spaced_samples():
    assert spread(list(range(10)), 32) == list(range(10))
    picked = spread(list(range(100)), 32)
    assert len(set(picked)) == 32 and picked[0] == 0 and picked[-1] == 99


def _digits() -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]], np.ndarray]:
    with np.load(DIGITS_TRAIN) as train, np.load(DIGITS_TEST) as test:
        calibration = [{"input": train["input"][i : i + 1]} for i in range(0, len(train["input"]), 10)]
        return onnx.load(DIGITS), calibration, test["input"]


def _integers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {
        t.name: numpy_helper.to_array(t)
        for t in model.graph.initializer
        if t.data_type in (TensorProto.INT8, TensorProto.UINT8)
    }


def test_gptq_rounding_keeps_graph_scales_and_bounds_and_lowers_the_error_of_7_bit_weights():
    """The trained digits CNN with 7-bit weights (reduce_range, what auto picks on x86 without VNNI):
    measured while writing this, the mean squared logit error fell from 0.0096 to 0.0059."""
    model, calibration, test = _digits()
    reference = session(model.SerializeToString()).run(None, {"input": test})[0]
    built = {
        rounding: quantize(model, Recipe("static", reduce_range=True, rounding=rounding), calibration)
        for rounding in ("nearest", "gptq")
    }
    nearest, compensated = built["nearest"], built["gptq"]
    assert [n.op_type for n in nearest.graph.node] == [n.op_type for n in compensated.graph.node]
    floats = {
        t.name: numpy_helper.to_array(t).tobytes()
        for t in nearest.graph.initializer
        if t.data_type == TensorProto.FLOAT
    }
    assert floats == {
        t.name: numpy_helper.to_array(t).tobytes()
        for t in compensated.graph.initializer
        if t.data_type == TensorProto.FLOAT
    }  # scales (and every other float) unchanged
    before, after = _integers(nearest), _integers(compensated)
    weights = [name for name in before if name.endswith("_quantized")]
    assert weights and any(not np.array_equal(before[n], after[n]) for n in weights)
    for name in weights:  # each row keeps the grid's ends its nearest rounding used (+-64 for 7-bit s8)
        rows = len(before[name])
        reach = np.abs(before[name].reshape(rows, -1).astype(int)).max(axis=1)
        assert np.all(np.abs(after[name].reshape(rows, -1).astype(int)) <= reach[:, None])
        assert reach.max() <= 64

    def error(q: onnx.ModelProto) -> float:
        out = session(q.SerializeToString(), qdq_as_float=True).run(None, {"input": test})[0]
        return float(np.mean((out - reference) ** 2))

    assert error(compensated) < 0.8 * error(nearest)
    assert "gptq rounding" in Recipe("static", rounding="gptq").label
    assert Recipe("static", rounding="gptq").summary()["rounding"] == "gptq"


def _facts(**options: object) -> Facts:
    values = {"rounding": None, "calibration": None, "reduce_range": None} | options
    return Facts(
        "auto",
        values,
        choose_types({}, CPU_LIKE),
        CPU_LIKE,
        frozenset(),
        frozenset(),
        static_data=True,
    )


def test_auto_tries_gptq_rounding_first_among_the_alternatives_unless_the_user_chose():
    base = Recipe("static")
    found = alternatives(base, _facts(), lambda method: None)
    assert found[0].rounding == "gptq" and found[0].calibration == base.calibration
    assert all(r.rounding == "nearest" for r in found[1:])
    assert not any(
        r.rounding == "gptq" for r in alternatives(base, _facts(rounding="nearest"), lambda m: None)
    )
    assert alternatives(Recipe("static", engine="nncf"), _facts(), lambda m: None) == []
    assert not any(r.rounding == "gptq" for r in alternatives(Recipe("dynamic"), _facts(), lambda m: None))


@pytest.mark.int8
def test_static_gptq_through_the_python_api_reports_its_rounding(tmp_path):
    result = edgeplug.optimize(
        DIGITS,
        ["quant"],
        data=DIGITS_TEST,
        calibration_data=str(DIGITS_TRAIN),
        options={"quant": {"mode": "static", "rounding": "gptq"}},
        output_dir=tmp_path / "out",
    )
    step = next(s for s in result.report["steps"] if s["plugin"] == "quant")
    assert step["status"] == "applied"
    assert step["details"]["recipe"]["rounding"] == "gptq"
    assert "gptq rounding" in step["details"]["recipe"]["recipe"]
    assert accuracy(DIGITS) - step["metrics"]["accuracy"] <= 0.01


@pytest.mark.parametrize("value", ["stochastic", "3"])
def test_an_unknown_rounding_is_one_line_and_exit_2(tmp_path, value):
    result = run_cli(
        "run", DIGITS, "--plugins", "quant", "-o", f"quant.rounding={value}", "--output-dir", tmp_path / "o"
    )
    assert result.exit_code == 2, result.output
    assert "rounding" in result.output and "Traceback" not in result.output


def _conv_clip_conv() -> onnx.ModelProto:
    """x -> Conv(+bias) -> Clip(0, 6) -> Conv(+bias) -> y: onnxruntime's quantizer folds the Clip into the
    QuantizeLinear behind the first Conv and names each bias's DequantizeLinear output after the float bias."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3, "w2"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b2"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="clip1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2", kernel_shape=[1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_float_in_place_on_an_onnxruntime_model_redoes_the_folded_clip_and_keeps_names_unique():
    """The sensitivity search of a GPTQ-rounded model puts nodes back in float in the quantized model."""
    model = _conv_clip_conv()
    rng = np.random.default_rng(4)
    calibration = [{"x": (rng.standard_normal((1, 3, 8, 8)) * 2).astype(np.float32)} for _ in range(8)]
    quantized = quantize(model, Recipe("static"), calibration)
    assert "Clip" not in {n.op_type for n in quantized.graph.node}  # folded into the QuantizeLinear
    restored = float_in_place(quantized, model, ["conv1", "conv2"])
    x = calibration[0]
    expected = session(model.SerializeToString()).run(None, x)[0]
    got = session(restored.SerializeToString()).run(None, x)[0]  # loads: no name defined twice
    # only the model output's own quantizer is left: within one step of its grid (without the Clip redone,
    # conv1's negative outputs would reach conv2 and the error would be several units)
    (output_q,) = [n for n in restored.graph.node if n.op_type == "QuantizeLinear"]
    inits = {t.name: numpy_helper.to_array(t) for t in restored.graph.initializer}
    assert np.max(np.abs(got - expected)) <= float(inits[output_q.input[1]])


def test_gptq_rounding_of_a_matmul_by_a_constant_lowers_its_error_on_unseen_tokens():
    """A MatMul [batch, tokens, 32] x [32, 16] (a transformer's projection), inputs with correlated features."""
    rng = np.random.default_rng(5)
    mixing = rng.standard_normal((4, 32)).astype(np.float32)
    w = rng.standard_normal((32, 16)).astype(np.float32)
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 16])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    def tokens() -> dict[str, np.ndarray]:
        x = rng.standard_normal((1, 64, 4)).astype(np.float32) @ mixing
        return {"x": (x + 0.05 * rng.standard_normal(x.shape) + 0.5).astype(np.float32)}

    calibration, held_out = [tokens() for _ in range(16)], [tokens() for _ in range(16)]
    built = {r: quantize(model, Recipe("static", rounding=r), calibration) for r in ("nearest", "gptq")}
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(_integers(built["nearest"]).values(), _integers(built["gptq"]).values())
    )

    def error(q: onnx.ModelProto) -> float:  # what the weights' rounding costs on unseen inputs
        made = {n.output[0]: n for n in q.graph.node}
        dq = made[next(n for n in q.graph.node if n.op_type == "MatMul").input[1]]
        inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
        weights = inits[dq.input[0]].astype(np.float32) * inits[dq.input[1]]  # per column (axis 1)
        return float(np.mean([np.mean((s["x"] @ weights - s["x"] @ w) ** 2) for s in held_out]))

    assert error(built["gptq"]) < 0.5 * error(built["nearest"])
