"""The trt preparation on real graphs: constant folding, int64 narrowing, the operator table, Q/DQ checks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeplug import Model, PluginError
from edgeplug.verify import outputs_of
from edgeplug_trt.operators import SUPPORTED, TABLE_TENSORRT_VERSION, UNSUPPORTED, check_operators
from edgeplug_trt.preparation import prepare
from edgeplug_trt.qdq import require_int8_qdq

from tests import zoo
from tests.trt.models import quantize_example, slice_to_end, with_custom_op, with_det


def _load(proto: onnx.ModelProto, tmp_path: Path, name: str) -> Model:
    path = tmp_path / f"{name}.onnx"
    onnx.save(proto, path)
    return Model.load(path)


def _same_outputs(before: Model, after: Model, samples: list[dict[str, np.ndarray]]) -> None:
    ref, got = outputs_of(before, samples), outputs_of(after, samples)
    assert ref.keys() == got.keys()
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key])


@pytest.fixture(scope="module")
def qdq_model(
    tmp_path_factory: pytest.TempPathFactory, example_model: Path, example_train_data: Path
) -> Path:
    out = tmp_path_factory.mktemp("qdq") / "digits_qdq.onnx"
    return quantize_example(example_model, example_train_data, out)


def test_table_is_data_with_its_source() -> None:
    assert TABLE_TENSORRT_VERSION.startswith("10.")
    assert not SUPPORTED & UNSUPPORTED
    assert {"Conv", "QuantizeLinear", "DequantizeLinear", "LayerNormalization"} <= SUPPORTED
    assert {"Det", "QLinearConv", "MatMulInteger", "Unique"} <= UNSUPPORTED


def test_resnet_style_prepares_exactly_with_every_op_supported() -> None:
    model = Model.load(zoo.cached("resnet_style"))
    prep = prepare(model)
    ops = prep.operators
    assert ops["unsupported"] == [] and ops["custom_domain"] == []
    assert ops["operators"]["Conv"] == 9 and ops["operators"]["BatchNormalization"] == 9
    assert ops["opset_supported"]
    sample = zoo.example_inputs(model.proto)
    _same_outputs(model, prep.model, [sample])


def test_example_cnn_preparation(example_model: Path) -> None:
    model = Model.load(example_model)
    prep = prepare(model)
    assert prep.folding["nodes_before"] == prep.folding["nodes_after"] == len(model.proto.graph.node)
    assert set(prep.operators["operators"]) == {
        "Conv",
        "BatchNormalization",
        "Relu",
        "MaxPool",
        "Flatten",
        "Gemm",
    }
    assert "MaxPool" in prep.operators["restrictions_to_respect"]
    rng = np.random.default_rng(0)
    _same_outputs(
        model, prep.model, [{"input": rng.random((1, 1, 8, 8), dtype=np.float32)} for _ in range(4)]
    )


def test_bert_int64_narrowing_is_exact_and_keeps_shape_tensors() -> None:
    model = Model.load(zoo.cached("bert_encoder"))
    prep = prepare(model)
    assert prep.folding["nodes_after"] < prep.folding["nodes_before"]  # shape subgraphs folded
    narrowed = {e["name"]: e["consumers"] for e in prep.int64["narrowed_to_int32"]}
    kept = {e["name"]: e["reason"] for e in prep.int64["kept_int64"]}
    assert narrowed and all(consumers == ["Gather"] for consumers in narrowed.values())
    assert any("Unsqueeze.axes requires tensor(int64)" in r for r in kept.values())
    assert any("shares type" in r for r in kept.values())
    inits = {t.name: t for t in prep.model.proto.graph.initializer}
    assert all(inits[n].data_type == onnx.TensorProto.INT32 for n in narrowed)
    assert all(inits[n].data_type == onnx.TensorProto.INT64 for n in kept if n in inits)
    onnx.checker.check_model(prep.model.proto, full_check=True)
    samples = [zoo.example_inputs(model.proto, seed=s) for s in range(2)]
    _same_outputs(model, prep.model, samples)


def test_int64_values_outside_int32_are_listed_and_kept(tmp_path: Path) -> None:
    model = _load(slice_to_end(), tmp_path, "slice")
    prep = prepare(model, fold=False)
    out = {e["name"]: e for e in prep.int64["out_of_int32_range"]}
    assert set(out) == {"ends"} and out["ends"]["max"] == np.iinfo(np.int64).max
    assert out["ends"]["consumers"] == ["Slice"]
    # starts/axes share Slice's Tind with `ends`, which must stay int64; Gather's indices narrow alone.
    assert [e["name"] for e in prep.int64["narrowed_to_int32"]] == ["idx"]
    kept = {e["name"]: e["reason"] for e in prep.int64["kept_int64"]}
    assert "'ends'" in kept["starts"] and "'ends'" in kept["axes"]
    x = {"x": np.arange(6, dtype=np.float32).reshape(1, 6)}
    _same_outputs(model, prep.model, [x])


def test_unsupported_and_custom_ops_are_listed_with_node_names(tmp_path: Path) -> None:
    det = check_operators(with_det())
    assert det["unsupported"] == [
        {
            "node": "determinant",
            "op_type": "Det",
            "reason": "marked unsupported (N) in the TensorRT parser's matrix",
        }
    ]
    custom = prepare(_load(with_custom_op("com.microsoft"), tmp_path, "custom")).operators
    assert custom["unsupported"] == []
    assert [(e["node"], e["domain"]) for e in custom["custom_domain"]] == [("ms_gelu", "com.microsoft")]
    assert custom["operators"] == {"MatMul": 1, "com.microsoft.Gelu": 1}


def test_restriction_violation_is_unsupported() -> None:
    proto = with_det()
    proto.graph.node[0].CopyFrom(onnx.helper.make_node("Relu", ["x"], ["r"], name="relu"))
    resize = onnx.helper.make_node("Resize", ["x", "", "scales"], ["z"], mode="cubic", name="bicubic")
    proto.graph.node.append(resize)
    bad = {e["node"]: e["reason"] for e in check_operators(proto)["unsupported"]}
    assert "cubic" in bad["bicubic"] and "determinant" in bad


def test_qdq_model_keeps_its_quantization_through_folding(qdq_model: Path) -> None:
    model = Model.load(qdq_model)
    prep = prepare(model)
    before = Counter(n.op_type for n in model.proto.graph.node)
    after = Counter(n.op_type for n in prep.model.proto.graph.node)
    assert after["DequantizeLinear"] == before["DequantizeLinear"] > 0
    assert after["QuantizeLinear"] == before["QuantizeLinear"] > 0
    weights = [t for t in prep.model.proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(weights) >= 4  # conv and gemm weights still stored as int8 behind a DequantizeLinear
    summary = require_int8_qdq(prep.model.proto)
    assert summary["nonzero_zero_points"] == [] and summary["not_int8"] == []
    rng = np.random.default_rng(1)
    _same_outputs(
        model, prep.model, [{"input": rng.random((1, 1, 8, 8), dtype=np.float32)} for _ in range(4)]
    )


def test_asymmetric_qdq_is_refused(tmp_path: Path, example_model: Path, example_train_data: Path) -> None:
    path = quantize_example(example_model, example_train_data, tmp_path / "asym.onnx", symmetric=False)
    with pytest.raises(PluginError, match="non-zero zero points"):
        require_int8_qdq(onnx.load(path))


def test_uint8_qdq_is_refused(tmp_path: Path, example_model: Path, example_train_data: Path) -> None:
    path = quantize_example(example_model, example_train_data, tmp_path / "u8.onnx", signed=False)
    with pytest.raises(PluginError, match=r"needs signed int8 Q/DQ, but input_QuantizeLinear \(uint8\)"):
        require_int8_qdq(onnx.load(path))


def test_int32_bias_dequantize_is_folded_exactly(
    tmp_path: Path, example_model: Path, example_train_data: Path
) -> None:
    """onnxruntime's quantizer stores biases as int32 behind DequantizeLinear, which TensorRT cannot parse."""
    from tests.conftest import quantize_example as shared_quantize_example

    images = np.load(example_train_data)["input"][:16]
    shared_quantize_example(
        tmp_path / "b.onnx", example_model, samples=images, activations="s8", symmetric=True
    )
    model = Model.load(tmp_path / "b.onnx")
    with pytest.raises(PluginError, match="int32 biases of"):
        require_int8_qdq(model.proto)
    assert require_int8_qdq(model.proto, int32_biases_folded_later=True)["int32_biases"]
    prep = prepare(model)
    assert sorted(prep.folding["int32_bias_dequantize_folded"]) == [
        f"{n}.bias_DequantizeLinear" for n in ("1", "11", "4", "8")
    ]
    summary = require_int8_qdq(prep.model.proto)
    assert summary["int32_biases"] == [] and summary["dequantize_nodes"] == 20
    inits = {t.name: t for t in prep.model.proto.graph.initializer}
    folded = [n.output[0] for n in model.proto.graph.node if n.name.endswith(".bias_DequantizeLinear")]
    assert len(folded) == 4 and all(inits[b].data_type == onnx.TensorProto.FLOAT for b in folded)
    test = np.load(example_train_data)["input"][100:132].astype(np.float32)
    _same_outputs(model, prep.model, [{"input": test[i : i + 1]} for i in range(len(test))])


def test_float_model_is_no_int8_source(example_model: Path) -> None:
    with pytest.raises(PluginError, match=r"needs a Q/DQ model"):
        require_int8_qdq(onnx.load(example_model))
