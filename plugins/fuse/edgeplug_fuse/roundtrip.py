"""The graphsurgeon round trip, keeping what fuse never edits.

graphsurgeon's export keeps the graph's opset imports and local functions but drops, besides the model
fields `restore_model_fields` puts back, the functions' `value_info` and `metadata_props`, the graph's
and every node's `metadata_props`; it re-exports If/Loop/Scan bodies (adding value_info, and moving an
outer constant that only a body reads into that body), and writes a `value_info` entry for every shape
it knows. fuse rewrites neither function bodies nor control-flow bodies, so the input's FunctionProtos
and the attributes of its control-flow nodes are put back verbatim, and the outer constants those
bodies read stay in the main graph.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from edgeplug.plugin_api import restore_model_fields
from onnx import numpy_helper

_BODIES = "_edgeplug_fuse_bodies"
_GRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


def import_graph(proto: onnx.ModelProto) -> gs.Graph:
    """A graphsurgeon Graph of a copy of `proto`, its control-flow nodes tagged with the attributes they
    had. graphsurgeon keeps references into the proto it imports (its opset_import list, lazily loaded
    tensors that export renames in place), so importing a copy keeps `proto` untouched."""
    clone = onnx.ModelProto()
    clone.CopyFrom(proto)
    graph = gs.import_onnx(clone)
    bodies = {}
    for node, source in zip(graph.nodes, proto.graph.node):  # graphsurgeon imports nodes in order
        if any(a.type in _GRAPH_ATTRS for a in source.attribute):
            bodies[id(node)] = (node, list(source.attribute))
    setattr(graph, _BODIES, bodies)
    return graph


def export(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """`graph` as ONNX with the model fields, functions and metadata of `like`, its control-flow nodes'
    bodies as imported, and only the value_info entries `like` had: graphsurgeon writes every shape it
    knows, which grows the file (a QDQ model by ~2%); the core runs its own shape inference."""
    proto = gs.export_onnx(graph, do_type_check=False)
    restore_model_fields(proto, like)
    had = {value.name for value in like.graph.value_info}
    keep = [value for value in proto.graph.value_info if value.name in had]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep)
    del proto.functions[:]
    proto.functions.extend(like.functions)
    del proto.graph.metadata_props[:]
    proto.graph.metadata_props.extend(like.graph.metadata_props)
    _restore_node_metadata(proto.graph, like.graph)
    _restore_bodies(graph, proto.graph)
    return proto


def _restore_node_metadata(graph: onnx.GraphProto, like: onnx.GraphProto) -> None:
    """Give nodes that kept their (unique, non-empty) name the metadata_props they had."""
    named: dict[str, onnx.NodeProto | None] = {}
    for node in like.node:
        if node.name and node.metadata_props:
            named[node.name] = None if node.name in named else node
    if not named:
        return
    for node in graph.node:
        source = named.get(node.name)
        if source is not None and not node.metadata_props:
            node.metadata_props.extend(source.metadata_props)


def _restore_bodies(graph: gs.Graph, proto: onnx.GraphProto) -> None:
    """Put back the imported attributes of each control-flow node, and keep in the main graph the outer
    constants those bodies read (graphsurgeon exports a constant where it is read)."""
    bodies = vars(graph).get(_BODIES) or {}
    restored = []
    for node, exported in zip(graph.nodes, proto.node):  # graphsurgeon exports nodes in order
        tagged = bodies.get(id(node))
        if tagged is not None and tagged[0] is node:
            del exported.attribute[:]
            exported.attribute.extend(tagged[1])
            restored.append((node, tagged[1]))
    if not restored:
        return
    defined = {value.name for value in proto.input} | {t.name for t in proto.initializer}
    defined.update(name for node in proto.node for name in node.output)
    for node, attributes in restored:
        missing = _outer_names(attributes) - defined
        if not missing:
            continue
        for tensor in _body_tensors(node):
            if tensor.name in missing and isinstance(tensor, gs.Constant):
                proto.initializer.append(numpy_helper.from_array(tensor.values, tensor.name))
                defined.add(tensor.name)


def _outer_names(attributes: list[onnx.AttributeProto]) -> set[str]:
    """Names the bodies in `attributes` read from outside themselves (any depth)."""
    reads: set[str] = set()
    inside: set[str] = set()
    stack = [g for a in attributes for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs)]
    while stack:
        body = stack.pop()
        inside.update(v.name for v in body.input)
        inside.update(t.name for t in body.initializer)
        inside.update(t.values.name for t in body.sparse_initializer)
        reads.update(v.name for v in body.output)
        for node in body.node:
            inside.update(node.output)
            reads.update(node.input)
            for a in node.attribute:
                stack.extend([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs)
    return reads - inside - {""}


def _body_tensors(node: gs.Node) -> list[gs.Tensor]:
    """Tensors the node's bodies read (any depth), as graphsurgeon holds them."""
    found: dict[str, gs.Tensor] = {}
    stack = list(node.subgraphs())
    while stack:
        sub = stack.pop()
        for inner in sub.nodes:
            found.update((t.name, t) for t in inner.inputs if t.name)
            stack.extend(inner.subgraphs())
    return list(found.values())
