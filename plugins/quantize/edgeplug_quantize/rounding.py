"""Error-compensating rounding of the int8 weights of a static Q/DQ model: GPTQ (Frantar et al., 2022), the
optimal-brain-quantizer update applied one input column at a time, for each Conv, Gemm and MatMul by a
constant. Each column is rounded to the grid, and its rounding error is spread over the columns not yet
rounded in proportion to the inverse of H = X^T X, where X holds the node's (quantized) inputs on calibration
samples: the integers change, the scales, zero points and the graph do not, so the model runs exactly as fast
as with nearest rounding.

Nearest rounding treats each weight alone. A depthwise 3x3 filter whose nine weights sum to about zero (an edge
detector) then leaks the input's mean: on the zoo's MobileNetV2 (ImageNet weights), per-channel s8 weights
alone (activations float) scored worst per-sample cosine 0.931 with nearest rounding and 0.998 with this; with
activations quantized too (onnxruntime's u8 minmax), 0.895 and 0.931 (benchmarks/gptq_rounding.py). NNCF's
recipe is not rewritten: its bias correction is computed for its own rounding (measured while writing this:
worst cosine 0.966 with it, 0.947 after GPTQ on float-model inputs).

onnxruntime's static quantizer rounds to nearest; its GPTQ (matmul_nbits_quantizer) is weight-only MatMul
quantization (MatMulNBits). H comes from running the Q/DQ model with its Q/DQ pairs as float operators (what
exact int8 computes, on any CPU), so each node's integers fit the inputs they will really see."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from edgeplug.plugin_api import Model, run_all, tensor_session
from onnx import TensorProto, numpy_helper

Sample = dict[str, np.ndarray]

# Samples whose inputs enter H: on MobileNetV2 (onnxruntime's u8/s8 minmax model, 90 validation crops, measured
# while writing this) 16, 32 and 64 gave worst cosine 0.932, 0.927 and 0.930, the same within the noise; 32 take
# 13 s on a 2-core EPYC.
ROUNDING_SAMPLES = 32
# H is columns^2 float64: 170 MB at this size (a 512-channel 3x3 conv); nodes with more columns stay nearest
MAX_COLUMNS = 4608
ROWS_PER_SAMPLE = 4096  # spatial positions of one sample that enter H (a deterministic subset where more)
DAMP = 0.01  # added to H's diagonal, as a fraction of its mean (GPTQ's default)
INT_TYPES = {TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8}
OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class Layer:
    """One node whose weight is DequantizeLinear(integer initializer, scale, zero point)."""

    node: onnx.NodeProto
    weight: str  # the integer initializer
    scale: np.ndarray  # per row (output channel)
    zero: np.ndarray  # per row
    reference: np.ndarray  # float weights, rows x columns (rows: output channels)
    groups: int
    transposed: bool  # a Gemm/MatMul weight stored [K, N]: rows are its columns


def spread(samples: Sequence[Sample], count: int) -> list[Sample]:
    """At most `count` samples, evenly spaced over `samples` (calibration files are often sorted by class)."""
    if len(samples) <= count:
        return list(samples)
    return [samples[int(i)] for i in np.linspace(0, len(samples) - 1, count).round()]


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _layers(quantized: onnx.ModelProto, reference: onnx.ModelProto) -> list[Layer]:
    """The Conv (2-D), Gemm and MatMul nodes of `quantized` fed by a dequantized activation and dequantized
    integer weights, with the float weights of the same node in `reference` (matched by name, op type and shape)."""
    inits = {t.name: t for t in quantized.graph.initializer}
    made = {out: n for n in quantized.graph.node for out in n.output}
    uses: dict[str, int] = {}
    for n in quantized.graph.node:
        for name in n.input:
            uses[name] = uses.get(name, 0) + 1
    ref_inits = {t.name: t for t in reference.graph.initializer}
    ref_nodes = {n.name: n for n in reference.graph.node if n.name}
    found = []
    for node in quantized.graph.node:
        ref = ref_nodes.get(node.name)
        if node.op_type not in OPS or ref is None or ref.op_type != node.op_type:
            continue
        x, w = made.get(node.input[0]), made.get(node.input[1])
        if x is None or w is None or x.op_type != "DequantizeLinear" or w.op_type != "DequantizeLinear":
            continue
        if x.input[0] in inits or w.input[0] not in inits or w.input[1] not in inits:
            continue
        if uses.get(w.input[0], 0) != 1 or inits[w.input[0]].data_type not in INT_TYPES:
            continue
        if ref.input[1] not in ref_inits:
            continue
        values = numpy_helper.to_array(inits[w.input[0]])
        weights = numpy_helper.to_array(ref_inits[ref.input[1]]).astype(np.float64)
        if weights.shape != values.shape:
            continue
        if node.op_type == "Conv":
            if values.ndim != 4 or _attr(node, "auto_pad", b"NOTSET") != b"NOTSET":
                continue
            rows, transposed, axis = weights.reshape(len(weights), -1), False, 0
        else:  # Gemm, or MatMul by a constant [K, N]: Y = X W, rows are W's columns
            if values.ndim != 2 or _attr(node, "transA", 0):
                continue
            transposed = node.op_type == "MatMul" or not _attr(node, "transB", 0)
            rows, axis = (weights.T, 1) if transposed else (weights, 0)
        if rows.shape[1] > MAX_COLUMNS:
            continue
        scale = numpy_helper.to_array(inits[w.input[1]]).astype(np.float64).reshape(-1)
        zero = (
            numpy_helper.to_array(inits[w.input[2]]).astype(np.float64).reshape(-1)
            if len(w.input) > 2 and w.input[2] in inits
            else np.zeros(1)
        )
        w_axis = int(_attr(w, "axis", 1))
        if scale.size > 1 and (w_axis % values.ndim != axis or scale.size != len(rows)):
            continue
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            continue
        groups = int(_attr(node, "group", 1)) if node.op_type == "Conv" else 1
        found.append(
            Layer(
                node,
                w.input[0],
                np.broadcast_to(scale, (len(rows),)).copy(),
                np.broadcast_to(zero, (len(rows),)).copy(),
                rows,
                groups,
                transposed,
            )
        )
    return found


def patches(x: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    """A Conv's input [N, C, H, W] as the rows its weights multiply: [positions, groups, C/groups*kh*kw]."""
    kh, kw = _attr(node, "kernel_shape", None) or (1, 1)
    sh, sw = _attr(node, "strides", [1, 1])
    dh, dw = _attr(node, "dilations", [1, 1])
    top, left, bottom, right = _attr(node, "pads", [0, 0, 0, 0])
    groups = int(_attr(node, "group", 1))
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    view = np.lib.stride_tricks.sliding_window_view(padded, span, axis=(2, 3))
    view = view[:, :, ::sh, ::sw, ::dh, ::dw]  # N C Ho Wo kh kw
    n, c, ho, wo = view.shape[:4]
    return view.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, groups, c // groups * kh * kw)


