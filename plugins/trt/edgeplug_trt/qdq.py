"""Checks of a Q/DQ (explicitly quantized) model against what TensorRT's INT8 path accepts:
signed int8, symmetric (every zero point 0): what a quantizing step emits for a target that declares
symmetric-int8 (capabilities.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from edgeplug import PluginError
from onnx import TensorProto, numpy_helper

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _constants(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    table = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    table[node.output[0]] = attr.t
    return table


def _quantized_type(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> int | None:
    """The integer type of the node's quantized side, from its zero point, its int input or its attribute."""
    if len(node.input) > 2 and node.input[2] in consts:
        return consts[node.input[2]].data_type
    if node.op_type == "DequantizeLinear" and node.input[0] in consts:
        return consts[node.input[0]].data_type
    for attr in node.attribute:
        if attr.name == "output_dtype" and attr.i:
            return attr.i
    return TensorProto.UINT8 if node.op_type == "QuantizeLinear" else None


def qdq_summary(proto: onnx.ModelProto) -> dict[str, Any]:
    """Counts of Q/DQ nodes and the nodes that break TensorRT's rules (non-int8 type, non-zero zero point)."""
    consts = _constants(proto)
    nodes = [n for n in proto.graph.node if n.op_type in QDQ_OPS]
    wrong_type, int32_biases, nonzero = [], [], []
    for node in nodes:
        name = node.name or f"<unnamed {node.op_type}>"
        dtype = _quantized_type(node, consts)
        if dtype == TensorProto.INT32 and node.op_type == "DequantizeLinear" and node.input[0] in consts:
            int32_biases.append(name)
        elif dtype is not None and dtype != TensorProto.INT8:
            wrong_type.append(f"{name} ({TensorProto.DataType.Name(dtype).lower()})")
        if len(node.input) > 2 and node.input[2]:
            zp = consts.get(node.input[2])
            if zp is None:
                nonzero.append(f"{name} (computed zero point)")
            elif np.any(numpy_helper.to_array(zp) != 0):
                nonzero.append(name)
    return {
        "quantize_nodes": sum(n.op_type == "QuantizeLinear" for n in nodes),
        "dequantize_nodes": sum(n.op_type == "DequantizeLinear" for n in nodes),
        "not_int8": wrong_type,
        "int32_biases": int32_biases,
        "nonzero_zero_points": nonzero,
    }


def fold_int32_bias_dequantize(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Replace DequantizeLinear(int32 constant) -- the biases onnxruntime's quantizer stores as int32 -- by
    the float constant it computes: TensorRT's DequantizeLinear takes int8 (and fp8/int4) only, and adds a
    float bias to an INT8 convolution itself. Same arithmetic as onnxruntime: (x - zero_point) * scale."""
    new = onnx.ModelProto()
    new.CopyFrom(proto)
    consts = {t.name: t for t in new.graph.initializer}
    kept, folded, tensors = [], [], []
    for node in new.graph.node:
        if not _is_int32_constant_dequantize(node, consts):
            kept.append(node)
            continue
        x = numpy_helper.to_array(consts[node.input[0]]).astype(np.int64)
        scale = numpy_helper.to_array(consts[node.input[1]])
        zero = numpy_helper.to_array(consts[node.input[2]]).astype(np.int64) if _has_input(node, 2) else 0
        if scale.ndim == 1 and scale.size > 1 and x.ndim > 1:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % x.ndim
            shape = [1] * x.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zero = zero.reshape(shape) if np.ndim(zero) else zero
        value = ((x - zero).astype(scale.dtype) * scale).astype(scale.dtype)
        tensors.append(numpy_helper.from_array(value, node.output[0]))
        folded.append(node.name or node.output[0])
    if folded:
        del new.graph.node[:]
        new.graph.node.extend(kept)
        new.graph.initializer.extend(tensors)
        used = {i for n in new.graph.node for i in n.input} | {o.name for o in new.graph.output}
        unused = [t for t in new.graph.initializer if t.name not in used]
        for tensor in unused:
            new.graph.initializer.remove(tensor)
    return new, folded


def _has_input(node: onnx.NodeProto, index: int) -> bool:
    return len(node.input) > index and bool(node.input[index])


def _is_int32_constant_dequantize(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> bool:
    if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return False
    if any(a.name == "block_size" and a.i for a in node.attribute):
        return False
    inputs_constant = all(node.input[i] in consts for i in range(len(node.input)) if node.input[i])
    return (
        inputs_constant
        and consts.get(node.input[0]) is not None
        and (consts[node.input[0]].data_type == TensorProto.INT32)
    )


def require_int8_qdq(proto: onnx.ModelProto, int32_biases_folded_later: bool = False) -> dict[str, Any]:
    """The summary, or PluginError with one sentence when the model cannot drive an INT8 engine.
    `int32_biases_folded_later`: accept int32 bias DequantizeLinear nodes the preparation will fold."""
    summary = qdq_summary(proto)
    if not summary["quantize_nodes"] and not summary["dequantize_nodes"]:
        raise PluginError(
            "trt: precision=int8 needs a Q/DQ model (explicit quantization; implicit calibration is deprecated "
            "since TensorRT 10.1): give a Q/DQ model, or put a step that produces int8 Q/DQ "
            "(QuantizeLinear/DequantizeLinear) before trt"
        )
    if summary["not_int8"]:
        raise PluginError(
            f"trt: TensorRT's INT8 path needs signed int8 Q/DQ, but {_few(summary['not_int8'])} use another type; "
            "quantize symmetrically to s8 (trt declares a symmetric-int8 target, so a quantizing step before "
            "it in the chain emits that)"
        )
    if summary["int32_biases"] and not int32_biases_folded_later:
        raise PluginError(
            f"trt: TensorRT's DequantizeLinear takes int8, not the int32 biases of {_few(summary['int32_biases'])}; "
            "let trt's preparation fold them (put trt after the step that quantizes) or quantize with "
            "QuantizeBias=False"
        )
    if summary["nonzero_zero_points"]:
        raise PluginError(
            f"trt: TensorRT needs symmetric quantization (zero points 0), but {_few(summary['nonzero_zero_points'])} "
            "have non-zero zero points; quantize symmetrically (trt declares a symmetric-int8 target, so a "
            "quantizing step before it in the chain emits that)"
        )
    return summary


def _few(items: list[str]) -> str:
    head = ", ".join(items[:3])
    return f"{head} and {len(items) - 3} more" if len(items) > 3 else head
