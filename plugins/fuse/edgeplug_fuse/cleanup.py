"""Exact clean-ups: Constant nodes to initializers, Identity/Dropout removal, MatMul+Add to Gemm, and
merging of initializers with identical contents (constant folding is in folding.py)."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_graphsurgeon as gs

from .patterns import (
    constant,
    is_omitted,
    is_output,
    is_rewritable,
    move_output,
    nodes_of,
    producer,
    replace_uses,
    reviewed,
    sole_consumer,
)

# Constant-node attributes and how their value becomes an array (onnx Constant, opset 12+ forms included).
_CONSTANT_ATTRS = {
    "value": lambda v: np.asarray(v.values),
    "value_float": lambda v: np.asarray(v, dtype=np.float32),
    "value_floats": lambda v: np.asarray(v, dtype=np.float32),
    "value_int": lambda v: np.asarray(v, dtype=np.int64),
    "value_ints": lambda v: np.asarray(v, dtype=np.int64),
}


# numpy kinds an initializer round-trips exactly: bool, signed/unsigned integers, floating point, complex
_PLAIN_KINDS = frozenset("biufc")


def constant_nodes_to_initializers(graph: gs.Graph) -> int:
    """Turn the outputs of Constant nodes into initializers (graphsurgeon Constants); returns the count."""
    count = 0
    for node in nodes_of(graph, "Constant"):
        out = node.outputs[0]
        if len(node.attrs) != 1 or is_output(graph, out):
            continue
        ((key, value),) = node.attrs.items()
        if key not in _CONSTANT_ATTRS or isinstance(value, gs.Node.AttributeRef):
            continue  # sparse_value, string values and a function's attribute references stay as they are
        values = _CONSTANT_ATTRS[key](value)
        if values.dtype.kind not in _PLAIN_KINDS:
            continue  # float8/float4/int4 and other types numpy holds only as stand-ins
        node.outputs.clear()
        out.to_constant(values)
        count += 1
    return count


def _dropout_is_identity(node: gs.Node) -> bool:
    """Dropout is the identity at inference unless its training_mode input is set (opset 12+)."""
    if len(node.inputs) > 2 and not is_omitted(node.inputs[2]):
        mode = constant(node.inputs[2])
        if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
            return False
    return len(node.outputs) < 2 or is_omitted(node.outputs[1]) or not node.outputs[1].outputs


def remove_passthrough(graph: gs.Graph) -> dict[str, int]:
    """Remove Identity and inference-mode Dropout nodes, keeping every graph output name."""
    removed = {"Identity": 0, "Dropout": 0}
    for node in nodes_of(graph, "Identity", "Dropout"):
        if node.op == "Dropout" and (
            not _dropout_is_identity(node) or any(is_output(graph, t) for t in node.outputs[1:])
        ):
            continue
        source, out = node.inputs[0], node.outputs[0]
        if is_output(graph, out):
            # the output name must stay: make the source's producer write it directly
            prod = producer(source)
            if prod is None or sole_consumer(graph, source) is not node:
                continue
            index = next(i for i, t in enumerate(prod.outputs) if t is source)
            node.inputs.clear()
            move_output(node, prod, index)
        else:
            replace_uses(graph, out, source)
            node.inputs.clear()
            node.outputs.clear()
        removed[node.op] += 1
    return removed


def matmul_add_to_gemm(graph: gs.Graph) -> int:
    """MatMul(A, B) + C -> Gemm(A, B, C) where A is 2-D, B a 2-D constant and C a constant bias row."""
    count = 0
    if not reviewed(graph, "Gemm"):
        return 0
    for matmul in nodes_of(graph, "MatMul"):
        a, b = matmul.inputs[0], matmul.inputs[1]
        weights = constant(b)
        if weights is None or weights.ndim != 2 or weights.dtype.kind != "f":
            continue
        if a.shape is None or len(a.shape) != 2:
            continue
        add = sole_consumer(graph, matmul.outputs[0])
        if add is None or not is_rewritable(graph, add, "Add") or len(add.inputs) != 2:
            continue
        other = add.inputs[1] if add.inputs[0] is matmul.outputs[0] else add.inputs[0]
        bias = constant(other)
        if bias is None or bias.dtype != weights.dtype or not _is_bias_row(bias, weights.shape[1]):
            continue
        gemm = gs.Node("Gemm", name=matmul.name, inputs=[a, b, other], outputs=[])
        graph.nodes.append(gemm)
        matmul.inputs.clear()
        matmul.outputs.clear()
        add.inputs.clear()
        move_output(add, gemm)
        count += 1
    return count


def _is_bias_row(bias: np.ndarray, n: int) -> bool:
    """A C that Gemm broadcasts exactly like Add would: scalar, [N], [1, N] (or 1 in place of N)."""
    if bias.ndim == 0:
        return True
    if bias.ndim == 1:
        return bias.shape[0] in (1, n)
    return bias.ndim == 2 and bias.shape[0] == 1 and bias.shape[1] in (1, n)


def merge_duplicate_initializers(graph: gs.Graph) -> int:
    """Point readers of initializers with identical dtype, shape and bytes at one of them; returns merges."""
    canonical: dict[tuple[str, tuple[int, ...], str], gs.Constant] = {}
    keys: dict[int, tuple[str, tuple[int, ...], str]] = {}
    merged: set[str] = set()
    for node in graph.nodes:
        for index, tensor in enumerate(node.inputs):
            if not isinstance(tensor, gs.Constant):
                continue
            if id(tensor) not in keys:
                values = np.asarray(tensor.values)  # not ascontiguousarray: it makes scalars 1-D
                keys[id(tensor)] = (
                    values.dtype.str,
                    values.shape,
                    hashlib.sha256(values.tobytes()).hexdigest(),
                )
            first = canonical.setdefault(keys[id(tensor)], tensor)
            if first is not tensor:
                node.inputs[index] = first
                merged.add(tensor.name)
    return len(merged)
