"""Per-layer parameters and FLOPs of Conv, Gemm and MatMul nodes, before and after pruning."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper


def layer_costs(proto: onnx.ModelProto) -> dict[str, dict[str, Any]]:
    """Per weighted node (by name): op, parameters, non-zero parameters, output channels and FLOPs
    (2 x multiply-accumulates at batch 1, dense: what a dense kernel computes)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # FLOPs are then reported as unknown
        inferred = proto
    dims: dict[str, list[int]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        dims[vi.name] = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
            for d in vi.type.tensor_type.shape.dim
        ]
    consts = {t.name: t for t in proto.graph.initializer}
    arrays: dict[str, np.ndarray] = {}

    def value(name: str) -> np.ndarray | None:
        if name in arrays:
            return arrays[name]
        if name in consts:
            arrays[name] = numpy_helper.to_array(consts[name])
            return arrays[name]
        return None

    for node in proto.graph.node:  # sparse Constant weights (storage=sparse)
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "sparse_value":
            sparse = node.attribute[0].sparse_tensor
            dense = np.zeros(int(np.prod(sparse.dims)), dtype=np.float32)
            dense[numpy_helper.to_array(sparse.indices).astype(np.int64)] = numpy_helper.to_array(
                sparse.values
            )
            arrays[node.output[0]] = dense.reshape(tuple(sparse.dims))
    costs: dict[str, dict[str, Any]] = {}
    for index, node in enumerate(proto.graph.node):
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        weight = value(node.input[1])
        if weight is None:
            continue
        bias = value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        params = weight.size + (bias.size if bias is not None else 0)
        nonzero = int(np.count_nonzero(weight)) + (int(np.count_nonzero(bias)) if bias is not None else 0)
        out_shape = dims.get(node.output[0])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        macs = None
        if node.op_type == "Conv":
            channels = int(weight.shape[0])
            if out_shape:
                macs = int(np.prod(out_shape[1:])) * int(np.prod(weight.shape[1:]))
        elif node.op_type == "Gemm":
            channels = int(weight.shape[0] if attrs.get("transB", 0) else weight.shape[1])
            macs = int(weight.size)
        else:
            channels = int(weight.shape[-1])
            if out_shape:
                macs = int(np.prod(out_shape[1:-1] or [1])) * int(weight.size)
        costs[node.name or f"{node.op_type}_{index}"] = {
            "op": node.op_type,
            "parameters": int(params),
            "nonzero_parameters": nonzero,
            "channels": channels,
            "flops": 2 * macs if macs is not None else None,
        }
    return costs


def compare_layers(before: onnx.ModelProto, after: onnx.ModelProto) -> list[dict[str, Any]]:
    """One row per weighted layer: sparsity, channels kept, parameters and FLOPs before/after."""
    old, new = layer_costs(before), layer_costs(after)
    rows = []
    for name, a in old.items():
        b = new.get(name)
        if b is None:
            continue
        density = b["nonzero_parameters"] / max(b["parameters"], 1)
        rows.append(
            {
                "layer": name,
                "op": a["op"],
                "sparsity": round(1.0 - b["nonzero_parameters"] / a["parameters"], 6)
                if a["parameters"]
                else 0.0,
                "channels_before": a["channels"],
                "channels_kept": b["channels"],
                "parameters_before": a["parameters"],
                "parameters_after": b["parameters"],
                "nonzero_parameters_after": b["nonzero_parameters"],
                "flops_before": a["flops"],
                "flops_after": b["flops"],
                "nonzero_flops_after": round(b["flops"] * density) if b["flops"] is not None else None,
            }
        )
    return rows


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over the layer rows, and the ratios a user reads first."""
    keys = (
        "parameters_before",
        "parameters_after",
        "nonzero_parameters_after",
        "flops_before",
        "flops_after",
        "nonzero_flops_after",
    )
    sums = {k: sum(r[k] or 0 for r in rows) for k in keys}
    sums["parameter_ratio"] = round(sums["parameters_before"] / max(sums["parameters_after"], 1), 4)
    sums["flop_ratio"] = round(sums["flops_before"] / max(sums["flops_after"], 1), 4)
    before = sums["parameters_before"]
    sums["sparsity"] = round(1 - sums["nonzero_parameters_after"] / before, 6) if before else 0.0
    return sums
