"""target=onnxruntime: Conv(+BN)+activation -> com.microsoft FusedConv; target=onnx stays standard ONNX."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from .graphs import assert_same_outputs, bn_node, bn_params, domains, make_model, ops, step, tensor


def conv_bn_act(
    op: str, attrs: dict | None = None, extra_inputs: list[str] = (), inits_extra=(), opset: int = 17
) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        tensor("W", rng.normal(0, 0.5, (6, 3, 3, 3)).astype(np.float32)),
        *bn_params("bn", 6, rng),
        *inits_extra,
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        bn_node("bn", "c", "b"),
        helper.make_node(op, ["b", *extra_inputs], ["y"], **(attrs or {})),
    ]
    return make_model(nodes, {"x": [1, 3, 8, 8]}, ["y"], inits, opset=opset)


def _float(name: str, value: float) -> onnx.TensorProto:
    return tensor(name, np.array(value, np.float32))


CASES = {
    "Relu": (conv_bn_act("Relu"), "Relu", []),
    "ReLU6": (
        conv_bn_act("Clip", extra_inputs=["lo", "hi"], inits_extra=[_float("lo", 0.0), _float("hi", 6.0)]),
        "Clip",
        [0.0, 6.0],
    ),
    "Clip-max-only": (
        conv_bn_act("Clip", extra_inputs=["", "hi"], inits_extra=[_float("hi", 0.5)]),
        "Clip",
        [-float(np.finfo(np.float32).max), 0.5],
    ),
    "LeakyRelu": (conv_bn_act("LeakyRelu", {"alpha": 0.2}), "LeakyRelu", [0.2]),
    "HardSigmoid": (conv_bn_act("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), "HardSigmoid", [0.3, 0.4]),
    "Sigmoid": (conv_bn_act("Sigmoid"), "Sigmoid", []),
    "Tanh": (conv_bn_act("Tanh"), "Tanh", []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_activation_fused_into_fusedconv(fuse, case: str) -> None:
    before, activation, params = CASES[case]
    result = fuse(before, target="onnxruntime")
    after = result.model.proto
    details = step(result)["details"]
    assert details["activations_fused"] == {activation: 1}
    assert details["batchnorm_folded"] == {"Conv": 1}
    (node,) = after.graph.node
    assert (node.op_type, node.domain, node.output[0]) == ("FusedConv", "com.microsoft", "y")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["activation"] == activation.encode()
    np.testing.assert_allclose(attrs.get("activation_params", []), params, rtol=1e-6)
    assert any(o.domain == "com.microsoft" for o in after.opset_import)
    assert_same_outputs(before, after)


@pytest.mark.parametrize("case", ["Relu", "ReLU6", "HardSigmoid"])
def test_target_onnx_stays_standard(fuse, case: str) -> None:
    before, _, _ = CASES[case]
    result = fuse(before)
    after = result.model.proto
    assert domains(after) <= {""}
    assert "activations_fused" not in step(result)["details"]
    assert ops(after)["BatchNormalization"] == 0 and ops(after)["Conv"] == 1


def test_activation_with_a_second_reader_is_not_fused(fuse) -> None:
    """Conv output read by Relu and by an Add (a residual): FusedConv would lose the raw output."""
    rng = np.random.default_rng(1)
    inits = [tensor("W", rng.normal(0, 0.5, (3, 3, 3, 3)).astype(np.float32))]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Add", ["r", "c"], ["y"]),
    ]
    result = fuse(make_model(nodes, {"x": [1, 3, 5, 5]}, ["y"], inits), target="onnxruntime")
    assert step(result)["status"] == "not_applicable"


def test_clip_with_computed_bounds_is_not_fused(fuse) -> None:
    """Clip bounds that are not constants cannot become activation_params."""
    before = make_model(
        [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Clip", ["c", "lo"], ["y"])],
        {"x": [1, 3, 5, 5], "lo": []},
        ["y"],
        [tensor("W", np.ones((3, 3, 1, 1), np.float32))],
    )
    assert step(fuse(before, target="onnxruntime"))["status"] == "not_applicable"
