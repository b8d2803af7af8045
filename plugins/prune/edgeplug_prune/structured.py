"""Structured channel pruning: choose the channels each group keeps and rewrite the graph to match."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from edgeplug.plugin_api import restore_model_fields

from .channels import ChannelGraph, Edit, Layout, constant_values, output_axis
from .constants import apply_bias_deltas, fold_constant_channels
from .settings import PruneSettings


@dataclass
class StructuredResult:
    """The pruned proto, the nodes whose inputs lost channels (to reconstruct), and what each group kept."""

    proto: onnx.ModelProto
    sinks: list[str]
    kept_out: dict[str, np.ndarray]
    groups: list[dict[str, Any]] = field(default_factory=list)


def import_graph(proto: onnx.ModelProto) -> gs.Graph:
    """A graphsurgeon graph with inferred shapes, in topological order, every node uniquely named."""
    with contextlib.suppress(Exception):  # shapes only help; the analysis copes without them
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    graph = gs.import_onnx(proto)
    graph.toposort()
    seen: set[str] = set()
    for i, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            node.name = f"{node.op}_{i}"
        seen.add(node.name)
    return graph


def channel_scores(cg: ChannelGraph, root: int, criterion: str) -> tuple[np.ndarray, str]:
    """Importance of each channel of a group: the criterion of every producer, normalised and summed."""
    group = cg.groups[root]
    total = np.zeros(group.size, dtype=np.float64)
    used = criterion
    for producer in group.producers:
        weight = np.moveaxis(constant_values(producer.inputs[1]).astype(np.float64), output_axis(producer), 0)
        flat = weight.reshape(weight.shape[0], -1)
        score = None
        if criterion == "bn":
            consumers = producer.outputs[0].outputs
            if len(consumers) == 1 and consumers[0].op == "BatchNormalization":
                gamma = constant_values(consumers[0].inputs[1])
                if gamma is not None:
                    score = np.abs(gamma.astype(np.float64))
            if score is None:
                used = "l1 (no BatchNorm after the conv)"
        if score is None:
            score = np.sqrt((flat**2).sum(1)) if criterion == "l2" else np.abs(flat).sum(1)
        total += score / (score.mean() + 1e-12)
    return total, used


def group_targets(cg: ChannelGraph, settings: PruneSettings, sparsity: float) -> dict[int, tuple[float, str]]:
    """Per group root: (fraction of channels to remove, why) after blocking and the per-layer policies."""
    weighted = [
        n
        for n in cg.graph.nodes
        if n.op in ("Conv", "Gemm", "MatMul")
        and len(n.inputs) > 1
        and constant_values(n.inputs[1]) is not None
    ]
    spared = (
        {weighted[0].name, weighted[-1].name} if settings.skip_first_last and len(weighted) > 1 else set()
    )
    targets: dict[int, tuple[float, str]] = {}
    for root in cg.roots():
        group = cg.groups[root]
        if group.blocked:
            targets[root] = (0.0, f"blocked: {group.blocked[0]}")
            continue
        if spared & {p.name for p in group.producers}:
            targets[root] = (0.0, "first/last layer spared")
            continue
        overrides = [settings.override_for([p.name, p.inputs[1].name]) for p in group.producers]
        overrides = [o for o in overrides if o is not None]
        targets[root] = (min(overrides), "override") if overrides else (sparsity, "sparsity")
    return targets


def layout_index(cg: ChannelGraph, layout: Layout, kept: dict[int, np.ndarray], block: int = 1) -> np.ndarray:
    """Indices along a tensor's channel axis (times `block` entries per channel) that survive."""
    parts, offset = [], 0
    for g, size in layout:
        parts.append(kept[cg.find(g)] + offset)
        offset += size
    index = np.concatenate(parts) if parts else np.arange(0)
    if block > 1:
        index = (index[:, None] * block + np.arange(block)[None, :]).ravel()
    return index


def prune_channels(
    proto: onnx.ModelProto, settings: PruneSettings, sparsity: float, log: Callable[[str], None] = print
) -> StructuredResult:
    """Remove output channels of Conv layers and rewrite every consumer; weights are not yet reconstructed."""
    graph = import_graph(proto)
    cg = ChannelGraph(graph)
    targets = group_targets(cg, settings, sparsity)
    kept: dict[int, np.ndarray] = {}
    rows = []
    for root, (target, why) in targets.items():
        group = cg.groups[root]
        keep = max(1, round(group.size * (1.0 - target)))
        used = settings.criterion
        if keep < group.size:
            scores, used = channel_scores(cg, root, settings.criterion)
            kept[root] = np.sort(np.argsort(-scores, kind="stable")[:keep])
        else:
            kept[root] = np.arange(group.size)
        rows.append(
            {
                "producers": [p.name for p in group.producers],
                "channels": group.size,
                "kept": int(kept[root].size),
                "target": round(target, 6),
                "policy": why,
                "criterion": used if keep < group.size else None,
            }
        )
    # removed channels that are constant (zero filters, zero BatchNorm scale) live on in the consumers' biases
    folded = fold_constant_channels(cg, kept)
    apply_bias_deltas(cg, folded)
    sinks: list[str] = []
    kept_out: dict[str, np.ndarray] = {}
    owned: set[tuple[str, int]] = set()
    for edit in cg.edits:
        index = layout_index(cg, edit.layout, kept, edit.block)
        values = _constant_for(edit, owned)
        if index.size == values.shape[edit.axis]:
            continue
        _set_input(edit, np.take(values, index, axis=edit.axis))
        if edit.kind == "depthwise":
            edit.node.attrs["group"] = int(index.size)
        if edit.kind in ("conv_in", "fc_in") and edit.node.name not in sinks:
            sinks.append(edit.node.name)
        if edit.kind in ("conv_out", "fc_out"):
            kept_out[edit.node.name] = index
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    sinks.sort(key=order.__getitem__)
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor not in graph.inputs and tensor not in graph.outputs:
            tensor.shape = None
            tensor.dtype = None
    graph.cleanup().toposort()
    out = gs.export_onnx(graph, do_type_check=False)
    restore_model_fields(out, proto)
    del out.graph.value_info[:]
    out = onnx.shape_inference.infer_shapes(out, strict_mode=True)
    pruned = sum(1 for r in rows if r["kept"] < r["channels"])
    log(
        f"structured: {pruned} of {len(rows)} channel groups pruned, {len(sinks)} layers lost input channels"
        + (f", constant channels folded into {len(folded)} biases" if folded else "")
    )
    return StructuredResult(out, sinks, kept_out, rows)


def _constant_for(edit: Edit, owned: set[tuple[str, int]]) -> np.ndarray:
    """The current value of the edited input, first giving the node its own copy if the constant is shared."""
    tensor = edit.node.inputs[edit.index]
    values = constant_values(tensor)
    key = (edit.node.name, edit.index)
    if key not in owned:
        owned.add(key)
        shared = not isinstance(tensor, gs.Constant) or len(tensor.outputs) > 1
        if shared:
            edit.node.inputs[edit.index] = gs.Constant(f"{tensor.name}__{edit.node.name}", np.array(values))
    return values


def _set_input(edit: Edit, values: np.ndarray) -> None:
    tensor = edit.node.inputs[edit.index]
    tensor.values = np.ascontiguousarray(values)
