"""Small pattern-matching helpers over an onnx-graphsurgeon Graph, shared by the rewrites."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import onnx_graphsurgeon as gs
from edgeplug import Model

STANDARD_DOMAINS = ("", "ai.onnx")


def graph_of(model: Model) -> gs.Graph:
    """A graphsurgeon Graph of a copy of `model.proto`.

    `model.to_graphsurgeon()` imports the proto itself, and graphsurgeon keeps references into it: its
    opset_import list becomes `graph.import_domains` (export appends new domains to it) and lazily loaded
    tensors stay tied to the proto (export and fold_constants rename attribute tensors in place), which
    would edit the caller's model. Importing a copy keeps `model.proto` untouched."""
    return gs.import_onnx(model.copy_proto())


def is_standard(node: gs.Node) -> bool:
    return (node.domain or "") in STANDARD_DOMAINS


def nodes_of(graph: gs.Graph, *ops: str) -> list[gs.Node]:
    """A snapshot list of the graph's standard-domain nodes with one of `ops` (safe to edit while looping)."""
    return [n for n in graph.nodes if n.op in ops and is_standard(n)]


def is_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(tensor is out for out in graph.outputs)


def sole_consumer(graph: gs.Graph, tensor: gs.Tensor) -> gs.Node | None:
    """The one node reading `tensor`, or None when it has several readers or is a graph output."""
    if is_output(graph, tensor) or len(tensor.outputs) != 1:
        return None
    return tensor.outputs[0]


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if isinstance(tensor, gs.Variable) and len(tensor.inputs) == 1 else None


def constant(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The tensor's values when it is a constant (an initializer), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def is_omitted(tensor: gs.Tensor | None) -> bool:
    """True for an absent optional input (graphsurgeon represents it as a nameless Variable)."""
    return tensor is None or (isinstance(tensor, gs.Variable) and not tensor.name)


def exclusive(tensor: gs.Tensor, node: gs.Node) -> bool:
    """True when `node` is the only reader of `tensor` (so its values may be rewritten for `node` alone)."""
    return all(reader is node for reader in tensor.outputs)


def replace_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Point every reader of `old` at `new` (graph outputs are left to the caller)."""
    for reader in list(old.outputs):
        for index, tensor in enumerate(reader.inputs):
            if tensor is old:
                reader.inputs[index] = new


def move_output(source: gs.Node, target: gs.Node, index: int = 0) -> None:
    """Make `target` produce `source`'s output tensor (keeping its name) and detach `source`."""
    tensor = source.outputs[0]
    source.outputs.clear()
    if index == len(target.outputs):
        target.outputs.append(tensor)
    else:
        target.outputs[index] = tensor


class Names:
    """Fresh tensor names that do not collide with any name already in the graph."""

    def __init__(self, graph: gs.Graph) -> None:
        self.used = set(graph.tensors().keys())

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


def tally(items: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(items).items()))
