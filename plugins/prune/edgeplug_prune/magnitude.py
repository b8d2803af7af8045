"""Unstructured magnitude pruning and N:M patterns of Conv, Gemm and MatMul weights, with per-layer policies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .settings import PruneSettings

QUANTIZED_OPS = ("DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


@dataclass(frozen=True)
class WeightSite:
    """A prunable weight: the node using it, the initializer, and the axis that indexes input channels."""

    node: str
    op: str
    weight: str
    in_axis: int
    depthwise: bool
    shape: tuple[int, ...]


def weight_sites(proto: onnx.ModelProto) -> list[WeightSite]:
    """Float initializer weights of Conv, Gemm and MatMul nodes, in graph order, each weight once."""
    inits = {t.name: t for t in proto.graph.initializer}
    seen: set[str] = set()
    sites: list[WeightSite] = []
    for index, node in enumerate(proto.graph.node):
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        name = node.input[1]
        tensor = inits.get(name)
        if tensor is None or name in seen or tensor.data_type not in FLOAT_TYPES:
            continue
        shape = tuple(tensor.dims)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        depthwise = False
        if node.op_type == "Conv":
            if len(shape) < 3:
                continue
            in_axis, group = 1, int(attrs.get("group", 1))
            depthwise = group > 1 and shape[1] == 1
        elif node.op_type == "Gemm":
            if len(shape) != 2:
                continue
            in_axis = 1 if attrs.get("transB", 0) else 0
        else:
            if len(shape) < 2:
                continue
            in_axis = len(shape) - 2
        seen.add(name)
        sites.append(
            WeightSite(node.name or f"{node.op_type}_{index}", node.op_type, name, in_axis, depthwise, shape)
        )
    return sites


def has_float_weights(proto: onnx.ModelProto) -> bool:
    """True when a Conv, Gemm or MatMul reads a float constant weight (an initializer or a Constant node's
    value) that pruning can zero; False for quantized models, whose weights sit behind DequantizeLinear."""
    floats = {t.name for t in proto.graph.initializer if t.data_type in FLOAT_TYPES}
    for node in proto.graph.node:
        attr = node.attribute[0] if node.op_type == "Constant" and node.attribute else None
        if attr is not None and attr.name == "value" and attr.t.data_type in FLOAT_TYPES:
            floats.update(node.output)
    return any(
        n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in floats
        for n in proto.graph.node
    )


def is_quantized(proto: onnx.ModelProto) -> bool:
    """True when the graph holds quantized weights (QDQ or QOperator format)."""
    return any(n.op_type in QUANTIZED_OPS for n in proto.graph.node)


def layer_targets(
    sites: list[WeightSite], settings: PruneSettings, sparsity: float
) -> dict[str, tuple[float, str]]:
    """Per weight: (sparsity, why) after the policies: first/last spared, depthwise, name overrides."""
    targets: dict[str, tuple[float, str]] = {}
    for i, site in enumerate(sites):
        override = settings.override_for([site.node, site.weight])
        if override is not None:
            targets[site.weight] = (override, "override")
        elif settings.skip_first_last and (i == 0 or i == len(sites) - 1) and len(sites) > 1:
            targets[site.weight] = (0.0, "first layer" if i == 0 else "last layer")
        elif site.depthwise and settings.depthwise_sparsity is not None:
            targets[site.weight] = (settings.depthwise_sparsity, "depthwise")
        else:
            targets[site.weight] = (sparsity, "global" if settings.scope == "global" else "layer")
    return targets


def magnitude_mask(weight: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep-mask zeroing exactly round(sparsity * size) weights of smallest magnitude."""
    k = round(sparsity * weight.size)
    mask = np.ones(weight.size, dtype=bool)
    if k > 0:
        order = np.argsort(np.abs(weight).ravel(), kind="stable")
        mask[order[:k]] = False
    return mask.reshape(weight.shape)


