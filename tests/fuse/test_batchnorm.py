"""BatchNormalization folding into Conv, ConvTranspose, Gemm and MatMul, and the cases left alone."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from .graphs import assert_same_outputs, bn_node, bn_params, make_model, ops, step, tensor


def conv_bn(
    channels: int = 8,
    groups: int = 1,
    bias: bool = True,
    eps: float = 1e-5,
    spatial: int = 2,
    seed: int = 0,
    opset: int = 17,
):
    """x -> Conv -> BN -> Relu -> y."""
    rng = np.random.default_rng(seed)
    cin = 4 if groups == 1 else channels
    kernel = (3,) * spatial
    inits = [
        tensor("W", rng.normal(0, 0.5, (channels, cin // groups, *kernel)).astype(np.float32)),
        *bn_params("bn", channels, rng),
    ]
    conv_inputs = ["x", "W"]
    if bias:
        inits.append(tensor("B", rng.normal(0, 0.5, channels).astype(np.float32)))
        conv_inputs.append("B")
    nodes = [
        helper.make_node("Conv", conv_inputs, ["c"], name="conv", group=groups, pads=[1] * (2 * spatial)),
        bn_node("bn", "c", "bn_out", epsilon=eps),
        helper.make_node("Relu", ["bn_out"], ["y"]),
    ]
    return make_model(nodes, {"x": [1, cin, *(6,) * spatial]}, ["y"], inits, opset=opset)


@pytest.mark.parametrize(
    ("groups", "bias", "eps", "spatial"),
    [
        (1, True, 1e-5, 2),
        (1, False, 1e-5, 2),
        (2, True, 1e-3, 2),
        (8, False, 1e-5, 2),
        (8, True, 0.1, 2),
        (1, True, 1e-5, 1),
        (1, False, 1e-5, 3),
    ],
    ids=["bias", "no-bias", "groups2-eps1e-3", "depthwise", "depthwise-bias-eps0.1", "conv1d", "conv3d"],
)
def test_conv_bn_folds(fuse, groups: int, bias: bool, eps: float, spatial: int) -> None:
    before = conv_bn(groups=groups, bias=bias, eps=eps, spatial=spatial)
    result = fuse(before)
    after = result.model.proto
    assert step(result)["status"] == "applied"
    assert step(result)["details"]["batchnorm_folded"] == {"Conv": 1}
    assert ops(after) == {"Conv": 1, "Relu": 1}
    (conv,) = [n for n in after.graph.node if n.op_type == "Conv"]
    assert conv.output[0] == "bn_out"  # the fused Conv writes the old BN output
    assert len(conv.input) == 3  # a bias was created where there was none
    assert_same_outputs(before, after)


def test_epsilon_matters(fuse) -> None:
    """The fold uses the node's epsilon: a large one changes the folded weights measurably."""
    small, large = fuse(conv_bn(eps=1e-5)).model.proto, fuse(conv_bn(eps=0.5)).model.proto
    w_small = next(t for t in small.graph.initializer if t.name == "W")
    w_large = next(t for t in large.graph.initializer if t.name == "W")
    assert not np.allclose(
        np.frombuffer(w_small.raw_data, np.float32), np.frombuffer(w_large.raw_data, np.float32)
    )


@pytest.mark.parametrize(("groups", "bias"), [(1, True), (1, False), (2, True)])
def test_conv_transpose_bn_folds(fuse, groups: int, bias: bool) -> None:
    rng = np.random.default_rng(1)
    cin, per_group = 4, 3
    channels = per_group * groups
    inits = [
        tensor("W", rng.normal(0, 0.5, (cin, per_group, 3, 3)).astype(np.float32)),
        *bn_params("bn", channels, rng),
    ]
    inputs = ["x", "W"]
    if bias:
        inits.append(tensor("B", rng.normal(0, 0.5, channels).astype(np.float32)))
        inputs.append("B")
    nodes = [
        helper.make_node("ConvTranspose", inputs, ["c"], group=groups, strides=[2, 2]),
        bn_node("bn", "c", "y"),
    ]
    before = make_model(nodes, {"x": [1, cin, 5, 5]}, ["y"], inits)
    result = fuse(before)
    assert step(result)["details"]["batchnorm_folded"] == {"ConvTranspose": 1}
    assert ops(result.model.proto) == {"ConvTranspose": 1}
    assert_same_outputs(before, result.model.proto)


@pytest.mark.parametrize(
    ("trans_b", "c_shape", "beta"),
    [
        (0, (5,), 1.0),
        (1, (5,), 0.5),
        (0, None, 1.0),
        (1, None, 1.0),
        (0, (3, 5), 0.5),
        (1, (1, 5), 1.0),
        (0, (), 2.0),
    ],
)
def test_gemm_bn_folds(fuse, trans_b: int, c_shape: tuple[int, ...] | None, beta: float) -> None:
    rng = np.random.default_rng(2)
    k, n = 6, 5
    shape = (n, k) if trans_b else (k, n)
    inits = [tensor("B", rng.normal(0, 0.5, shape).astype(np.float32)), *bn_params("bn", n, rng)]
    inputs = ["x", "B"]
    if c_shape is not None:
        inits.append(tensor("C", np.asarray(rng.normal(0, 0.5, c_shape), np.float32)))
        inputs.append("C")
    nodes = [
        helper.make_node("Gemm", inputs, ["g"], transB=trans_b, beta=beta, alpha=0.7),
        bn_node("bn", "g", "y"),
    ]
    before = make_model(nodes, {"x": [3, k]}, ["y"], inits)
    result = fuse(before)
    assert step(result)["details"]["batchnorm_folded"] == {"Gemm": 1}
    assert ops(result.model.proto) == {"Gemm": 1}
    assert_same_outputs(before, result.model.proto)


