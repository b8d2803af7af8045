"""Models for the trt tests: a QDQ model made with onnxruntime's quantize_static, and small real graphs
with operators TensorRT's parser lacks or with int64 values outside int32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import quantize_example as shared_quantize_example


def quantize_example(
    model: Path, train: Path, out: Path, symmetric: bool = True, signed: bool = True
) -> Path:
    """quantize_static in QDQ format: symmetric s8 (what TensorRT needs) by default; asymmetric and/or u8
    activations (onnxruntime's own default) to test the refusals. TensorRT's DequantizeLinear takes int8
    only, so biases stay float."""
    return shared_quantize_example(
        out,
        model,
        samples=np.load(train)["input"][:64],
        per_channel=False,
        activations="s8" if signed else "u8",
        symmetric=symmetric,
        quantize_bias=False,
    )


def with_det(batch: str = "N") -> onnx.ModelProto:
    """Relu -> Det (marked N in the TensorRT matrix) -> Unsqueeze: runs in onnxruntime, not in TensorRT."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Det", ["r"], ["d"], name="determinant"),
        helper.make_node("Unsqueeze", ["d", "axes"], ["y"], name="unsqueeze"),
    ]
    graph = helper.make_graph(
        nodes,
        "with_det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 1])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def with_custom_op(domain: str = "com.example.trt") -> onnx.ModelProto:
    """MatMul -> Gelu of a custom domain (a TensorRT plugin's op; with com.microsoft, an onnxruntime contrib op)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
        helper.make_node("Gelu", ["h"], ["y"], name="ms_gelu", domain=domain),
    ]
    graph = helper.make_graph(
        nodes,
        "with_custom_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
        [numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "w")],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
    )


def slice_to_end() -> onnx.ModelProto:
    """Slice with ends = INT64_MAX (how exporters write 'to the end') plus a Gather with int64 indices."""
    nodes = [
        helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["s"], name="slice"),
        helper.make_node("Gather", ["s", "idx"], ["y"], axis=1, name="gather"),
    ]
    inits = [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([np.iinfo(np.int64).max], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array([0, 2], dtype=np.int64), "idx"),
    ]
    graph = helper.make_graph(
        nodes,
        "slice_to_end",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
