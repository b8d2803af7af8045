"""Structured pruning of an inverted-residual block (MobileNetV2's: 1x1 expand, 3x3 depthwise, 1x1 project,
BatchNorm everywhere, a residual Add) whose removed channels are constant: their filters (or BatchNorm
scales) are zero but their BatchNorm shifts are not. Removing such a channel must keep its value, folded
into the consumers' biases, so the pruned model computes exactly what the original does."""

from __future__ import annotations

from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.prune.conftest import run_onnx

STREAM, HIDDEN, HEAD, CLASSES = 8, 16, 12, 5
# the channels the pruner must choose at sparsity 0.25 (the lowest scores are the zeroed ones)
DEAD = {"stream": [1, 6], "hidden": [0, 5, 9, 14], "head": [3, 7, 10]}


def _block(zero: str) -> onnx.ModelProto:
    """x -> stem Conv3x3+BN+Clip -> [expand 1x1+BN+Clip -> depthwise 3x3+BN+Clip -> project 1x1+BN] + stem
    -> head 1x1+BN+Relu -> GlobalAveragePool -> Flatten -> Gemm. `zero` = "weight": the dead channels' filters
    are zero; "scale": their BatchNorm gamma is. Shifts stay positive, so each dead channel is a constant."""
    rng = np.random.default_rng(0)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def conv_bn(name: str, src: str, cin: int, cout: int, k: int, dead: list[int], group: int = 1) -> str:
        w = rng.standard_normal((cout, cin // group, k, k)) * 0.5
        gamma = rng.uniform(0.5, 1.5, cout)
        if zero == "weight" or group > 1:  # a depthwise kernel is zeroed either way: no padding reaches it
            w[dead] = 0.0
        else:
            gamma[dead] = 0.0
        nodes.append(
            helper.make_node(
                "Conv", [src, const(f"{name}.w", w)], [f"{name}.c"], name=name, group=group, pads=[k // 2] * 4
            )
        )
        bn = [
            const(f"{name}.{p}", v)
            for p, v in [
                ("gamma", gamma),
                ("beta", rng.uniform(0.2, 1.0, cout)),
                ("mean", rng.uniform(-0.3, 0.3, cout)),
                ("var", rng.uniform(0.5, 2.0, cout)),
            ]
        ]
        nodes.append(
            helper.make_node("BatchNormalization", [f"{name}.c", *bn], [f"{name}.bn"], name=f"{name}.norm")
        )
        return f"{name}.bn"

    def relu6(src: str) -> str:
        nodes.append(
            helper.make_node("Clip", [src, const(f"{src}.lo", 0.0), const(f"{src}.hi", 6.0)], [f"{src}.r"])
        )
        return f"{src}.r"

    stem = relu6(conv_bn("stem", "x", 3, STREAM, 3, DEAD["stream"]))
    expand = relu6(conv_bn("expand", stem, STREAM, HIDDEN, 1, DEAD["hidden"]))
    depthwise = relu6(conv_bn("depthwise", expand, HIDDEN, HIDDEN, 3, DEAD["hidden"], group=HIDDEN))
    project = conv_bn("project", depthwise, HIDDEN, STREAM, 1, DEAD["stream"])
    nodes.append(helper.make_node("Add", [stem, project], ["block"], name="residual"))
    head = conv_bn("head", "block", STREAM, HEAD, 1, DEAD["head"])
    nodes += [
        helper.make_node("Relu", [head], ["head.r"]),
        helper.make_node("GlobalAveragePool", ["head.r"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node(
            "Gemm",
            ["flat", const("fc.w", rng.standard_normal((CLASSES, HEAD))), const("fc.b", np.zeros(CLASSES))],
            ["y"],
            name="fc",
            transB=1,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "inverted_residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, CLASSES])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("zero", "criterion"), [("weight", "l1"), ("scale", "bn")])
def test_pruning_constant_channels_of_an_inverted_residual_block_is_exact(
    zero: str, criterion: str, tmp_path: Path
) -> None:
    proto = _block(zero)
    path = tmp_path / "block.onnx"
    onnx.save(proto, path)
    options = {
        "mode": "structured",
        "sparsity": 0.25,
        "criterion": criterion,
        "reconstruct": False,
        "skip_first_last": False,
        "min_cosine": 0.0,
    }
    result = edgeplug.optimize(path, ["prune"], output_dir=tmp_path / "out", options={"prune": options})
    step = result.report["steps"][0]
    assert step["status"] == "applied"
    kept = {g["channels"]: g["kept"] for g in step["details"]["groups"]}
    assert kept == {STREAM: 6, HIDDEN: 12, HEAD: 9, CLASSES: CLASSES}  # the residual stream pruned as one
    pruned = onnx.load(result.output_dir / path.name)
    onnx.checker.check_model(pruned, full_check=True)
    convs = {n.name: n for n in pruned.graph.node if n.op_type == "Conv"}
    assert next(a.i for a in convs["depthwise"].attribute if a.name == "group") == HIDDEN - 4
    feed = {"x": np.random.default_rng(1).standard_normal((2, 3, 10, 10)).astype(np.float32) * 2}
    want = run_onnx(proto.SerializeToString(), feed)[0]
    got = run_onnx(pruned.SerializeToString(), feed)[0]
    assert np.abs(want).max() > 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