def global_masks(weights: dict[str, np.ndarray], sparsity: float) -> dict[str, np.ndarray]:
    """Keep-masks with one magnitude ranking over all `weights`: exactly round(sparsity * total) zeros."""
    names = list(weights)
    flat = np.concatenate([np.abs(weights[n]).ravel() for n in names]) if names else np.empty(0)
    k = round(sparsity * flat.size)
    keep = np.ones(flat.size, dtype=bool)
    if k > 0:
        keep[np.argsort(flat, kind="stable")[:k]] = False
    masks, start = {}, 0
    for name in names:
        size = weights[name].size
        masks[name] = keep[start : start + size].reshape(weights[name].shape)
        start += size
    return masks


def nm_mask(weight: np.ndarray, n: int, m: int, in_axis: int) -> np.ndarray | None:
    """Keep-mask with N of every M consecutive weights along the input-channel axis (None if it does not divide)."""
    if weight.shape[in_axis] % m:
        return None
    moved = np.moveaxis(np.abs(weight), in_axis, -1)
    blocks = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    order = np.argsort(-blocks, axis=-1, kind="stable")
    keep = np.zeros(blocks.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.moveaxis(keep.reshape(moved.shape), -1, in_axis)


def prune_weights(
    proto: onnx.ModelProto, settings: PruneSettings, sparsity: float, log: Callable[[str], None] = print
) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """Zero weights of a copy of `proto` (mode unstructured or nm); returns it and one report row per layer."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    sites = weight_sites(out)
    inits = {t.name: t for t in out.graph.initializer}
    arrays = {s.weight: numpy_helper.to_array(inits[s.weight]) for s in sites}
    targets = layer_targets(sites, settings, sparsity)
    masks: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}
    if settings.mode == "nm":
        n, m = settings.pattern
        for site in sites:
            target, why = targets[site.weight]
            if why in ("first layer", "last layer") or (why == "override" and target == 0.0):
                continue  # the pattern has a fixed sparsity: only spared layers are left out
            if site.depthwise:
                notes[site.weight] = "depthwise: one input channel per filter, no N:M pattern"
                continue
            mask = nm_mask(arrays[site.weight], n, m, site.in_axis)
            if mask is None:
                notes[site.weight] = f"{site.shape[site.in_axis]} input channels not divisible by {m}"
                continue
            masks[site.weight] = mask
    else:
        pooled = {}
        for site in sites:
            target, why = targets[site.weight]
            if why == "global":
                pooled[site.weight] = arrays[site.weight]
            elif target > 0:
                masks[site.weight] = magnitude_mask(arrays[site.weight], target)
        if pooled:
            masks.update(global_masks(pooled, sparsity))
    rows = []
    for site in sites:
        weight = arrays[site.weight]
        before = int(np.count_nonzero(weight))
        if site.weight in masks:
            pruned = np.where(masks[site.weight], weight, np.zeros_like(weight))
            inits[site.weight].CopyFrom(numpy_helper.from_array(pruned.astype(weight.dtype), site.weight))
            weight = pruned
        target, why = targets[site.weight]
        row = {
            "layer": site.node,
            "op": "DepthwiseConv" if site.depthwise else site.op,
            "weight": site.weight,
            "parameters": int(weight.size),
            "nonzero_before": before,
            "nonzero_after": int(np.count_nonzero(weight)),
            "sparsity": round(1.0 - int(np.count_nonzero(weight)) / max(weight.size, 1), 6),
            "pruned": site.weight in masks,
            "policy": why,
        }
        if settings.mode == "nm":
            row["pattern"] = "{}:{}".format(*settings.pattern) if site.weight in masks else None
        if site.weight in notes:
            row["skipped"] = notes[site.weight]
            log(f"{site.node}: not pruned ({notes[site.weight]})")
        rows.append(row)
    return out, rows


def check_nm(weight: np.ndarray, n: int, m: int, in_axis: int) -> bool:
    """True when every group of M consecutive weights along the input axis has at most N non-zeros."""
    if weight.shape[in_axis] % m:
        return False
    moved = np.moveaxis(weight, in_axis, -1)
    blocks = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    return bool((np.count_nonzero(blocks, axis=-1) <= n).all())
