"""Small pattern-matching helpers over an onnx-graphsurgeon Graph, shared by the rewrites."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from edgeplug import Model

from .roundtrip import import_graph

STANDARD_DOMAINS = ("", "ai.onnx")

# The latest version (since_version) of each standard op a rewrite matches or emits, reviewed against onnx's
# operator changelog (up to opset 25 the later versions only add types). In a model whose opset brings a
# later version of one of them, the rewrites leave those nodes as they are until they are reviewed for it.
REVIEWED_VERSIONS = {
    "Add": 14,
    "BatchNormalization": 15,
    "Clip": 13,
    "Constant": 25,
    "Conv": 22,
    "ConvTranspose": 22,
    "Dropout": 22,
    "Gemm": 13,
    "HardSigmoid": 22,
    "Identity": 25,
    "LayerNormalization": 17,
    "LeakyRelu": 16,
    "MatMul": 13,
    "Relu": 14,
    "Shape": 25,
    "Sigmoid": 13,
    "Tanh": 13,
}


def graph_of(model: Model) -> gs.Graph:
    """A graphsurgeon Graph of a copy of `model.proto` (roundtrip.import_graph: `model.proto` stays as it is,
    and control-flow bodies come back verbatim on export)."""
    return import_graph(model.proto)


def is_standard(node: gs.Node) -> bool:
    return (node.domain or "") in STANDARD_DOMAINS


def subgraph_reads(graph: gs.Graph) -> frozenset[str]:
    """Names of the tensors that nodes inside the graph's If/Loop/Scan bodies read (any depth), outer-scope
    reads included. graphsurgeon lists such a reader among the tensor's consumers although it is no node of
    `graph`, so the rewrites treat these tensors like graph outputs: read by something they do not see.
    Cached on the graph: fuse never edits a subgraph, so the set holds for a whole transform."""
    cached = vars(graph).get(_SUBGRAPH_READS)  # not getattr: a missing graph attribute logs an error
    if cached is None:
        names: set[str] = set()
        stack = [sub for node in graph.nodes for sub in node.subgraphs()]
        while stack:
            sub = stack.pop()
            for node in sub.nodes:
                names.update(t.name for t in node.inputs if t.name)
                stack.extend(node.subgraphs())
            names.update(t.name for t in sub.outputs if t.name)
        cached = frozenset(names)
        setattr(graph, _SUBGRAPH_READS, cached)
    return cached


_SUBGRAPH_READS = "_edgeplug_fuse_subgraph_reads"


@functools.cache
def op_version(op: str, opset: int) -> int:
    """The since_version of standard op `op` in `opset` (0 when onnx does not know it there)."""
    try:
        return int(onnx.defs.get_schema(op, opset, "").since_version)
    except onnx.defs.SchemaError:
        return 0


def reviewed(graph: gs.Graph, op: str) -> bool:
    """True when the version of `op` in the graph's opset is one the rewrites were written for."""
    limit = REVIEWED_VERSIONS.get(op)
    return limit is None or op_version(op, int(graph.opset or 0)) <= limit


def is_rewritable(graph: gs.Graph, node: gs.Node, *ops: str) -> bool:
    """A standard-domain node with one of `ops`, in a version the rewrites know."""
    return node.op in ops and is_standard(node) and reviewed(graph, node.op)


def nodes_of(graph: gs.Graph, *ops: str) -> list[gs.Node]:
    """A snapshot list of the graph's standard-domain nodes with one of `ops` in a reviewed version (safe to
    edit while looping)."""
    known = [op for op in ops if reviewed(graph, op)]
    return [n for n in graph.nodes if n.op in known and is_standard(n)]


def is_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """True when something outside the graph's own nodes reads `tensor`: it is a graph output, or a node
    inside an If/Loop/Scan body reads it from the outer scope."""
    return any(tensor is out for out in graph.outputs) or tensor.name in subgraph_reads(graph)


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
