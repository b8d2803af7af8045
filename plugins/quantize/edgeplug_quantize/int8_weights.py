"""Store the weights of a quantization-aware-trained export as INT8.

tf2onnx folds tfmot's weight fake-quantization into the float weights: they lie on an INT8 grid but are
stored as float32 and fed to Conv/MatMul directly. onnxruntime would then quantize them again, per tensor,
at load time (its WeightBiasQuantization pass), losing tfmot's per-channel scales. Here each such weight
becomes an INT8 initializer behind a DequantizeLinear with the scales recovered from the grid (symmetric,
narrow range, per output channel when the channels differ), which is exact and 4x smaller.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

PACKED_OPS = {"Conv": 0, "MatMul": 1, "Gemm": None}  # op -> output-channel axis of the weight


def on_grid(weight: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(int8 values, scales) when `weight` is exactly a symmetric narrow-range INT8 grid, else None."""
    w = weight.astype(np.float64)
    if axis is None:
        reduce = tuple(range(w.ndim))
        amax = np.abs(w).max(axis=reduce, keepdims=True)
    else:
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=reduce, keepdims=True)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    q = np.round(w / scale)
    if np.abs(q).max() > 127 or np.abs(q * scale - w).max() > 1e-3 * scale.min():
        return None
    return q.astype(np.int8), scale.astype(np.float32).reshape(-1)


def pack_qat_weights(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `proto` with the on-grid float weights of Conv/MatMul/Gemm stored as INT8 + DQ (weights
    off the grid, i.e. not fake-quantized by tfmot, stay float)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    inits = {t.name: t for t in out.graph.initializer}
    users: dict[str, int] = {}
    for node in out.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    packed: list[str] = []
    new_nodes: list[onnx.NodeProto] = []
    for node in out.graph.node:
        axis = PACKED_OPS.get(node.op_type, -1)
        weight = node.input[1] if len(node.input) > 1 else ""
        if node.op_type == "Gemm":
            axis = 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
        if (
            axis == -1
            or weight not in inits
            or users.get(weight, 0) != 1
            or inits[weight].data_type != onnx.TensorProto.FLOAT
        ):
            new_nodes.append(node)
            continue
        array = numpy_helper.to_array(inits[weight])
        found = on_grid(array, axis if array.ndim > 1 else None) or on_grid(array, None)
        if found is None:
            new_nodes.append(node)
            continue
        values, scales = found
        per_channel = scales.size > 1
        names = (f"{weight}_int8", f"{weight}_scale", f"{weight}_zero_point", f"{weight}_dequantized")
        out.graph.initializer.remove(inits[weight])
        out.graph.initializer.extend(
            [
                numpy_helper.from_array(values, names[0]),
                numpy_helper.from_array(scales if per_channel else scales.reshape(()), names[1]),
                numpy_helper.from_array(np.zeros(scales.shape if per_channel else (), np.int8), names[2]),
            ]
        )
        attrs = {"axis": axis} if per_channel else {}
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear", list(names[:3]), [names[3]], name=f"{weight}_DequantizeLinear", **attrs
            )
        )
        node.input[1] = names[3]
        new_nodes.append(node)
        packed.append(node.name or weight)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    return out, packed