def _rows_of(x: np.ndarray, layer: Layer) -> np.ndarray:
    if layer.node.op_type == "Conv":
        return patches(x, layer.node)
    return x.reshape(-1, 1, layer.reference.shape[1])  # Gemm [N, K]; MatMul [..., K]


def hessians(
    quantized: onnx.ModelProto, layers: Sequence[Layer], samples: Sequence[Sample]
) -> list[np.ndarray]:
    """H = X^T X per group of each layer, X its inputs with the model's Q/DQ pairs run as float operators."""
    names = list(dict.fromkeys(layer.node.input[0] for layer in layers))
    sess = tensor_session(Model(quantized), names, qdq_as_float=True)
    rng = np.random.default_rng(0)
    totals: list[np.ndarray | None] = [None] * len(layers)
    for sample in samples:
        outputs = run_all(sess, [sample])
        for i, layer in enumerate(layers):
            rows = _rows_of(np.asarray(outputs[layer.node.input[0]], dtype=np.float32), layer)
            if len(rows) > ROWS_PER_SAMPLE:
                rows = rows[np.sort(rng.choice(len(rows), ROWS_PER_SAMPLE, replace=False))]
            grouped = rows.astype(np.float64).transpose(1, 0, 2)  # groups, positions, columns
            h = np.matmul(grouped.transpose(0, 2, 1), grouped)
            totals[i] = h if totals[i] is None else totals[i] + h
    return [t if t is not None else np.zeros((1, 1, 1)) for t in totals]


