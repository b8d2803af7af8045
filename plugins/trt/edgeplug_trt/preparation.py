"""Prepare an ONNX model for TensorRT's parser: fold constants, narrow int64, check every operator.

Runs on any machine (onnx-graphsurgeon + onnxruntime for the folding); the result computes exactly what
the input computed, which the core verifies after the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeplug import Model

from .int64_narrowing import narrow_int64
from .operators import check_operators
from .qdq import fold_int32_bias_dequantize

# Q/DQ pairs on constant weights are how TensorRT recognises an INT8 layer (explicit quantization):
# folding DequantizeLinear(int8 weight) into a float constant would silently drop the weight's quantization.
# onnx-graphsurgeon 0.6 already leaves them unfolded; the exclusion says so explicitly and keeps it so.
KEEP_UNFOLDED = frozenset({"QuantizeLinear", "DequantizeLinear"})


@dataclass
class Preparation:
    """The prepared model and what was done to it (JSON-able for the report)."""

    model: Model
    folding: dict[str, Any] = field(default_factory=dict)
    int64: dict[str, Any] = field(default_factory=dict)
    operators: dict[str, Any] = field(default_factory=dict)


def fold_constants(model: Model) -> tuple[Model, dict[str, Any]]:
    """onnx-graphsurgeon's fold_constants + cleanup + toposort, Q/DQ nodes excluded."""
    graph = model.to_graphsurgeon()
    before = len(graph.nodes)
    graph.fold_constants(should_exclude_node=lambda node: node.op in KEEP_UNFOLDED)
    graph.cleanup().toposort()
    folded = Model.from_graphsurgeon(graph, like=model)
    return folded, {
        "nodes_before": before,
        "nodes_after": len(graph.nodes),
        "kept_unfolded": sorted(KEEP_UNFOLDED),
    }


def prepare(model: Model, fold: bool = True) -> Preparation:
    """Fold (when asked), narrow int64 initializers, then check the operators of the result."""
    folding: dict[str, Any] = {"enabled": fold}
    current = model
    if fold:
        current, info = fold_constants(model)
        folding.update(info)
    # Always, folding or not: TensorRT cannot parse a DequantizeLinear of int32 (onnxruntime's biases).
    unbiased, biases = fold_int32_bias_dequantize(current.proto)
    folding["int32_bias_dequantize_folded"] = biases
    if biases:
        current = current.replace(unbiased)
    narrowed, int64_record = narrow_int64(current.proto)
    current = current.replace(narrowed)
    return Preparation(current, folding, int64_record, check_operators(current.proto))
