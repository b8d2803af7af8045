"""Helpers for the fuse tests: build small ONNX graphs, compare models on unoptimized onnxruntime."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

RTOL, ATOL = 1e-4, 1e-5


def tensor(name: str, values: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values), name)


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, list[int]],
    outputs: list[str],
    initializers: list[onnx.TensorProto] = (),
    opset: int = 17,
) -> onnx.ModelProto:
    """A float32 model; outputs are left untyped for shape inference to fill."""
    graph = helper.make_graph(
        nodes,
        "fuse_test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7  # readable by every onnxruntime in use, opsets 11..17 included
    return onnx.shape_inference.infer_shapes(model)


def bn_params(prefix: str, channels: int, rng: np.random.Generator) -> list[onnx.TensorProto]:
    """scale, bias, mean, var initializers with non-trivial values."""
    return [
        tensor(f"{prefix}_scale", rng.uniform(0.5, 1.5, channels).astype(np.float32)),
        tensor(f"{prefix}_bias", rng.normal(0, 0.3, channels).astype(np.float32)),
        tensor(f"{prefix}_mean", rng.normal(0, 0.3, channels).astype(np.float32)),
        tensor(f"{prefix}_var", rng.uniform(0.2, 2.0, channels).astype(np.float32)),
    ]


def bn_node(prefix: str, x: str, y: str, **attrs: Any) -> onnx.NodeProto:
    names = [f"{prefix}_{p}" for p in ("scale", "bias", "mean", "var")]
    return helper.make_node("BatchNormalization", [x, *names], [y], name=prefix, **attrs)


def ops(proto: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in proto.graph.node)


def domains(proto: onnx.ModelProto) -> set[str]:
    return {n.domain for n in proto.graph.node}


def feeds_for(proto: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    init = {t.name for t in proto.graph.initializer}
    result = {}
    for value in proto.graph.input:
        if value.name in init:
            continue
        dims = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        result[value.name] = rng.normal(0, 1, dims).astype(np.float32)
    return result


def run_unoptimized(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime with every graph optimization off, so that its own fusions do not hide ours."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, seeds: int = 3) -> None:
    """Same output names and values within the exact tolerance, on unoptimized onnxruntime sessions."""
    assert [o.name for o in after.graph.output] == [o.name for o in before.graph.output]
    for seed in range(seeds):
        feeds = feeds_for(before, seed)
        ref, got = run_unoptimized(before, feeds), run_unoptimized(after, feeds)
        for name, value in ref.items():
            np.testing.assert_allclose(got[name], value, rtol=RTOL, atol=ATOL, err_msg=name)


def step(result: Any) -> dict[str, Any]:
    """The fuse step's entry of the report."""
    (entry,) = result.report["steps"]
    return entry
