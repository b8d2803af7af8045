"""Storing pruned weights sparsely, and the raw / gzip size of a model.

A SparseTensorProto with int64 linear indices costs 8 + itemsize bytes per non-zero, so it is
smaller than the dense tensor only above ~67% sparsity for float32. onnx.checker's full check
(which edgeplug runs on every model it loads) types a graph-level `sparse_initializer` as a sparse
tensor and then refuses it as the input of Conv/Gemm/MatMul, so sparse weights are stored as
`Constant` nodes with a `sparse_value` attribute: that passes the full check, and onnxruntime
turns them into dense initializers when it loads the model, exactly as it does sparse initializers.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

INDEX_BYTES = 8  # SparseTensorProto indices must be int64


def sizes(proto: onnx.ModelProto) -> dict[str, int]:
    """Serialized size and its gzip size (what a compressed download or OTA update costs)."""
    raw = proto.SerializeToString()
    return {"raw_bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, compresslevel=9, mtime=0))}


def sparse_bytes(array: np.ndarray) -> int:
    nnz = int(np.count_nonzero(array))
    return nnz * (array.dtype.itemsize + INDEX_BYTES)


def to_sparse(proto: onnx.ModelProto, names: Iterable[str]) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """A copy of `proto` where each named initializer that is smaller sparse becomes a sparse Constant node."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    wanted = set(names)
    graph = out.graph
    converted: list[dict[str, Any]] = []
    keep: list[onnx.TensorProto] = []
    constants: list[onnx.NodeProto] = []
    for tensor in graph.initializer:
        if tensor.name not in wanted:
            keep.append(tensor)
            continue
        array = numpy_helper.to_array(tensor)
        dense = array.nbytes
        sparse = sparse_bytes(array)
        if sparse >= dense:
            keep.append(tensor)
            continue
        flat = array.ravel()
        index = np.flatnonzero(flat).astype(np.int64)
        values = numpy_helper.from_array(flat[index], tensor.name)
        indices = numpy_helper.from_array(index, f"{tensor.name}__indices")
        value = helper.make_sparse_tensor(values, indices, list(array.shape))
        constants.append(
            helper.make_node("Constant", [], [tensor.name], name=f"{tensor.name}__sparse", sparse_value=value)
        )
        converted.append(
            {
                "weight": tensor.name,
                "dense_bytes": dense,
                "sparse_bytes": sparse,
                "nonzero": int(index.size),
                "size": int(array.size),
            }
        )
    if not constants:
        return out, []
    del graph.initializer[:]
    graph.initializer.extend(keep)
    moved = {c.output[0] for c in constants}
    inputs = [i for i in graph.input if i.name not in moved]
    del graph.input[:]
    graph.input.extend(inputs)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(constants + nodes)
    return out, converted


def has_sparse_constants(proto: onnx.ModelProto) -> bool:
    return any(
        n.op_type == "Constant" and any(a.name == "sparse_value" for a in n.attribute)
        for n in proto.graph.node
    )


def densify(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every sparse Constant turned back into a dense initializer (for tools that need dense)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    nodes = []
    for node in out.graph.node:
        attr = next((a for a in node.attribute if a.name == "sparse_value"), None)
        if node.op_type == "Constant" and attr is not None:
            sparse = attr.sparse_tensor
            values = numpy_helper.to_array(sparse.values)
            index = numpy_helper.to_array(sparse.indices)
            dense = np.zeros(int(np.prod(sparse.dims)), dtype=values.dtype)
            if index.ndim == 2:
                index = np.ravel_multi_index(tuple(index.T), tuple(sparse.dims))
            dense[index.astype(np.int64)] = values.ravel()
            out.graph.initializer.append(
                numpy_helper.from_array(dense.reshape(tuple(sparse.dims)), node.output[0])
            )
        else:
            nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out
