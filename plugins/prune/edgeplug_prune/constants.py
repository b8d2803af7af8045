"""Constant channels: a channel whose filter weights are all zero (or whose BatchNorm scale is zero) holds
the same value at every position for every input (its bias, through BatchNorm, the activation, a depthwise
conv). Removing it must not drop that value: it is folded into the bias of each layer that loses the
channel, so pruning such a channel is exact.

A value is tracked only while it stays exactly constant: through activations evaluated on it, BatchNorm,
pooling, a depthwise conv without padding (or with an all-zero kernel for the channel), residual Adds and
per-channel constant parameters. It is folded only into a consumer that sees no padding (a 1x1 or unpadded
Conv, a Gemm after Flatten); anywhere else the channel is removed as before.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from .channels import ChannelGraph, Edit, Layout, constant_values

# per-channel values of a tensor along its channel axis; NaN where the channel is not constant
Values = np.ndarray

ACTIVATIONS: dict[str, Callable[[np.ndarray, gs.Node], np.ndarray]] = {
    "Relu": lambda v, n: np.maximum(v, 0.0),
    "Identity": lambda v, n: v,
    "Dropout": lambda v, n: v,
    "Sigmoid": lambda v, n: 1.0 / (1.0 + np.exp(-v)),
    "Tanh": lambda v, n: np.tanh(v),
    "LeakyRelu": lambda v, n: np.where(v >= 0, v, v * float(n.attrs.get("alpha", 0.01))),
    "HardSigmoid": lambda v, n: np.clip(
        v * float(n.attrs.get("alpha", 0.2)) + float(n.attrs.get("beta", 0.5)), 0.0, 1.0
    ),
    "HardSwish": lambda v, n: v * np.clip(v / 6.0 + 0.5, 0.0, 1.0),
    "Neg": lambda v, n: -v,
    "Abs": lambda v, n: np.abs(v),
}
SPATIAL_CONSTANT = {"MaxPool", "GlobalAveragePool", "GlobalMaxPool", "Resize", "Upsample"}


def fold_constant_channels(cg: ChannelGraph, kept: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Bias corrections {consumer node name: delta per output channel (original indexing)} that stand in for
    the removed channels which are constant; computed on the unpruned weights."""
    values = _propagate(cg)
    deltas: dict[str, np.ndarray] = {}
    for edit in cg.edits:
        if edit.kind not in ("conv_in", "fc_in"):
            continue
        source = edit.node.inputs[0]
        vector = values.get(source.name)
        if vector is None:
            continue
        removed = _removed(cg, edit.layout, kept)
        constant = removed[np.isfinite(vector[removed])]
        if constant.size == 0:
            continue
        delta = _consumer_delta(edit, constant, vector[constant])
        if delta is not None and np.any(delta):
            deltas[edit.node.name] = deltas.get(edit.node.name, 0) + delta
    return deltas


def apply_bias_deltas(cg: ChannelGraph, deltas: dict[str, np.ndarray]) -> None:
    """Add the corrections to each consumer's bias, giving it its own (or a new, tracked) bias constant."""
    nodes = {n.name: n for n in cg.graph.nodes}
    for name, delta in deltas.items():
        node = nodes[name]
        if len(node.inputs) > 2 and node.inputs[2].name:
            bias = constant_values(node.inputs[2]).astype(np.float64)
            value = (np.broadcast_to(bias.reshape(-1), delta.shape) + delta).reshape(
                bias.shape if bias.size == delta.size else delta.shape
            )
            node.inputs[2] = gs.Constant(f"{node.inputs[2].name}__{name}__folded", value.astype(np.float32))
            continue
        bias = gs.Constant(f"{name}__folded_bias", delta.astype(np.float32))
        if len(node.inputs) > 2:  # an empty optional input
            node.inputs[2] = bias
        else:
            node.inputs.append(bias)
        layout = cg.layouts.get(node.outputs[0].name)
        if layout:  # the consumer's own output channels may be pruned: its new bias follows them
            cg.edits.append(Edit("param", node, 2, 0, layout))


def _removed(cg: ChannelGraph, layout: Layout, kept: dict[int, np.ndarray]) -> np.ndarray:
    parts, offset = [], 0
    for g, size in layout:
        parts.append(np.setdiff1d(np.arange(size), kept[cg.find(g)]) + offset)
        offset += size
    return np.concatenate(parts) if parts else np.arange(0)


