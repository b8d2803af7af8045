"""Static INT8 on the trained example CNN: accuracy, CLI and Python API, calibration, exclusions, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from edgeplug import DataError, OptionError
from edgeplug.cpu import cpu_info
from edgeplug_quantize.cpu_fit import choose_types
from edgeplug_quantize.plugin import plugin_options
from onnx import numpy_helper

from .conftest import DIGITS, DIGITS_TEST, DIGITS_TRAIN, accuracy, opset11_with_constants, run_cli
from .models import CPU_LIKE, op_cost_timer


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _quant_step(report: dict) -> dict:
    return next(s for s in report["steps"] if s["plugin"] == "quant")


def test_fuse_then_quant_cli_keeps_top1_within_half_a_point(tmp_path, fake_timer):
    pytest.importorskip("edgeplug_fuse")
    fake_timer(op_cost_timer(CPU_LIKE))  # auto's choice, priced as this CPU measures it (test_auto.py)
    out = tmp_path / "out"
    result = run_cli(
        "run",
        DIGITS,
        "--plugins",
        "fuse,quant",
        "--data",
        DIGITS_TEST,
        "--calibration-data",
        DIGITS_TRAIN,
        "-o",
        "quant.per_channel=true",
        "--output-dir",
        out,
    )
    assert result.exit_code == 0, result.output
    report = _report(out)
    step = _quant_step(report)
    assert step["status"] == "applied"
    assert step["details"]["mode"] == "auto"
    assert step["details"]["chosen"]["recipe"] == "static u8/s8 per-channel minmax"
    assert step["details"]["recipe"]["per_channel"] is True
    final = out / "digits_cnn.onnx"
    drop = accuracy(DIGITS) - accuracy(final)
    assert drop <= 0.005, f"top-1 fell by {drop * 100:.2f} points"
    assert report["original"]["metrics"]["size_bytes"] / step["metrics"]["size_bytes"] > 2.5
    proto = onnx.load(final)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights_int8 = [
        t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2
    ]
    assert len(weights_int8) == 4  # 3 Conv + 1 Gemm weights stored as int8
    per_channel = [
        n
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute)
    ]
    assert per_channel, "per-channel weights carry an axis on their DequantizeLinear"


def test_quant_alone_python_api_folds_batchnorm_and_records_the_cpu_choice(tmp_path):
    result = edgeplug.optimize(
        DIGITS, ["quant"], data=DIGITS_TEST, calibration_data=str(DIGITS_TRAIN), output_dir=tmp_path / "out"
    )
    step = _quant_step(result.report)
    assert step["status"] == "applied"
    details = step["details"]
    assert not any(n.op_type == "BatchNormalization" for n in result.model.proto.graph.node)
    assert details["calibration"] == {"method": "minmax", "samples": 128, "source": "file"}
    types = details["types"]
    assert types["reasons"], "the type choice is explained"
    assert {"activation_type", "weight_type"} <= set(types["chosen_automatically"])
    assert accuracy(DIGITS) - step["metrics"]["accuracy"] <= 0.005
    assert step["verification"]["passed"]
    assert step["tolerance"]["min_cosine"] == 0.99  # the plugin's declared budget, not exact equality
    assert step["tolerance"]["max_slice_error"] == 0.5


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods(tmp_path, method):
    result = edgeplug.optimize(
        DIGITS,
        ["quant"],
        data=DIGITS_TEST,
        calibration_data=str(DIGITS_TRAIN),
        options={"quant": {"calibration": method, "calibration_samples": 64}},
        output_dir=tmp_path / "out",
    )
    step = _quant_step(result.report)
    assert step["details"]["calibration"]["method"] == method
    assert accuracy(DIGITS) - step["metrics"]["accuracy"] <= 0.01


def test_mismatched_calibration_data_is_refused(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, image=np.zeros((4, 1, 8, 8), np.float32))
    result = run_cli(
        "run",
        DIGITS,
        "--plugins",
        "quant",
        "--data",
        DIGITS_TEST,
        "--calibration-data",
        bad,
        "--output-dir",
        tmp_path / "out",
    )
    assert result.exit_code == 2, result.output
    assert "does not match the model's inputs" in result.output
    assert "input" in result.output.splitlines()[-1]

    wrong_shape = tmp_path / "shape.npz"
    np.savez(wrong_shape, input=np.zeros((4, 3, 8, 8), np.float32))
    result = run_cli(
        "run",
        DIGITS,
        "--plugins",
        "quant",
        "--data",
        DIGITS_TEST,
        "--calibration-data",
        wrong_shape,
        "--output-dir",
        tmp_path / "out2",
    )
    assert result.exit_code == 2, result.output
    assert "expects" in result.output


def test_calibration_samples_are_checked_by_the_plugin_too(tmp_path):
    """The plugin validates the samples it is handed (Python API callers can build a Dataset by hand)."""
    from edgeplug_quantize.calibration import check_samples

    proto = onnx.load(DIGITS)
    with pytest.raises(DataError, match="missing input"):
        check_samples([{"pixels": np.zeros((1, 1, 8, 8), np.float32)}], proto, "calibration")
    with pytest.raises(DataError, match="dimension 2 = 8"):
        check_samples([{"input": np.zeros((1, 1, 9, 8), np.float32)}], proto, "calibration")


def test_calibration_table_is_written_then_reused_and_a_foreign_one_refused(tmp_path):
    table = tmp_path / "ranges.json"
    first = edgeplug.optimize(
        DIGITS,
        ["quant"],
        data=DIGITS_TEST,
        calibration_data=str(DIGITS_TRAIN),
        options={"quant": {"calibration_table": str(table), "mode": "static"}},
        output_dir=tmp_path / "a",
    )
    assert table.exists()
    assert _quant_step(first.report)["details"]["calibration"]["table_written"] == str(table)
    second = edgeplug.optimize(
        DIGITS,
        ["quant"],
        data=DIGITS_TEST,
        options={"quant": {"calibration_table": str(table), "mode": "static"}},
        output_dir=tmp_path / "b",
    )
    assert _quant_step(second.report)["details"]["calibration"]["reused"] is True
    assert first.model.proto.SerializeToString() == second.model.proto.SerializeToString()

    foreign = json.loads(table.read_text())
    foreign["data"] = {f"other_{k}": v for k, v in foreign["data"].items()}
    (tmp_path / "foreign.json").write_text(json.dumps(foreign))
    result = run_cli(
        "run",
        DIGITS,
        "--plugins",
        "quant",
        "--data",
        DIGITS_TEST,
        "-o",
        f"quant.calibration_table={tmp_path / 'foreign.json'}",
        "--output-dir",
        tmp_path / "c",
    )
    assert result.exit_code == 2, result.output
    assert "made for another model" in result.output


def test_exclude_by_op_type_and_by_name(tmp_path):
    result = edgeplug.optimize(
        DIGITS,
        ["quant"],
        data=DIGITS_TEST,
        calibration_data=str(DIGITS_TRAIN),
        options={"quant": {"exclude": "Gemm,/0/Conv"}},
        output_dir=tmp_path / "out",
    )
    proto = result.model.proto
    recipe = _quant_step(result.report)["details"]["recipe"]
    assert recipe["excluded_op_types"] == ["Gemm"]
    assert set(recipe["excluded_nodes"]) == {"/0/Conv", "/11/Gemm"}
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.name in ("/11/Gemm", "/0/Conv"):
            weight = node.input[1]
            assert weight in inits and inits[weight].data_type == onnx.TensorProto.FLOAT, node.name
            # fed the float tensor, so onnxruntime does not quantize its weight per tensor at load time
            producer = {o: n for n in proto.graph.node for o in n.output}.get(node.input[0])
            assert producer is None or producer.op_type != "DequantizeLinear"

    bad = run_cli(
        "run",
        DIGITS,
        "--plugins",
        "quant",
        "--data",
        DIGITS_TEST,
        "-o",
        "quant.exclude=/0/Cnv",
        "--output-dir",
        tmp_path / "bad",
    )
    assert bad.exit_code == 2
    assert "did you mean /0/Conv" in bad.output


def test_fp16_keeps_float32_inputs_and_outputs(tmp_path):
    result = edgeplug.optimize(
        DIGITS, ["quant"], data=DIGITS_TEST, options={"quant": {"mode": "fp16"}}, output_dir=tmp_path / "out"
    )
    proto = result.model.proto
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    halves = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert len(halves) >= 4
    step = _quant_step(result.report)
    assert step["verification"]["vs_previous"]["logits"]["top1"] == 1.0
    assert step["metrics"]["size_bytes"] < 0.6 * result.report["original"]["metrics"]["size_bytes"]


def test_without_real_data_auto_tries_dynamic_only_and_static_refuses_generated_inputs(tmp_path):
    result = edgeplug.optimize(DIGITS, ["quant"], output_dir=tmp_path / "dyn", quiet=True)
    details = _quant_step(result.report)["details"]
    assert details["mode"] == "auto"
    assert details["not_candidates"][0]["recipe"] == "static"
    assert "needs real calibration data" in details["not_candidates"][0]["why"]
    recipes = [r["recipe"] for r in details["candidates"]]
    assert recipes and all(r.startswith("dynamic") for r in recipes)
    assert any("+Conv" in r for r in recipes)  # a CNN without data: ConvInteger is one of the candidates
    assert details["chosen"]["status"] == "kept"

    refused = run_cli(
        "run", DIGITS, "--plugins", "quant", "-o", "quant.mode=static", "--output-dir", tmp_path / "static"
    )
    assert refused.exit_code == 2
    assert "static calibration needs real data" in refused.output


def test_opset11_model_with_constant_weights_is_converted_not_broken(tmp_path):
    path = tmp_path / "old.onnx"
    onnx.save(opset11_with_constants(), path)
    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(0).random((64, 3, 8, 8), dtype=np.float32))
    result = edgeplug.optimize(
        path, ["quant"], data=data, output_dir=tmp_path / "out", options={"quant": {"mode": "static"}}
    )
    step = _quant_step(result.report)
    assert step["status"] == "applied", step.get("error")
    notes = " ".join(step["details"]["prepare"])
    assert "opset 11 -> 13" in notes and "Constant" in notes
    proto = result.model.proto
    assert result.model.opset >= 13
    int8 = {t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    dq = next(n for n in proto.graph.node if n.output[0] == conv.input[1])
    assert dq.op_type == "DequantizeLinear" and dq.input[0] in int8
    assert step["verification"]["vs_previous"]["logits"]["cosine"] > 0.99


def test_bad_option_values_are_refused():
    with pytest.raises(OptionError, match=r"quant\.mode"):
        edgeplug.optimize(DIGITS, ["quant"], data=DIGITS_TEST, options={"quant": {"mode": "int4"}})
    with pytest.raises(OptionError, match=r"unknown option quant\.metric"):  # the core's --metric replaced it
        edgeplug.optimize(DIGITS, ["quant"], data=DIGITS_TEST, options={"quant": {"metric": "math:cos"}})


def test_weights_are_int8_and_scales_match_the_cpu_choice(tmp_path):
    """mode=static with no type option given: the model carries the types the CPU-fit function picks for this
    CPU (auto compares these with other recipes; test_auto.py)."""
    defaults = {o.name: o.default for o in plugin_options()}
    choice = choose_types(defaults, cpu_info())
    result = edgeplug.optimize(
        DIGITS,
        ["quant"],
        data=DIGITS_TEST,
        calibration_data=str(DIGITS_TRAIN),
        output_dir=tmp_path / "out",
        options={"quant": {"mode": "static"}},
    )
    details = _quant_step(result.report)["details"]
    assert details["types"] == choice.as_dict()
    assert {"activation_type", "weight_type", "reduce_range", "symmetric"} <= set(choice.auto)

    proto = result.model.proto
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    weights = [
        n
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim >= 2
    ]
    activations = [n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert len(weights) == 4 and activations  # 3 Conv + 1 Gemm weights, stored quantized
    dtype = {"u8": np.uint8, "s8": np.int8}
    for node in weights:
        assert inits[node.input[0]].dtype == dtype[choice.weight_type], node.name
        assert any(a.name == "axis" for a in node.attribute) == choice.per_channel, node.name
    # onnxruntime quantizes weights symmetrically to [-127, 127], or to [-64, 64] with reduce_range
    widest = max(int(np.abs(inits[n.input[0]].astype(np.int32)).max()) for n in weights)
    assert widest == (64 if choice.reduce_range else 127)
    for node in activations:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == dtype[choice.activation_type], node.name
        if choice.symmetric:
            assert not zero_point.any(), node.name


def test_excluding_every_quantized_op_type_is_not_applicable(tmp_path):
    out = tmp_path / "static"
    result = run_cli(
        "run",
        DIGITS,
        "--plugins",
        "quant",
        "--data",
        DIGITS_TEST,
        "-o",
        "quant.exclude=Conv,Gemm",
        "--output-dir",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "no node was quantized" in result.output
    assert "-o quant.exclude=Conv,Gemm leaves no node that onnxruntime quantizes" in result.output
    step = _quant_step(_report(out))
    assert step["status"] == "not_applicable"
    assert "no node was quantized" in step["details"]["skipped"]
    final = onnx.load(out / "digits_cnn.onnx")
    assert [n.op_type for n in final.graph.node] == [n.op_type for n in onnx.load(DIGITS).graph.node]

    dynamic = edgeplug.optimize(
        DIGITS,
        ["quant"],
        options={"quant": {"exclude": "Conv,Gemm", "mode": "dynamic"}},
        output_dir=tmp_path / "dynamic",
        quiet=True,
    )
    assert _quant_step(dynamic.report)["status"] == "not_applicable"


def test_dynamic_mode_keeps_an_excluded_gemm_in_float(tmp_path):
    """quantize_dynamic renames a Gemm to `<name>_MatMul` before quantizing: the exclusion must follow it."""
    result = edgeplug.optimize(
        DIGITS,
        ["quant"],
        options={"quant": {"exclude": "/11/Gemm", "mode": "dynamic"}},
        output_dir=tmp_path / "out",
        quiet=True,
    )
    ops = _quant_step(result.report)["details"]["recipe"]["op_counts"]
    assert ops.get("ConvInteger") == 3 and "MatMulInteger" not in ops
    assert ops.get("MatMul") == 1  # the Gemm, as float MatMul + Add


def test_batchnorm_that_cannot_be_folded_gets_a_hint(tmp_path):
    from onnx import TensorProto, helper

    rng = np.random.default_rng(2)
    inits = [
        numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32), "W"),
        numpy_helper.from_array(rng.random(8).astype(np.float32) + 0.5, "gamma"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "beta"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "mean"),
        numpy_helper.from_array(rng.random(8).astype(np.float32) + 0.5, "var"),
        numpy_helper.from_array((rng.standard_normal((4, 8)) * 0.5).astype(np.float32), "FC"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node(
            "BatchNormalization", ["r", "gamma", "beta", "mean", "var"], ["b"], name="bn_after_relu"
        ),
        helper.make_node("GlobalAveragePool", ["b"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "FC"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "bn_after_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    path = tmp_path / "bn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    data = tmp_path / "x.npz"
    np.savez(data, x=rng.random((32, 3, 8, 8), dtype=np.float32))
    result = run_cli("run", path, "--plugins", "quant", "--data", data, "--output-dir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "put a plugin that folds BatchNormalization before quant" in result.output
    assert _quant_step(_report(tmp_path / "out"))["details"]["batchnorm_remaining"] == 1


def test_data_random_means_static_with_a_warning(example_model, tmp_path):
    out = tmp_path / "out"
    result = run_cli("run", example_model, "--plugins", "fuse,quant", "--data", "random", "--output-dir", out)
    assert result.exit_code == 0, result.output
    step = json.loads((out / "report.json").read_text())["steps"][-1]
    assert step["details"]["mode"] == "auto"
    assert any(
        r["recipe"].startswith("static") for r in step["details"]["candidates"]
    )  # static is a candidate
    assert "random data" in result.output
