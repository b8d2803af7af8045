"""What the rewrites leave as it is, said in sentences for the report: If/Loop/Scan bodies, the nodes of
local functions, standard ops in versions newer than the rewrites were written for, and ONNX's own
Attention/RotaryEmbedding (opset 23+), which the encoder fusion does not know."""

from __future__ import annotations

from collections import Counter

import onnx_graphsurgeon as gs

from .patterns import REVIEWED_VERSIONS, is_standard, op_version

# Standard ops (opset 23+) that onnxruntime's encoder fusion neither matches nor tells apart from its own
# com.microsoft ops of the same name.
ATTENTION_OPS = ("Attention", "RotaryEmbedding")


def untouched(graph: gs.Graph) -> list[str]:
    """One sentence per kind of construct the rewrites leave as it is (empty when there is none)."""
    notes = []
    control = Counter(node.op for node in graph.nodes if any(True for _ in node.subgraphs()))
    if control:
        kinds = ", ".join(f"{n} {op}" for op, n in sorted(control.items()))
        notes.append(f"subgraphs of {kinds} left as they are (only the main graph is rewritten)")
    if graph.functions:
        names = ", ".join(sorted(f"{f.domain}.{f.name}" if f.domain else f.name for f in graph.functions))
        notes.append(f"nodes of local functions {names} left as they are (calls to them are kept)")
    opset = int(graph.opset or 0)
    present = {node.op for node in graph.nodes if is_standard(node)}
    newer = sorted(
        f"{op}-{op_version(op, opset)}"
        for op in present & REVIEWED_VERSIONS.keys()
        if op_version(op, opset) > REVIEWED_VERSIONS[op]
    )
    if newer:
        notes.append(
            f"{', '.join(newer)} left as they are: opset {opset} brings versions the rewrites were not written for"
        )
    attention = sorted(present & set(ATTENTION_OPS))
    if attention:
        notes.append(
            f"ONNX {'/'.join(attention)} nodes (opset 23+) left as they are: no rewrite matches them"
        )
    return notes


def encoder_blockers(graph: gs.Graph) -> list[str]:
    """Why onnxruntime's encoder fusion must not run on this graph (empty when it may)."""
    reasons = []
    if any(node.op in ATTENTION_OPS and is_standard(node) for node in graph.nodes):
        reasons.append("the graph uses ONNX Attention/RotaryEmbedding (opset 23+)")
    if graph.functions:
        reasons.append("the model has local functions")
    if any(any(True for _ in node.subgraphs()) for node in graph.nodes):
        reasons.append("the graph has If/Loop/Scan subgraphs")
    return reasons