def _consumer_delta(edit: Edit, channels: np.ndarray, constant: np.ndarray) -> np.ndarray | None:
    """What the removed constant channels added to each output of the consumer, if that is the same
    everywhere (no padding); None otherwise."""
    node = edit.node
    weight = constant_values(node.inputs[1]).astype(np.float64)
    if node.op == "Conv":
        if not _unpadded(node):
            return None
        taken = weight[:, channels].reshape(weight.shape[0], channels.size, -1).sum(axis=2)
        return taken @ constant
    if node.op != "Gemm" or node.attrs.get("transA", 0):
        return None  # MatMul has no bias to fold into
    rows = (channels[:, None] * edit.block + np.arange(edit.block)[None, :]).ravel()
    values = np.repeat(constant, edit.block)
    per_in = weight[:, rows].T if edit.axis == 1 else weight[rows]
    beta = float(node.attrs.get("beta", 1.0))
    bias = constant_values(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    if beta == 0 or (bias is not None and bias.size not in (1, per_in.shape[1])):
        return None
    return float(node.attrs.get("alpha", 1.0)) / beta * (values @ per_in)


def _unpadded(node: gs.Node) -> bool:
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return True
    return auto == "NOTSET" and not any(int(p) for p in node.attrs.get("pads", ()))


def _propagate(cg: ChannelGraph) -> dict[str, Values]:
    """Per tensor with a channel layout: the value of each constant channel (NaN elsewhere)."""
    values: dict[str, Values] = {}
    for node in cg.graph.nodes:
        out = node.outputs[0] if node.outputs else None
        if out is not None and out.name in cg.flat and node.inputs[0].name in values:
            values[out.name] = values[node.inputs[0].name]  # Flatten: each channel becomes a block
        if out is None or out.name not in cg.layouts:
            continue
        source = values.get(node.inputs[0].name) if node.inputs else None
        values[out.name] = _through(node, source, values, cg)
    return values


def _nan(size: int) -> Values:
    return np.full(size, np.nan)


def _through(node: gs.Node, source: Values | None, values: dict[str, Values], cg: ChannelGraph) -> Values:
    size = sum(s for _, s in cg.layouts[node.outputs[0].name])
    if node.op == "Conv":
        return _conv(node, source, size)
    if node.op == "BatchNormalization":
        gamma, beta, mean, var = (constant_values(t).astype(np.float64) for t in node.inputs[1:5])
        scale = gamma / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
        incoming = source if source is not None else _nan(size)
        with np.errstate(invalid="ignore"):
            return np.where(scale == 0, beta, (incoming - mean) * scale + beta)
    if source is None and node.op != "Concat" and node.op not in ("Add", "Sub", "Mul", "Sum"):
        return _nan(size)
    if node.op in ACTIVATIONS:
        return ACTIVATIONS[node.op](source, node)
    if node.op == "Clip":
        return np.clip(source, *_clip_bounds(node))
    if node.op in SPATIAL_CONSTANT or (node.op == "AveragePool" and _unpadded(node)):
        return source
    if node.op == "Concat":
        parts = [values.get(t.name) for t in node.inputs]
        if any(p is None for p in parts):
            return _nan(size)
        return np.concatenate(parts)
    if node.op in ("Add", "Sub", "Mul", "Sum"):
        return _elementwise(node, values, size)
    return _nan(size)


def _clip_bounds(node: gs.Node) -> tuple[float, float]:
    """Clip's bounds: inputs 1 and 2 (opset 11+) or the min/max attributes; a missing one is unbounded."""
    bounds = [float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))]
    for i in (1, 2):
        if len(node.inputs) > i and node.inputs[i].name:
            value = constant_values(node.inputs[i])
            bounds[i - 1] = np.nan if value is None else float(value)
    return bounds[0], bounds[1]


def _conv(node: gs.Node, source: Values | None, size: int) -> Values:
    weight = constant_values(node.inputs[1]).astype(np.float64)
    bias = (
        constant_values(node.inputs[2]).astype(np.float64)
        if len(node.inputs) > 2 and node.inputs[2].name
        else np.zeros(weight.shape[0])
    )
    flat = weight.reshape(weight.shape[0], -1)
    dead = ~flat.any(axis=1)
    if int(node.attrs.get("group", 1)) == 1:  # a producer: its zero filters output the bias
        return np.where(dead, bias, np.nan)
    incoming = source if source is not None else _nan(size)
    if _unpadded(node):
        return np.where(dead, bias, incoming * flat.sum(axis=1) + bias)
    return np.where(dead, bias, np.nan)


def _per_channel(param: np.ndarray, node: gs.Node, size: int) -> bool:
    """A scalar, or a parameter that varies only along the output's channel axis (axis 1)."""
    if param.size == 1:
        return True
    shape = node.outputs[0].shape
    if param.size != size or not shape:
        return False
    axis = param.ndim - (len(shape) - 1)
    return 0 <= axis < param.ndim and param.shape[axis] == size


def _elementwise(node: gs.Node, values: dict[str, Values], size: int) -> Values:
    operands = []
    for tensor in node.inputs:
        if tensor.name in values:
            operands.append(values[tensor.name])
            continue
        param = constant_values(tensor)
        if param is None or not _per_channel(param, node, size):
            return _nan(size)
        operands.append(np.broadcast_to(param.astype(np.float64).reshape(-1), (size,)))
    if len(operands) < 2 and node.op != "Sum":
        return _nan(size)
    result = operands[0]
    for other in operands[1:]:
        if node.op in ("Add", "Sum"):
            result = result + other
        elif node.op == "Sub":
            result = result - other
        else:
            result = result * other
    return result
