"""NNCF's bias-corrected static recipe (nncf_ptq.py): the two rewrites that make its Q/DQ layout run on
onnxruntime's int8 kernels are exact (or within the bias's int32 rounding), auto plans it only where it fits,
and with NNCF installed auto builds, times and reports it on the trained digits CNN. No test here asserts what
this CPU's int8 kernels compute (Q/DQ is evaluated as float operators), so none is marked `int8`: NNCF is not
planned on x86 without VNNI, and under `qemu-x86_64 -cpu Haswell` it died with a segmentation fault inside
numpy (nncf's fix_zero_filters_symmetric) on the second test, so it is not run emulated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeplug.plugin_api import DYNAMIC_INT8, FP16, QDQ_INT8
from edgeplug_quantize.cpu_fit import TypeChoice
from edgeplug_quantize.keep_float import drop_unused
from edgeplug_quantize.nncf_ptq import integer_biases, unsigned_activations
from edgeplug_quantize.recipes import Facts, plan
from onnx import TensorProto, helper, numpy_helper

from .conftest import DIGITS, DIGITS_TEST, DIGITS_TRAIN, accuracy, run_cli
from .models import CPU_LIKE, op_cost_timer

VNNI_CPU = {"machine": "x86_64", "flags": ["avx2", "avx512_vnni"], "int8_dot": True, "vnni": True}


def qdq_conv() -> onnx.ModelProto:
    """x -> Q/DQ (int8, zero point 3) -> Conv (s8 per-channel weight, float bias) -> Q/DQ (int8) -> y: NNCF's
    layout of one layer."""
    rng = np.random.default_rng(0)
    weight = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.float32(0.02), "x_scale"),
        numpy_helper.from_array(np.int8(3), "x_zp"),
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(rng.uniform(0.001, 0.004, 4).astype(np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bias"),
        numpy_helper.from_array(np.float32(0.05), "y_scale"),
        numpy_helper.from_array(np.int8(-5), "y_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="qx"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="dqx"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"], name="dqw", axis=0),
        helper.make_node("Conv", ["xd", "wd", "bias"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "y_scale", "y_zp"], ["cq"], name="qy"),
        helper.make_node("DequantizeLinear", ["cq", "y_scale", "y_zp"], ["y"], name="dqy"),
    ]
    graph = helper.make_graph(
        nodes,
        "nncf_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 8, 8])],
        inits,
        value_info=[helper.make_tensor_value_info("xq", TensorProto.INT8, [2, 3, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Q/DQ as float operators: the exact arithmetic, independent of this CPU's int8 kernels."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _x() -> np.ndarray:
    return np.random.default_rng(1).uniform(-2, 2, (2, 3, 8, 8)).astype(np.float32)


def test_unsigned_activations_compute_the_same_numbers() -> None:
    model = qdq_conv()
    before = _run(model, _x())
    assert unsigned_activations(model) == 2  # x_zp and y_zp; the weight's zero point stays int8
    inits = {t.name: t for t in model.graph.initializer}
    assert inits["x_zp"].data_type == TensorProto.UINT8 and numpy_helper.to_array(inits["x_zp"]) == 131
    assert inits["y_zp"].data_type == TensorProto.UINT8 and numpy_helper.to_array(inits["y_zp"]) == 123
    assert inits["w_zp"].data_type == TensorProto.INT8
    assert not model.graph.value_info  # the stale int8 type of xq would not load
    np.testing.assert_array_equal(_run(model, _x()), before)


def test_integer_biases_within_rounding_and_fused_by_onnxruntime(tmp_path: Path) -> None:
    model = qdq_conv()
    before = _run(model, _x())
    assert integer_biases(model) == ["conv"]
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    producer = {o: n for n in model.graph.node for o in n.output}[conv.input[2]]
    assert producer.op_type == "DequantizeLinear"
    model = drop_unused(model)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert inits[producer.input[0]].dtype == np.int32 and "bias" not in inits  # the float bias is gone
    np.testing.assert_allclose(inits[producer.input[1]], 0.02 * inits["w_scale"], rtol=1e-6)
    # one output step (0.05) covers the bias's rounding (half of 0.02 x w_scale at most)
    assert np.abs(_run(model, _x()) - before).max() <= 0.05 + 1e-6
    unsigned_activations(model)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    fused = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert "QLinearConv" in fused and "Conv" not in fused


def test_a_bias_that_cannot_be_an_int32_stays_float() -> None:
    model = qdq_conv()
    for tensor in model.graph.initializer:
        if tensor.name == "bias":
            tensor.CopyFrom(numpy_helper.from_array(np.full(4, 1e9, np.float32), "bias"))
    assert integer_biases(model) == []
    assert any(t.name == "bias" for t in model.graph.initializer)


def test_float_in_place_puts_a_node_back_in_float() -> None:
    """The sensitivity search's cheap edit for NNCF models: the Conv fed the float input and the float model's
    weight and bias computes exactly what the float model computes; the orphaned quantizers are dropped."""
    from edgeplug_quantize.keep_float import float_in_place

    quantized = qdq_conv()
    inits = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    integer_biases(quantized)  # as quantize_nncf leaves it: the bias dequantized from int32 too
    weight = (inits["w_q"].astype(np.float32) * inits["w_scale"][:, None, None, None]).astype(np.float32)
    float_graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        "float",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 8, 8])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(inits["bias"], "b")],
    )
    float_model = helper.make_model(float_graph, opset_imports=[helper.make_opsetid("", 17)])
    edited = float_in_place(quantized, float_model, ["conv"])
    ops = [n.op_type for n in edited.graph.node]
    assert ops == ["Conv", "QuantizeLinear", "DequantizeLinear"]  # the output's quantizer stays
    assert {t.name for t in edited.graph.initializer} == {"w", "b", "y_scale", "y_zp"}
    conv_out = ort.InferenceSession(float_model.SerializeToString()).run(None, {"x": _x()})[0]
    expected = (np.clip(np.round(conv_out / 0.05) - 5, -128, 127) + 5) * 0.05
    np.testing.assert_allclose(_run(edited, _x()), expected, atol=1e-5)
    assert len(quantized.graph.node) == 7  # the input model is not changed


def _facts(**changes: object) -> Facts:
    values: dict[str, object] = {
        "mode": "auto",
        "options": {},
        "types": TypeChoice("u8", "s8", False, False, True),
        "cpu": VNNI_CPU,
        "downstream": frozenset({QDQ_INT8, DYNAMIC_INT8, FP16}),
        "target": frozenset(),
        "static_data": True,
        "nncf": True,
    }
    values.update(changes)
    return Facts(**values)  # type: ignore[arg-type]


def _nncf_planned(facts: Facts) -> tuple[bool, str]:
    result = plan(onnx.load(str(DIGITS)), facts, lambda method: None)
    planned = any(r.engine == "nncf" for r in result.recipes)
    why = next((s["why"] for s in result.skipped if "nncf" in s["recipe"]), "")
    return planned, why


def test_auto_plans_nncf_only_where_it_fits() -> None:
    assert _nncf_planned(_facts()) == (True, "")
    planned, why = _nncf_planned(_facts(nncf=False))
    assert not planned and "not installed" in why
    planned, why = _nncf_planned(_facts(options={"calibration": "entropy"}))
    assert not planned and "calibration" in why
    no_vnni = {"machine": "x86_64", "flags": ["avx2"], "int8_dot": False, "vnni": False}
    planned, why = _nncf_planned(_facts(cpu=no_vnni))
    assert not planned and "VNNI" in why
    symmetric = TypeChoice("s8", "s8", False, True, True)
    planned, why = _nncf_planned(_facts(types=symmetric))
    assert not planned and "symmetric" in why


@pytest.mark.nncf
def test_the_nncf_recipe_runs_on_onnxruntimes_int8_kernels(tmp_path: Path) -> None:
    """The digits CNN through NNCF and the rewrites: every Conv/Gemm fused into an int8 kernel by onnxruntime,
    labelled accuracy kept (Q/DQ evaluated as float operators: independent of this CPU's int8 kernels)."""
    pytest.importorskip("nncf")
    from edgeplug_quantize.prepare import prepare
    from edgeplug_quantize.ptq import Recipe, quantize

    float_model = prepare(onnx.load(str(DIGITS))).proto  # as the plugin quantizes it (BatchNorm folded)
    with np.load(DIGITS_TRAIN) as npz:
        calibration = [{"input": x[None]} for x in npz["input"][:64]]
    quantized = quantize(float_model, Recipe("static", engine="nncf"), calibration)
    path = tmp_path / "nncf.onnx"
    onnx.save(quantized, str(path))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert "QLinearConv" in ops and not ops & {"Conv", "FusedConv"}
    with np.load(DIGITS_TEST) as npz:
        images, labels = npz["input"], npz["labels"]
    as_float = ort.SessionOptions()
    as_float.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(str(path), as_float, providers=["CPUExecutionProvider"])
    quantized_accuracy = float((session.run(None, {"input": images})[0].argmax(1) == labels).mean())
    assert quantized_accuracy >= accuracy(DIGITS) - 0.02


@pytest.mark.nncf
def test_auto_builds_times_and_reports_the_nncf_recipe(
    tmp_path: Path, fake_timer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("nncf")
    from edgeplug_quantize import plugin

    # the plan must not depend on this CPU's VNNI: pretend one that has it (the kernels run as they are)
    real = plugin.cpu_info
    monkeypatch.setattr(plugin, "cpu_info", lambda: {**real(), **VNNI_CPU})
    fake_timer(op_cost_timer(CPU_LIKE))
    out = tmp_path / "out"
    command = (
        f"run {DIGITS} --plugins quant --data {DIGITS_TEST} --calibration-data {DIGITS_TRAIN} --output-dir"
    )
    result = run_cli(*command.split(), out, "--quiet")
    assert result.exit_code == 0, result.output
    step = next(s for s in json.loads((out / "report.json").read_text())["steps"] if s["plugin"] == "quant")
    rows = [r for r in step["details"]["candidates"] if "nncf" in r["recipe"]]
    assert (
        rows and rows[0]["origin"] == "plain" and rows[0]["size_bytes"] and rows[0]["latency_ms"] is not None
    )
    assert rows[0]["status"] in ("kept", "cannot win", "missed", "slower than float", "passed")
    # what it scores depends on this CPU's int8 kernels (the test above checks it without them); something
    # meets the budget whatever they compute (FP16 at worst)
    assert step["verification"]["passed"]
