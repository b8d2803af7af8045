"""Constant folding: Shape nodes of statically shaped tensors, then graphsurgeon's `fold_constants`
evaluated by onnxruntime in one session, node by node where that session cannot be built.

Three graphsurgeon behaviours are worked around here, each of which broke real models (opset 23/24
Attention expansions among them):
* its shape folding ignores Shape's `start`/`end` (opset 15+) and folds `Shape(x, start=1, end=2)` to the
  whole shape, giving invalid or wrong models; Shape is folded here instead, honouring both;
* its `partitioning="basic"` retries a partition that onnxruntime cannot run on the same partition until
  Python's recursion limit (minutes, then RecursionError); the fallback here is a loop;
* with shape folding on it also "elides" int->float->int Cast pairs, casting float constants to int
  (`x * 0.5` becomes `x * 0`); shape folding is off, so that never runs.
Only this graph's nodes are folded: If/Loop/Scan bodies and local functions are left as they are.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .order import toposort
from .patterns import is_omitted, is_output, is_standard, nodes_of

SIZE_THRESHOLD = 1 << 24  # constants over 16 MiB are not materialised

# Never folded: folding DequantizeLinear(int8 weight) would turn a quantized model back into float weights.
KEEP_UNFOLDED = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
# Nodes whose output differs from run to run: folding would freeze one draw.
NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
)


def keep_unfolded(node: gs.Node) -> bool:
    """fold_constants' should_exclude_node: True for the quantization nodes a QDQ model must keep, random
    ops, nodes of other domains (contrib ops, local functions) and control flow (If/Loop/Scan)."""
    return (
        node.op in KEEP_UNFOLDED
        or node.op in NONDETERMINISTIC
        or not is_standard(node)
        or any(True for _ in node.subgraphs())
    )


def fold_constants(graph: gs.Graph, size_threshold: int = SIZE_THRESHOLD) -> int:
    """Fold what is computable before run time; returns the number of nodes removed."""
    before = len(graph.nodes)
    logger = gs.logger.G_LOGGER
    severity = logger.severity
    logger.severity = logger.CRITICAL
    try:
        fold_shapes(graph)
        toposort(graph)
        try:
            graph.fold_constants(
                fold_shapes=False,
                recurse_subgraphs=False,
                partitioning=None,
                error_ok=False,
                flatten_subgraphs=False,
                size_threshold=size_threshold,
                should_exclude_node=keep_unfolded,
                recurse_functions=False,
            )
        except Exception:  # onnxruntime cannot run the constant part as a whole (an op, a type, an opset)
            fold_one_by_one(graph, size_threshold)
        graph.cleanup(recurse_subgraphs=False, recurse_functions=False)
    finally:
        logger.severity = severity
    return max(before - len(graph.nodes), 0)


def fold_shapes(graph: gs.Graph) -> int:
    """Replace Shape nodes whose input has a fully static shape by the constant they compute."""
    count = 0
    for node in nodes_of(graph, "Shape"):
        data, out = node.inputs[0], node.outputs[0]
        shape = data.shape
        if shape is None or isinstance(data, gs.Constant) or is_output(graph, out):
            continue
        if not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
            continue
        rank = len(shape)
        start = _clamp(int(node.attrs.get("start", 0)), rank)
        end = _clamp(int(node.attrs.get("end", rank)), rank)
        node.outputs.clear()
        node.inputs.clear()
        out.to_constant(np.array([int(d) for d in shape[start:end]], dtype=np.int64))
        count += 1
    return count


def _clamp(axis: int, rank: int) -> int:
    """Shape's start/end: negative counts from the back, then clamped to [0, rank]."""
    return min(max(axis + rank if axis < 0 else axis, 0), rank)


def fold_one_by_one(graph: gs.Graph, size_threshold: int = SIZE_THRESHOLD) -> int:
    """Evaluate every foldable node on its own, in order, so that one node onnxruntime cannot run leaves
    only itself and what depends on it unfolded. Returns the number of nodes folded."""
    count = 0
    for node in list(graph.nodes):
        if keep_unfolded(node) or not _all_constant(node.inputs):
            continue
        outputs = [t for t in node.outputs if not is_omitted(t)]
        if not outputs or any(is_output(graph, t) for t in outputs):
            continue
        values = _evaluate(graph, node, outputs)
        if values is None or any(v.nbytes > size_threshold for v in values):
            continue
        node.inputs.clear()
        node.outputs.clear()
        for tensor, value in zip(outputs, values):
            tensor.to_constant(value)
        count += 1
    return count


def _all_constant(tensors: list[gs.Tensor]) -> bool:
    return all(isinstance(t, gs.Constant) or is_omitted(t) for t in tensors)


def _evaluate(graph: gs.Graph, node: gs.Node, outputs: list[gs.Tensor]) -> list[np.ndarray] | None:
    """The node's outputs computed by onnxruntime from its constant inputs, or None when it cannot run."""
    import onnxruntime as ort

    inputs = [
        gs.Variable.empty() if is_omitted(t) else gs.Constant(t.name, np.asarray(t.values))
        for t in node.inputs
    ]
    results = {id(t): gs.Variable(t.name) for t in outputs}
    wired = [results.get(id(t), gs.Variable.empty()) for t in node.outputs]
    single = gs.Node(node.op, node.name, dict(node.attrs), inputs=inputs, outputs=wired, domain=node.domain)
    part = gs.Graph(
        nodes=[single], outputs=list(results.values()), opset=graph.opset, import_domains=graph.import_domains
    )
    try:
        session = ort.InferenceSession(
            gs.export_onnx(part, do_type_check=False).SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return [np.asarray(v) for v in session.run([t.name for t in outputs], {})]
    except Exception:
        return None
