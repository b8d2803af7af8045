"""Model: loading, shape inference, graphsurgeon round trip, saving."""

from __future__ import annotations

import edgeplug.model as model_mod
import numpy as np
import onnx
from edgeplug import Model
from edgeplug.verify import intermediate_outputs, outputs_of, tensor_session
from onnx import TensorProto, helper

from ..conftest import conv_net


def test_graphsurgeon_round_trip_keeps_metadata_and_opsets(tiny_model):
    model = Model.load(tiny_model)
    proto = model.copy_proto()
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model = model.replace(proto)
    graph = model.to_graphsurgeon()
    graph.cleanup().toposort()
    back = Model.from_graphsurgeon(graph, like=model, step="gs")
    assert model_mod.get_metadata(back.proto, "author") == "tests"
    assert {(o.domain, o.version) for o in back.proto.opset_import} >= {("", 17), ("com.microsoft", 1)}
    assert back.history == ("gs",)
    sample = {"x": np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)}
    np.testing.assert_array_equal(outputs_of(model, [sample])["logits"], outputs_of(back, [sample])["logits"])


def test_replace_keeps_history_and_never_touches_the_original(tiny_model):
    model = Model.load(tiny_model)
    proto = model.copy_proto()
    proto.graph.node[0].name = "renamed"
    new = model.replace(proto, "a").replace(proto, "b")
    assert new.history == ("a", "b")
    assert model.proto.graph.node[0].name == "conv"


def test_path_is_a_lazily_written_copy(tiny_model):
    model = Model.load(tiny_model)
    path = model.path
    assert path != tiny_model and path.exists()
    assert Model.load(path).proto.graph.node[0].name == "conv"


def test_save_is_atomic_and_refuses_the_input(tiny_model, tmp_path):
    model = Model.load(tiny_model)
    target = tmp_path / "out" / "m.onnx"
    model.save(target)
    assert not list(target.parent.glob(".*tmp*"))
    try:
        model.save(tiny_model)
    except model_mod.ModelError as exc:
        assert "refusing to overwrite" in str(exc)
    else:
        raise AssertionError("saving over the input was allowed")


def test_large_models_are_saved_with_external_data(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(model_mod, "TWO_GB", 100)
    monkeypatch.setattr(
        model_mod, "EXTERNAL_MIN_BYTES", 0
    )  # the same code path as a >2 GB model, at test size
    model = Model.load(tiny_model)
    target = tmp_path / "big.onnx"
    model.save(target)
    assert (tmp_path / "big.onnx.data").exists()
    assert target.stat().st_size < (tmp_path / "big.onnx.data").stat().st_size
    monkeypatch.undo()
    again = Model.load(target)
    sample = {"x": np.ones((1, 3, 8, 8), np.float32)}
    np.testing.assert_array_equal(
        outputs_of(model, [sample])["logits"], outputs_of(again, [sample])["logits"]
    )


def test_symbolic_shape_inference_types_contrib_op_outputs(tmp_path):
    graph = helper.make_graph(
        [
            helper.make_node("Gelu", ["x"], ["g"], domain="com.microsoft"),
            helper.make_node("Relu", ["g"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    path = tmp_path / "contrib.onnx"
    onnx.save(proto, path)
    assert not onnx.shape_inference.infer_shapes(proto).graph.value_info  # onnx alone leaves g untyped
    model = Model.load(path)
    typed = {v.name: v for v in model.proto.graph.value_info}
    assert "g" in typed and typed["g"].type.tensor_type.elem_type == TensorProto.FLOAT


def test_stats_count_parameters_in_constants_and_sparse_initializers(tmp_path):
    proto = conv_net()
    weight = proto.graph.initializer[0]
    dense = onnx.numpy_helper.to_array(weight).copy()
    dense[dense < 0.5] = 0
    values = dense[dense != 0]
    indices = np.flatnonzero(dense).astype(np.int64)
    sparse = helper.make_sparse_tensor(
        onnx.numpy_helper.from_array(values, "W"),
        onnx.numpy_helper.from_array(indices, "W_idx"),
        list(dense.shape),
    )
    del proto.graph.initializer[0]
    proto.graph.sparse_initializer.append(sparse)
    stats = Model(proto).stats()
    assert stats["parameters"] == 8 * 3 * 3 * 3 + 8 + 40 + 5
    assert stats["nonzero_parameters"] == stats["parameters"] - int((dense == 0).sum())


def test_opset_and_inputs(example_model):
    model = Model.load(example_model)
    assert model.opset == 17
    assert model.inputs[0].name == "input" and model.inputs[0].shape[1:] == (1, 8, 8)
    assert model.op_histogram()["BatchNormalization"] == 3


def test_a_json_file_is_refused_as_not_onnx(tmp_path):
    """onnx.load parses .json files as JSON protobuf: its ParseError is a ModelError, not an internal one."""
    path = tmp_path / "report.json"
    path.write_text('{"schema_version": 1, "steps": []}')
    try:
        Model.load(path)
    except model_mod.ModelError as exc:
        assert "is not a valid ONNX model (cannot parse it" in str(exc)
    else:
        raise AssertionError("a report.json loaded as a model")


def test_input_shapes_must_be_positive_integers(tiny_model):
    model = Model.load(tiny_model)
    for dims in ([-1, 3, 8, 8], [0, 3, 8, 8], [1.5, 3, 8, 8]):
        try:
            model.with_input_shapes({"x": dims})
        except model_mod.ModelError as exc:
            assert "must be a positive integer" in str(exc)
        else:
            raise AssertionError(f"--input-shapes accepted {dims}")
    assert model.with_input_shapes({"x": [2, 3, 8, 8]}).inputs[0].shape == (2, 3, 8, 8)


def test_external_data_files_are_listed_and_their_sizes_checked(tmp_path, monkeypatch):
    onnx.save_model(
        conv_net(),
        str(tmp_path / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert model_mod.external_data_files(tmp_path / "m.onnx") == [(tmp_path / "weights.bin").resolve()]
    size = (tmp_path / "weights.bin").stat().st_size
    assert Model.load(tmp_path / "m.onnx").stats()["parameters"] == 8 * 27 + 8 + 40 + 5
    monkeypatch.setattr(model_mod, "available_memory", lambda: size - 1)
    try:
        Model.load(tmp_path / "m.onnx")
    except model_mod.ModelError as exc:
        assert f"declares {size:,} bytes of external data" in str(exc)
    else:
        raise AssertionError("external data larger than the memory available was loaded")


def test_available_memory_is_positive_and_bounded_by_the_system():
    import psutil

    available = model_mod.available_memory()
    assert 0 < available <= psutil.virtual_memory().total


def test_tensor_session_exposes_the_named_tensors_or_every_tensor():
    model = Model(conv_net())
    x = {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    every = intermediate_outputs(model, x)
    assert set(every) == {o for n in model.proto.graph.node for o in n.output}
    first = model.proto.graph.node[0].output[0]
    sess = tensor_session(model, [first])
    names = [o.name for o in sess.get_outputs()]
    assert names == [o.name for o in model.proto.graph.output] + [first]
    np.testing.assert_allclose(sess.run([first], x)[0], every[first])
