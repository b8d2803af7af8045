"""Whether a model's structure is valid (onnx.checker's full check, which runs strict shape inference), at a
cost that does not grow with its weights: the core checks every step's model with it, and a plugin may
check its own rewrites the same way (`edgeplug.plugin_api.structure_problem`)."""

from __future__ import annotations

import onnx

# Initializers moved out of the checked copy: floating-point weights over 1 KiB, anything over 64 KiB.
# Small integer tensors stay, since shape inference reads their values (Reshape shapes, Slice starts).
FLOAT_WEIGHT_BYTES = 1 << 10
ANY_WEIGHT_BYTES = 1 << 16
_FLOATS = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.BFLOAT16,
    }
)


def structure_problem(proto: onnx.ModelProto) -> str | None:
    """None when `proto` passes onnx.checker with full_check, else the checker's first line.

    The check runs on a copy whose large weights are graph inputs of the same type and shape: the checker
    and shape inference see the same graph, and the weights are not copied (ResNet-50: 0.1 s instead of
    3 s for the full model)."""
    try:
        onnx.checker.check_model(weightless(proto), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, and whatever else the checker raises
        lines = str(exc).strip().splitlines()
        return lines[0] if lines else type(exc).__name__
    return None


def weightless(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` with its large initializers turned into graph inputs of the same type and shape."""
    light = onnx.ModelProto(
        ir_version=proto.ir_version,
        producer_name=proto.producer_name,
        domain=proto.domain,
        model_version=proto.model_version,
    )
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    source, graph = proto.graph, light.graph
    graph.name = source.name
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    graph.sparse_initializer.extend(source.sparse_initializer)
    declared = {value.name for value in source.input}
    for tensor in source.initializer:
        size = _nbytes(tensor)
        if size > ANY_WEIGHT_BYTES or (size > FLOAT_WEIGHT_BYTES and tensor.data_type in _FLOATS):
            if tensor.name not in declared:
                graph.input.append(
                    onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
                )
        else:
            graph.initializer.append(tensor)
    return light


def _nbytes(tensor: onnx.TensorProto) -> int:
    """The tensor's size from its dims and type (reading raw_data would copy the bytes)."""
    count = 1
    for dim in tensor.dims:
        count *= dim
    try:
        return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):  # strings and types numpy has no size for: keep them
        return 0
