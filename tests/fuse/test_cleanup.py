"""Clean-ups: Identity/Dropout removal, duplicate initializers, MatMul+Add -> Gemm, constant folding,
'not applicable', and the promise never to touch the caller's model."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from edgeplug import Model, RunContext, Tolerance
from edgeplug.data import Dataset
from edgeplug_fuse import plugin
from edgeplug_fuse.cleanup import _dropout_is_identity
from onnx import TensorProto, helper

from .graphs import assert_same_outputs, make_model, ops, step, tensor


def passthrough_model(opset: int = 17) -> onnx.ModelProto:
    """Relu -> Identity -> Dropout -> Add -> Identity (a graph output): every pass-through removable."""
    rng = np.random.default_rng(0)
    inits = [tensor("k", rng.normal(size=(4,)).astype(np.float32))]
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Identity", ["r"], ["i1"]),
        helper.make_node("Dropout", ["i1"], ["d"]),
        helper.make_node("Add", ["d", "k"], ["a"]),
        helper.make_node("Identity", ["a"], ["y"]),
    ]
    return make_model(nodes, {"x": [2, 4]}, ["y"], inits, opset=opset)


def test_identity_and_dropout_removed_keeping_output_names(fuse) -> None:
    before = passthrough_model()
    result = fuse(before)
    details = step(result)["details"]
    assert (details["identity_removed"], details["dropout_removed"]) == (2, 1)
    assert ops(result.model.proto) == {"Relu": 1, "Add": 1}
    assert [o.name for o in result.model.proto.graph.output] == ["y"]
    assert result.model.proto.graph.node[-1].output[0] == "y"  # Add now writes the graph output itself
    assert_same_outputs(before, result.model.proto)


def test_identity_between_input_and_output_is_kept(fuse) -> None:
    """Input -> Identity -> output has no producer to take the output name: it must stay."""
    model = make_model([helper.make_node("Identity", ["x"], ["y"])], {"x": [2, 4]}, ["y"])
    assert step(fuse(model))["status"] == "not_applicable"


def test_training_mode_dropout_is_not_an_identity() -> None:
    graph = gs.import_onnx(
        make_model(
            [helper.make_node("Dropout", ["x", "ratio", "train"], ["y"])],
            {"x": [2, 4]},
            ["y"],
            [tensor("ratio", np.array(0.5, np.float32)), tensor("train", np.array(True))],
        )
    )
    assert not _dropout_is_identity(graph.nodes[0])
    graph.nodes[0].inputs[2].values = np.array(False)
    assert _dropout_is_identity(graph.nodes[0])


def test_duplicate_initializers_merged(fuse) -> None:
    values = np.arange(4, dtype=np.float32)
    inits = [tensor("k1", values), tensor("k2", values.copy()), tensor("k3", values + 1)]
    nodes = [
        helper.make_node("Add", ["x", "k1"], ["a"]),
        helper.make_node("Mul", ["a", "k2"], ["m"]),
        helper.make_node("Sub", ["m", "k3"], ["y"]),
    ]
    before = make_model(nodes, {"x": [2, 4]}, ["y"], inits)
    result = fuse(before)
    assert step(result)["details"]["duplicate_initializers_merged"] == 1
    assert sorted(t.name for t in result.model.proto.graph.initializer) == ["k1", "k3"]
    assert_same_outputs(before, result.model.proto)


def test_scalar_and_one_element_initializers_are_not_merged(fuse) -> None:
    """Same bytes, different shapes (() and [1]): Gather's output rank depends on it."""
    inits = [
        tensor("i0", np.array(0, np.int64)),
        tensor("i1", np.array([0], np.int64)),
        tensor("k", np.array([1.0], np.float32)),
        tensor("k2", np.array([1.0], np.float32)),
    ]
    nodes = [
        helper.make_node("Gather", ["x", "i0"], ["g0"], axis=1),
        helper.make_node("Gather", ["x", "i1"], ["g1"], axis=1),
        helper.make_node("Mul", ["g0", "k"], ["y0"]),
        helper.make_node("Mul", ["g1", "k2"], ["y1"]),
    ]
    before = make_model(nodes, {"x": [2, 4]}, ["y0", "y1"], inits)
    result = fuse(before)
    assert step(result)["details"]["duplicate_initializers_merged"] == 1  # k2 only
    assert {t.name for t in result.model.proto.graph.initializer} == {"i0", "i1", "k"}
    assert_same_outputs(before, result.model.proto)


