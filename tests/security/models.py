"""Small hostile ONNX models for the isolation tests, built with onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def looping_model(path: Path) -> Path:
    """x [N,16], n [1] int64 -> a Loop of n iterations of state = tanh(state @ W): real work per iteration;
    n = 2**62 never ends, n = 3 answers at once (same model, so the next request can succeed)."""
    weight = numpy_helper.from_array(
        (np.random.default_rng(0).standard_normal((16, 16)) * 0.3).astype(np.float32), "W"
    )
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["state_in", "W"], ["mm"]),
            helper.make_node("Tanh", ["mm"], ["state_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, ["N", 16]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, ["N", 16]),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Squeeze", ["n"], ["trip"]),
            helper.make_node("Loop", ["trip", "cond", "x"], ["y"], body=body),
        ],
        "loop",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]),
            helper.make_tensor_value_info("n", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [numpy_helper.from_array(np.array(True), "cond"), weight],
    )
    return _save(graph, path)


def loop_reference(x: np.ndarray, n: int) -> np.ndarray:
    weight = (np.random.default_rng(0).standard_normal((16, 16)) * 0.3).astype(np.float32)
    for _ in range(n):
        x = np.tanh(x @ weight)
    return x


def allocating_model(path: Path) -> Path:
    """x [N,1], width [1] int64 -> ReduceSum(Expand(x, [N, width])): allocates N * width floats at run time
    (width 2**28: 1 GiB per sample), from input-dependent shapes, so nothing is folded at load time."""
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["xs"], start=0, end=1),
            helper.make_node("Concat", ["xs", "width"], ["shape"], axis=0),
            helper.make_node("Expand", ["x", "shape"], ["big"]),
            helper.make_node("ReduceSum", ["big", "axes"], ["y"], keepdims=1),
        ],
        "alloc",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("width", TensorProto.INT64, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    return _save(graph, path)


def small_model(path: Path) -> Path:
    """x [N,16] -> Tanh(x @ W): a well-behaved model to check the worker serves the next request."""
    weight = numpy_helper.from_array(np.eye(16, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["mm"]), helper.make_node("Tanh", ["mm"], ["y"])],
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [weight],
    )
    return _save(graph, path)
