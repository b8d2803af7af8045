"""Static INT8 through NNCF's post-training quantization (full bias correction), laid out for onnxruntime.

NNCF corrects each layer's bias for the shift its quantization causes, which onnxruntime's quantizer does not:
on the zoo's MobileNetV2 (64 calibration crops) top-1 agreement with FP32 rose from 0.78 (onnxruntime's
documented recipe) to 0.89-0.90. NNCF lays its Q/DQ out for OpenVINO, which onnxruntime's CPU kernels do
not combine into int8 kernels: activations per channel, signed activations beside unsigned ones, float
biases. We ask NNCF for per-tensor asymmetric activations and then rewrite two things
exactly, or within int32 rounding of the bias:
- each float bias of a Conv/Gemm whose input and weight are dequantized becomes an int32 tensor with scale
  input scale x weight scale (what onnxruntime's quantizer writes), so the node fuses into QLinearConv;
- each int8 activation quantizer becomes uint8 with its zero point + 128 (the same values: onnxruntime fuses
  only when a node's input and output types agree).
Timed once while writing this (MobileNetV2, ImageNet weights, 1 thread, a loaded 2-core Xeon with AVX-512 VNNI
and AMX; not a benchmark: benchmarks/perf_table.py measures the kept models), FP32 beside each: NNCF's defaults
26.4 vs 9.1 ms; per-tensor asymmetric activations 8.1 vs 8.3 ms; then both rewrites 4.0 vs 7.0 ms.
NNCF is optional (`pip install edgeplug-quantize[nncf]`); without it auto does not plan this recipe.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .keep_float import drop_unused
from .prepare import constants_to_initializers

if TYPE_CHECKING:
    from .ptq import Recipe

Sample = dict[str, np.ndarray]
INT32 = np.iinfo(np.int32)


def available() -> bool:
    """NNCF is installed (checked without importing it: its import loads torch when torch is installed)."""
    return importlib.util.find_spec("nncf") is not None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF's progress bars, INFO lines and warnings are not the user's business: the step reports."""
    # NNCF sends usage telemetry (openvino-telemetry, opt-out) from each quantize call; a plugin does not let
    # a library report on the user's behalf. NNCF reads NNCF_CI only to turn that off (nncf/telemetry/
    # wrapper.py, checked at import); a value the user set wins.
    os.environ.setdefault("NNCF_CI", "1")
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def quantize_nncf(proto: onnx.ModelProto, recipe: Recipe, calibration: Sequence[Sample]) -> onnx.ModelProto:
    """`proto` quantized by nncf.quantize (mixed preset: symmetric per-channel s8 weights, asymmetric
    per-tensor activations; full bias correction), excluded nodes and op types in NNCF's ignored scope, then
    rewritten for onnxruntime (integer biases, uint8 activations)."""
    with _quiet():
        import nncf
        from nncf.common.quantization.structs import QuantizationScheme
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            QuantizationParameters,
        )

        advanced = AdvancedQuantizationParameters(
            activations_quantization_params=QuantizationParameters(
                per_channel=False, mode=QuantizationScheme.ASYMMETRIC
            )
        )
        ignored = nncf.IgnoredScope(
            names=list(recipe.exclude_nodes), types=list(recipe.exclude_types), validate=False
        )
        quantized = nncf.quantize(
            proto,
            nncf.Dataset(list(calibration)),
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(calibration),
            fast_bias_correction=False,
            ignored_scope=ignored,
            advanced_parameters=advanced,
        )
    quantized, _ = constants_to_initializers(quantized)  # scales NNCF writes as Constant nodes, if any
    integer_biases(quantized)
    unsigned_activations(quantized)
    return drop_unused(quantized)  # the float biases replaced by int32 ones


def integer_biases(model: onnx.ModelProto) -> list[str]:
    """Replace the float bias of every Conv/ConvTranspose/Gemm fed by dequantized input and weight with
    DequantizeLinear(int32 bias, input scale x weight scale, 0), in place (scales and biases are read from
    initializers; the float biases are left for `drop_unused`). A bias whose scale is zero or whose integer
    would overflow int32 stays float. Returns the nodes changed."""
    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    made = {out: n for n in graph.node for out in n.output}
    added: list[onnx.NodeProto] = []
    changed: list[str] = []
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(node.input) < 3:
            continue
        bias_name = node.input[2]
        if bias_name not in consts:
            continue
        x_dq, w_dq = made.get(node.input[0]), made.get(node.input[1])
        if not (x_dq and w_dq and x_dq.op_type == w_dq.op_type == "DequantizeLinear"):
            continue
        if x_dq.input[1] not in consts or w_dq.input[1] not in consts:
            continue
        bias = numpy_helper.to_array(consts[bias_name]).astype(np.float64)
        x_scale = numpy_helper.to_array(consts[x_dq.input[1]]).astype(np.float64)
        w_scale = numpy_helper.to_array(consts[w_dq.input[1]]).astype(np.float64)
        if x_scale.size != 1 or w_scale.size not in (1, bias.size):
            continue
        scale = np.broadcast_to(x_scale.reshape(()) * w_scale.reshape(-1), bias.shape)
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            continue
        values = np.round(bias / scale)
        if np.any(values < INT32.min) or np.any(values > INT32.max):
            continue
        base = f"{bias_name}_int32"
        graph.initializer.extend(
            [
                numpy_helper.from_array(values.astype(np.int32), base),
                numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale"),
                numpy_helper.from_array(np.zeros(bias.shape, np.int32), f"{base}_zero_point"),
            ]
        )
        added.append(
            helper.make_node(
                "DequantizeLinear",
                [base, f"{base}_scale", f"{base}_zero_point"],
                [f"{base}_dequantized"],
                name=f"{base}_DequantizeLinear",
                axis=0,
            )
        )
        node.input[2] = f"{base}_dequantized"
        changed.append(node.name)
    if added:
        nodes = [*added, *graph.node]
        del graph.node[:]
        graph.node.extend(nodes)
    return changed


def unsigned_activations(model: onnx.ModelProto) -> int:
    """Turn every int8 activation quantizer (zero point z) into uint8 with zero point z + 128, in place: the
    quantized values shift by 128 and dequantize to the same numbers. Zero points also used by a weight's
    DequantizeLinear, or not shared by a quantizer and its dequantizers, stay as they are. Returns the number of zero points changed."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    weight_zero_points = {
        n.input[2]
        for n in graph.node
        if n.op_type == "DequantizeLinear" and len(n.input) > 2 and n.input[0] in inits
    }
    # a QuantizeLinear and the DequantizeLinear nodes it feeds must share the zero point they change together
    quantizers = {n.output[0]: n for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    for node in graph.node:
        q = (
            quantizers.get(node.input[0])
            if node.op_type == "DequantizeLinear" and len(node.input) > 2
            else None
        )
        if q is not None and q.input[2] != node.input[2]:
            weight_zero_points.update((q.input[2], node.input[2]))
    changed = 0
    done: set[str] = set()
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        name = node.input[2]
        if node.input[0] in inits or name in weight_zero_points or name in done or name not in inits:
            continue
        zero_point = inits[name]
        if zero_point.data_type != TensorProto.INT8:
            continue
        shifted = numpy_helper.to_array(zero_point).astype(np.int16) + 128
        zero_point.CopyFrom(numpy_helper.from_array(shifted.astype(np.uint8), name))
        done.add(name)
        changed += 1
    if changed:
        del graph.value_info[:]  # the types of the quantized tensors changed; onnxruntime re-infers them
    return changed