def test_matmul_add_becomes_gemm_only_for_2d(fuse) -> None:
    rng = np.random.default_rng(1)
    inits = [
        tensor("W", rng.normal(size=(6, 5)).astype(np.float32)),
        tensor("b", rng.normal(size=5).astype(np.float32)),
        tensor("W3", rng.normal(size=(6, 5)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"]),
        helper.make_node("Add", ["b", "m"], ["y"]),
        helper.make_node("MatMul", ["x3", "W3"], ["m3"]),
        helper.make_node("Add", ["m3", "b"], ["y3"]),
    ]
    before = make_model(nodes, {"x": [3, 6], "x3": [2, 3, 6]}, ["y", "y3"], inits)
    result = fuse(before)
    assert step(result)["details"]["matmul_add_to_gemm"] == 1
    assert ops(result.model.proto) == {"Gemm": 1, "MatMul": 1, "Add": 1}
    gemm = next(n for n in result.model.proto.graph.node if n.op_type == "Gemm")
    assert list(gemm.input) == ["x", "W", "b"] and list(gemm.output) == ["y"]
    assert_same_outputs(before, result.model.proto)


def test_constant_subgraph_folded(fuse) -> None:
    """Shape arithmetic on constants (a Reshape target computed by Concat) folds to one initializer."""
    inits = [tensor("a", np.array([2], np.int64)), tensor("b", np.array([-1], np.int64))]
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    before = make_model(nodes, {"x": [4, 3]}, ["y"], inits)
    result = fuse(before)
    assert step(result)["details"]["constant_nodes_folded"] == 1
    assert ops(result.model.proto) == {"Reshape": 1}
    assert_same_outputs(before, result.model.proto)


def test_not_applicable(fuse) -> None:
    """Nothing to fuse: the step reports not_applicable (not an error) and the model is unchanged."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["r"], ["y"])]
    before = make_model(nodes, {"x": [2, 4]}, ["y"])
    result = fuse(before)
    assert step(result)["status"] == "not_applicable"
    assert result.model.proto.graph.node == before.graph.node


def context(options: dict | None = None, chain: tuple[str, ...] = ("fuse",), tmp=None) -> RunContext:
    return RunContext(
        plugin="fuse",
        options={
            "target": "onnx",
            "transformer": "auto",
            "num_heads": 0,
            "hidden_size": 0,
            **(options or {}),
        },
        tolerance=Tolerance(rtol=1e-4, atol=1e-5),
        data=Dataset([], [], "generated", 0, "none"),
        chain=chain,
        workdir=tmp,
        quiet=True,
    )


def test_hook_returns_new_model_and_leaves_input_untouched(tmp_path) -> None:
    from .test_batchnorm import conv_bn

    model = Model(conv_bn())
    before = model.serialized()
    new = plugin.transform_graph(model, context(tmp=tmp_path))
    assert new is not None and new is not model
    assert model.serialized() == before
    assert "BatchNormalization" not in {n.op_type for n in new.proto.graph.node}


def test_hook_returns_none_when_nothing_applies(tmp_path) -> None:
    model = Model(make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": [2, 4]}, ["y"]))
    assert plugin.transform_graph(model, context(tmp=tmp_path)) is None


@pytest.mark.parametrize("options", [{"target": "onnxruntime"}, {"transformer": "bert"}])
def test_contrib_ops_refused_when_a_later_step_does_not_consume_them(tmp_path, options) -> None:
    from edgeplug import PluginError
    from edgeplug.capabilities import ChainView
    from edgeplug.plugin_api import CONTRIB, FORMS

    from .test_batchnorm import conv_bn

    standard_only = ChainView(downstream=FORMS - {CONTRIB}, upstream=frozenset(), target=frozenset())
    ctx = context(options, chain=("fuse", "compiler"), tmp=tmp_path)
    ctx.view = standard_only
    with pytest.raises(PluginError, match=r"contrib ops .*which a later step does not consume"):
        plugin.transform_graph(Model(conv_bn()), ctx)
    # the portable default is fine in front of such a step
    portable = context(chain=("fuse", "compiler"), tmp=tmp_path)
    portable.view = standard_only
    assert plugin.transform_graph(Model(conv_bn()), portable) is not None


def test_bool_initializer_types_survive(fuse) -> None:
    """Non-float initializers go through the round trip with their type."""
    inits = [tensor("mask", np.array([True, False, True, True]))]
    nodes = [helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Where", ["mask", "i", "i"], ["y"])]
    result = fuse(make_model(nodes, {"x": [2, 4]}, ["y"], inits))
    (mask,) = [t for t in result.model.proto.graph.initializer if t.name == "mask"]
    assert mask.data_type == TensorProto.BOOL