def gptq(
    weights: np.ndarray, h: np.ndarray, scale: np.ndarray, zero: np.ndarray, low: np.ndarray, high: np.ndarray
) -> np.ndarray:
    """Integers for `weights` [groups, rows, columns] on the grid (scale, zero point, bounds: [groups, rows]),
    each column's rounding error compensated on the later columns of its row through its group's H^-1
    (h: [groups, columns, columns])."""
    w = weights.astype(np.float64).copy()
    h = h.astype(np.float64).copy()
    diagonal = np.diagonal(h, axis1=1, axis2=2).copy()  # groups, columns
    dead = diagonal == 0
    diagonal[dead] = 1.0
    w[np.broadcast_to(dead[:, None, :], w.shape)] = 0.0
    diagonal += DAMP * diagonal.mean(axis=1, keepdims=True)
    index = np.arange(h.shape[1])
    h[:, index, index] = diagonal
    upper = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)  # H^-1 = U^T U, U upper triangular
    q = np.zeros_like(w)
    s, z = scale[..., None], zero[..., None]
    lo, hi = low[..., None], high[..., None]
    for i in range(w.shape[2]):
        column = w[:, :, i : i + 1]
        q[:, :, i : i + 1] = np.clip(np.round(column / s) + z, lo, hi)
        error = (column - (q[:, :, i : i + 1] - z) * s) / upper[:, i, i][:, None, None]
        w[:, :, i:] -= error * upper[:, None, i, i:]
    return q


def compensate(
    quantized: onnx.ModelProto, reference: onnx.ModelProto, samples: Sequence[Sample]
) -> list[str]:
    """Re-round, in place, the integer weights of every Conv/Gemm/MatMul of the static Q/DQ model `quantized`
    whose float weights `reference` holds under the same node name; returns the nodes changed. Each row keeps the
    range its nearest rounding used (the end of the grid stays where the quantizer put it)."""
    layers = _layers(quantized, reference)
    if not layers or not samples:
        return []
    inits = {t.name: t for t in quantized.graph.initializer}
    changed = []
    for layer, h in zip(layers, hessians(quantized, layers, samples)):
        stored = inits[layer.weight]
        current = numpy_helper.to_array(stored)
        nearest = (current.T if layer.transposed else current).reshape(len(layer.reference), -1)
        info = np.iinfo(INT_TYPES[stored.data_type])
        reach = np.abs(nearest.astype(np.float64) - layer.zero[:, None]).max(axis=1)
        low = np.maximum(layer.zero - reach, info.min)
        high = np.minimum(layer.zero + reach, info.max)
        if h.shape[0] != layer.groups or h.shape[1] != layer.reference.shape[1]:
            continue
        shape = (layer.groups, len(layer.reference) // layer.groups)
        result = gptq(
            layer.reference.reshape(*shape, -1),
            h,
            *(a.reshape(shape) for a in (layer.scale, layer.zero, low, high)),
        ).reshape(len(layer.reference), -1)
        result = result.T if layer.transposed else result
        stored.CopyFrom(
            numpy_helper.from_array(result.reshape(current.shape).astype(current.dtype), stored.name)
        )
        changed.append(layer.node.name)
    return changed
