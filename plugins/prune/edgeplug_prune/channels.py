"""Channel dependency analysis for structured pruning, on an onnx-graphsurgeon graph.

Every Conv (group 1) output starts a channel *group*, and so does every 2-D Gemm/MatMul output (MLP
hidden units). Channels flow unchanged through BatchNorm,
activations, pooling and depthwise convolutions; elementwise ops (residual Add, SE Mul) join the
groups of their inputs (union-find), so a residual stream keeps the same channel indices in every
block it joins; Concat lays groups side by side (its consumers see offsets); Flatten hands the
channels to a Gemm/MatMul as blocks of H*W features. A group that reaches anything else (a graph
output, Reshape, Transpose, an unknown op) is *blocked*: its channels stay.

The result is a list of edits (which axis of which constant follows which channels), applied by
`structured.py` once the kept channels of every group are chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

# (group id, channel count) segments along the channel axis of a tensor
Layout = tuple[tuple[int, int], ...]

CHANNEL_PRESERVING = {
    "Relu",
    "Clip",
    "Sigmoid",
    "Tanh",
    "LeakyRelu",
    "HardSigmoid",
    "HardSwish",
    "Elu",
    "Selu",
    "Softplus",
    "Softsign",
    "Identity",
    "Dropout",
    "Neg",
    "Abs",
    "Erf",
    "Gelu",
    "Mish",
    "Celu",
    "ThresholdedRelu",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "LpPool",
    "Upsample",
}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "PRelu", "Pow", "Where"}
NORMALIZATION = {"BatchNormalization", "InstanceNormalization"}


@dataclass
class Edit:
    """One constant that follows channels: `node.inputs[index]` indexed along `axis` by the kept channels
    of `layout` (each channel spans `block` consecutive entries, H*W after a Flatten)."""

    kind: str  # conv_out, conv_in, depthwise, param, fc_in, fc_out
    node: gs.Node
    index: int
    axis: int
    layout: Layout
    block: int = 1


@dataclass
class Group:
    size: int
    producers: list[gs.Node] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)


class ChannelGraph:
    """Groups of channels that must be pruned together, and the edits that keep the graph consistent."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.groups: list[Group] = []
        self.parent: list[int] = []
        self.edits: list[Edit] = []
        self.layouts: dict[str, Layout] = {}
        self.flat: dict[str, tuple[Layout, int]] = {}
        self._analyse()

    # -- union-find -------------------------------------------------------------------------------
    def new_group(self, size: int, producer: gs.Node) -> int:
        self.groups.append(Group(size, [producer]))
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self.parent[rb] = ra
        self.groups[ra].producers += self.groups[rb].producers
        self.groups[ra].blocked += self.groups[rb].blocked

    def block(self, layout: Layout | None, reason: str) -> None:
        for g, _ in layout or ():
            self.groups[self.find(g)].blocked.append(reason)

    def roots(self) -> list[int]:
        return sorted({self.find(g) for g in range(len(self.groups))})

    def group(self, g: int) -> Group:
        return self.groups[self.find(g)]

    # -- analysis ---------------------------------------------------------------------------------
    def _layout(self, tensor: gs.Tensor) -> Layout | None:
        return self.layouts.get(tensor.name) if isinstance(tensor, gs.Variable) else None

    def _analyse(self) -> None:
        for node in self.graph.nodes:
            handler = getattr(self, f"_op_{node.op}", None)
            if handler is not None:
                handler(node)
            elif node.op in CHANNEL_PRESERVING:
                self._pass_through(node)
            elif node.op in ELEMENTWISE:
                self._elementwise(node)
            elif node.op in NORMALIZATION:
                self._normalization(node)
            else:
                self._unknown(node)
        for out in self.graph.outputs:
            self.block(self.layouts.get(out.name), f"reaches graph output {out.name}")
            if out.name in self.flat:
                self.block(self.flat[out.name][0], f"reaches graph output {out.name}")

    def _unknown(self, node: gs.Node, why: str | None = None) -> None:
        for tensor in node.inputs:
            layout = self._layout(tensor)
            if layout:
                self.block(layout, why or f"consumed by {node.op} {node.name}")
            if isinstance(tensor, gs.Variable) and tensor.name in self.flat:
                self.block(
                    self.flat[tensor.name][0], why or f"flattened features consumed by {node.op} {node.name}"
                )

    def _pass_through(self, node: gs.Node) -> None:
        layout = self._layout(node.inputs[0]) if node.inputs else None
        extra = [t for t in node.inputs[1:] if self._layout(t)]
        if extra or (node.op == "MaxPool" and len(node.outputs) > 1 and node.outputs[1].outputs):
            self._unknown(node)
            return
        if layout:
            self.layouts[node.outputs[0].name] = layout

    def _op_Resize(self, node: gs.Node) -> None:
        sizes = node.inputs[3] if len(node.inputs) > 3 else None
        if (
            sizes is not None
            and not (isinstance(sizes, gs.Constant) and sizes.values.size == 0)
            and sizes.name
        ):
            self._unknown(node, f"Resize {node.name} with explicit sizes")
            return
        self._pass_through(node)

    def _normalization(self, node: gs.Node) -> None:
        layout = self._layout(node.inputs[0])
        if not layout:
            self._unknown(node)
            return
        for i in range(1, len(node.inputs)):
            if constant_values(node.inputs[i]) is None:
                self._unknown(node, f"{node.op} {node.name} with non-constant parameters")
                return
        for i in range(1, len(node.inputs)):
            self.edits.append(Edit("param", node, i, 0, layout))
        self.layouts[node.outputs[0].name] = layout

    def _elementwise(self, node: gs.Node) -> None:
        rank = _rank(node.outputs[0])
        layouts: list[Layout] = []
        params: list[tuple[int, int]] = []
        for i, tensor in enumerate(node.inputs):
            layout = self._layout(tensor)
            if layout:
                layouts.append(layout)
                continue
            values = constant_values(tensor)
            shape = values.shape if values is not None else (tuple(tensor.shape) if tensor.shape else None)
            if shape is None or rank is None:
                if shape is None and values is None and self._any_layout(node):
                    self._unknown(node, f"{node.op} {node.name} with an input of unknown shape")
                    return
                continue
            axis = len(shape) - (rank - 1)
            if not 0 <= axis < len(shape) or shape[axis] == 1:
                continue
            if values is None:
                self._unknown(node, f"{node.op} {node.name} mixes channels with an untracked tensor")
                return
            params.append((i, axis))
        if not layouts:
            return
        sizes = [tuple(s for _, s in lay) for lay in layouts]
        if any(s != sizes[0] for s in sizes):
            self._unknown(node, f"{node.op} {node.name} joins tensors laid out differently")
            return
        first = layouts[0]
        for other in layouts[1:]:
            for (a, _), (b, _) in zip(first, other):
                self.union(a, b)
        for i, axis in params:
            self.edits.append(Edit("param", node, i, axis, first))
        self.layouts[node.outputs[0].name] = first

    def _any_layout(self, node: gs.Node) -> bool:
        return any(self._layout(t) for t in node.inputs)

    def _op_Conv(self, node: gs.Node) -> None:
        weight = constant_values(node.inputs[1]) if len(node.inputs) > 1 else None
        bias_ok = len(node.inputs) < 3 or constant_values(node.inputs[2]) is not None
        layout = self._layout(node.inputs[0])
        if weight is None or not bias_ok:
            self._unknown(node, f"Conv {node.name} with non-constant weights")
            return
        group = int(node.attrs.get("group", 1))
        c_out, c_in = weight.shape[0], weight.shape[1] * group
        if group == 1:
            if layout:
                self.edits.append(Edit("conv_in", node, 1, 1, layout))
            g = self.new_group(c_out, node)
            self.layouts[node.outputs[0].name] = ((g, c_out),)
            self.edits.append(Edit("conv_out", node, 1, 0, ((g, c_out),)))
            if len(node.inputs) > 2:
                self.edits.append(Edit("param", node, 2, 0, ((g, c_out),)))
        elif group == c_in == c_out and weight.shape[1] == 1:
            if not layout:
                return
            self.edits.append(Edit("depthwise", node, 1, 0, layout))
            if len(node.inputs) > 2:
                self.edits.append(Edit("param", node, 2, 0, layout))
            self.layouts[node.outputs[0].name] = layout
        else:
            self._unknown(node, f"grouped Conv {node.name} (group {group})")

    def _op_Concat(self, node: gs.Node) -> None:
        rank = _rank(node.outputs[0])
        axis = int(node.attrs.get("axis", 1))
        if rank is not None and axis < 0:
            axis += rank
        layouts = [self._layout(t) for t in node.inputs]
        if axis != 1 or not all(layouts):
            self._unknown(node, f"Concat {node.name} not along tracked channels")
            return
        self.layouts[node.outputs[0].name] = tuple(seg for lay in layouts for seg in lay)  # type: ignore[union-attr]

    def _op_Flatten(self, node: gs.Node) -> None:
        layout = self._layout(node.inputs[0])
        if not layout:
            self._unknown(node)
            return
        shape = node.inputs[0].shape
        if int(node.attrs.get("axis", 1)) != 1 or not shape or not all(isinstance(d, int) for d in shape[2:]):
            self._unknown(node, f"Flatten {node.name} of a tensor with unknown spatial size")
            return
        self.flat[node.outputs[0].name] = (layout, int(np.prod(shape[2:], dtype=np.int64)))

    def _op_Reshape(self, node: gs.Node) -> None:
        layout = self._layout(node.inputs[0])
        shape = node.inputs[0].shape
        target = constant_values(node.inputs[1]) if len(node.inputs) > 1 else None
        if (
            layout
            and target is not None
            and target.size == 2
            and int(target[1]) == -1
            and shape
            and all(isinstance(d, int) for d in shape[2:])
        ):
            self.flat[node.outputs[0].name] = (layout, int(np.prod(shape[2:], dtype=np.int64)))
            return
        self._unknown(node)

    def _op_Gemm(self, node: gs.Node) -> None:
        self._fully_connected(node, 1 if node.attrs.get("transB", 0) else 0)

    def _op_MatMul(self, node: gs.Node) -> None:
        self._fully_connected(node, 0)

    def _fully_connected(self, node: gs.Node, in_axis: int) -> None:
        """Gemm/MatMul with a constant 2-D weight: consumer of flattened (or 2-D) channels, and producer of
        a group of output features when its output is 2-D (the hidden units of an MLP head)."""
        if any(
            self._layout(t) or (isinstance(t, gs.Variable) and t.name in self.flat) for t in node.inputs[1:]
        ):
            self._unknown(node, f"{node.op} {node.name} takes tracked channels as its weight or bias")
            return
        source = node.inputs[0]
        weight = constant_values(node.inputs[1]) if len(node.inputs) > 1 else None
        usable = (
            weight is not None
            and weight.ndim == 2
            and not (node.op == "Gemm" and node.attrs.get("transA", 0))
        )
        entry = self.flat.get(source.name) if isinstance(source, gs.Variable) else None
        layout = self._layout(source)
        if entry is None and layout and _rank(source) == 2:
            entry = (layout, 1)
        if entry is None and layout:
            self._unknown(node)
        elif entry is not None and not usable:
            self._unknown(node, f"{node.op} {node.name} without a constant 2-D weight")
        elif entry is not None:
            self.edits.append(Edit("fc_in", node, 1, in_axis, entry[0], entry[1]))
        if not usable or _rank(node.outputs[0]) != 2:
            return
        size = int(weight.shape[1 - in_axis])
        bias = constant_values(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        if len(node.inputs) > 2 and node.inputs[2].name and bias is None:
            return
        if bias is not None and bias.size > 1 and bias.shape not in ((size,), (1, size)):
            return
        g = self.new_group(size, node)
        self.layouts[node.outputs[0].name] = ((g, size),)
        self.edits.append(Edit("fc_out", node, 1, 1 - in_axis, ((g, size),)))
        if bias is not None and bias.size > 1:
            self.edits.append(Edit("param", node, 2, bias.ndim - 1, ((g, size),)))


def output_axis(node: gs.Node) -> int:
    """The axis of a producer's weight that indexes its output channels."""
    if node.op == "Conv":
        return 0
    if node.op == "Gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    return 1


def constant_values(tensor: Any) -> np.ndarray | None:
    """The value of a graphsurgeon Constant or of a Constant node's output, else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    return None


def _rank(tensor: gs.Tensor) -> int | None:
    return len(tensor.shape) if tensor.shape is not None else None