def test_matmul_bn_becomes_gemm(fuse) -> None:
    rng = np.random.default_rng(3)
    inits = [tensor("W", rng.normal(0, 0.5, (6, 5)).astype(np.float32)), *bn_params("bn", 5, rng)]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), bn_node("bn", "m", "y")]
    before = make_model(nodes, {"x": [3, 6]}, ["y"], inits)
    result = fuse(before)
    assert step(result)["details"]["batchnorm_folded"] == {"MatMul": 1}
    assert ops(result.model.proto) == {"Gemm": 1}
    assert result.model.proto.graph.node[0].output[0] == "y"
    assert_same_outputs(before, result.model.proto)


def test_matmul_3d_bn_is_left(fuse) -> None:
    """BN's channel axis of a [B, C, L] MatMul output is not the weight's axis: nothing to fold."""
    rng = np.random.default_rng(4)
    inits = [tensor("W", rng.normal(0, 0.5, (6, 5)).astype(np.float32)), *bn_params("bn", 4, rng)]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), bn_node("bn", "m", "y")]
    result = fuse(make_model(nodes, {"x": [2, 4, 6]}, ["y"], inits))
    assert step(result)["status"] == "not_applicable"
    assert step(result)["details"]["batchnorm_left"] == {"MatMul input not 2-D": 1}


def test_shared_weights_are_left(fuse) -> None:
    """Two Convs reading one weight tensor: folding one BN would change the other Conv."""
    rng = np.random.default_rng(5)
    inits = [
        tensor("W", rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32)),
        *bn_params("bn1", 4, rng),
        *bn_params("bn2", 4, rng),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "W"], ["c2"], pads=[1, 1, 1, 1]),
        bn_node("bn1", "c1", "b1"),
        bn_node("bn2", "c2", "b2"),
        helper.make_node("Add", ["b1", "b2"], ["y"]),
    ]
    before = make_model(nodes, {"x": [1, 4, 6, 6]}, ["y"], inits)
    result = fuse(before)
    assert step(result)["status"] == "not_applicable"
    assert step(result)["details"]["batchnorm_left"] == {"shared weights": 2}
    assert ops(result.model.proto)["BatchNormalization"] == 2


def test_bn_whose_input_has_other_consumers_is_left(fuse) -> None:
    rng = np.random.default_rng(6)
    inits = [tensor("W", rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32)), *bn_params("bn", 4, rng)]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        bn_node("bn", "c", "b"),
        helper.make_node("Add", ["b", "c"], ["y"]),  # the raw Conv output is read too
    ]
    result = fuse(make_model(nodes, {"x": [1, 4, 6, 6]}, ["y"], inits))
    assert step(result)["status"] == "not_applicable"
    assert step(result)["details"]["batchnorm_left"] == {"input has other consumers": 1}


def test_bn_after_relu_is_left_and_others_still_fold(fuse) -> None:
    """A BN with no foldable producer stays; a foldable one in the same graph is still folded."""
    rng = np.random.default_rng(7)
    inits = [
        tensor("W", rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32)),
        *bn_params("bn1", 4, rng),
        *bn_params("bn2", 4, rng),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        bn_node("bn1", "c", "b1"),
        helper.make_node("Relu", ["b1"], ["r"]),
        bn_node("bn2", "r", "y"),
    ]
    before = make_model(nodes, {"x": [1, 4, 6, 6]}, ["y"], inits)
    result = fuse(before)
    details = step(result)["details"]
    assert details["batchnorm_folded"] == {"Conv": 1}
    assert details["batchnorm_left"] == {"input not from Conv/ConvTranspose/Gemm/MatMul": 1}
    assert_same_outputs(before, result.model.proto)


def test_constant_node_weights_fold(fuse) -> None:
    """Weights and statistics stored as Constant nodes (common in exports) are treated as initializers."""
    rng = np.random.default_rng(8)
    arrays = {"W": rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32)}
    arrays.update({t.name: np.frombuffer(t.raw_data, np.float32).copy() for t in bn_params("bn", 4, rng)})
    constants = [
        helper.make_node("Constant", [], [name], value=tensor(name, value)) for name, value in arrays.items()
    ]
    nodes = [
        *constants,
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        bn_node("bn", "c", "y"),
    ]
    before = make_model(nodes, {"x": [1, 4, 6, 6]}, ["y"])
    result = fuse(before)
    details = step(result)["details"]
    assert details["constant_nodes_to_initializers"] == 5
    assert details["batchnorm_folded"] == {"Conv": 1}
    assert ops(result.model.proto) == {"Conv": 1}
    assert_same_outputs(before, result.model.proto)
