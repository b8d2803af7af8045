"""Lower a static-shape ONNX graph to a list of kernel calls (`Op`) over named tensors.

Constants are folded here (onnx's reference evaluator), QuantizeLinear->DequantizeLinear pairs become
fake-quantization ops, DQ->Conv/Gemm/MatMul->Q patterns with symmetric int8 become int8 kernels, and
activations are fused into the producing convolution or GEMM.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from edgeplug import Model, PluginError
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from . import passes
from .linear import lower_conv, lower_gemm
from .program import ACT_CODES, ALIAS_OPS, QRANGE, Op, Program, QuantWeight
from .window import lower_pool


def lower(model: Model) -> Program:
    """Model (static shapes, supported ops) -> Program."""
    proto = model.proto
    graph = proto.graph
    opset = model.opset
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    qweights: dict[str, QuantWeight] = {}
    inputs = [i.name for i in Model.graph_inputs(proto)]
    outputs = [o.name for o in graph.output]
    producers: dict[str, Op] = {}
    ops: list[Op] = []

    for node in graph.node:
        ins = list(node.input)
        if _fold(node, consts, shapes, qweights):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        out = node.output[0]
        if out not in shapes:
            raise PluginError(
                f"neon: the shape of {out} (output of {node.name or node.op_type}) is unknown; "
                "run shape inference or pin the inputs with --input-shapes"
            )
        new = _lower_node(
            node.op_type, node.name, ins, out, attrs, shapes, consts, qweights, producers, opset
        )
        for op in new:
            for o in op.outputs:
                producers[o] = op
            ops.append(op)
    for name in outputs:
        if name not in shapes and name in consts:
            shapes[name] = tuple(consts[name].shape)
    program = Program(shapes, {k: v for k, v in consts.items()}, ops, inputs, outputs)
    passes.fuse_activations(program)
    passes.fuse_output_quant(program)
    passes.fuse_activations(program)  # a Relu after an int8 kernel's own output quantization
    passes.drop_dead(program)
    for name in program.consts:
        program.shapes.setdefault(name, tuple(program.consts[name].shape))
    return program


# -- constant folding -------------------------------------------------------------------------------


def _fold(
    node: onnx.NodeProto,
    consts: dict[str, np.ndarray],
    shapes: dict[str, tuple[int, ...]],
    qweights: dict[str, QuantWeight],
) -> bool:
    """Evaluate a node whose inputs are all constant (or Shape of a static tensor); True if folded."""
    if node.op_type == "Constant":
        value = ReferenceEvaluator(node).run(None, {})[0]
        consts[node.output[0]] = np.asarray(value)
        return True
    if node.op_type == "Shape" and node.input[0] in shapes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        dims = shapes[node.input[0]]
        consts[node.output[0]] = np.array(dims[attrs.get("start", 0) : attrs.get("end", len(dims))], np.int64)
        return True
    present = [i for i in node.input if i]
    if not present or not all(i in consts for i in present):
        return False
    feeds = {i: consts[i] for i in present}
    results = ReferenceEvaluator(node).run(None, feeds)
    for name, value in zip(node.output, results):
        consts[name] = np.asarray(value)
    if node.op_type == "DequantizeLinear":
        raw = consts[node.input[0]]
        if raw.dtype in (np.int8, np.uint8):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            zp = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(1, raw.dtype)
            axis = int(attrs.get("axis", 1))
            qweights[node.output[0]] = QuantWeight(
                raw, np.asarray(consts[node.input[1]], np.float32), zp, axis % max(raw.ndim, 1)
            )
    return True


# -- node lowering ----------------------------------------------------------------------------------


def _lower_node(
    op_type: str,
    name: str,
    ins: list[str],
    out: str,
    attrs: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    consts: dict[str, np.ndarray],
    qweights: dict[str, QuantWeight],
    producers: dict[str, Op],
    opset: int,
) -> list[Op]:
    def shape(t: str) -> tuple[int, ...]:
        if t in consts:
            return tuple(consts[t].shape)
        return shapes[t]

    if op_type in ALIAS_OPS:
        return [Op("alias", [ins[0]], [out], name=name)]
    if op_type in ACT_CODES:
        p0, p1 = _act_params(op_type, ins, attrs, consts)
        return [Op("act", [ins[0]], [out], {"act": ACT_CODES[op_type], "p0": p0, "p1": p1}, name)]
    if op_type in ("Add", "Mul"):
        return [
            Op(
                "binary",
                ins[:2],
                [out],
                {"op": op_type, "a_shape": shape(ins[0]), "b_shape": shape(ins[1])},
                name,
            )
        ]
    if op_type == "Conv":
        return [lower_conv(name, ins, out, attrs, shapes, consts, qweights, producers)]
    if op_type in ("Gemm", "MatMul"):
        return lower_gemm(op_type, name, ins, out, attrs, shapes, consts, qweights, producers)
    if op_type in ("MaxPool", "AveragePool"):
        return [lower_pool(op_type, name, ins, out, attrs, shapes)]
    if op_type == "GlobalAveragePool":
        s = shapes[ins[0]]
        return [Op("gap", [ins[0]], [out], {"C": s[0] * s[1], "HW": int(np.prod(s[2:]))}, name)]
    if op_type == "Softmax":
        s = shapes[ins[0]]
        axis = int(attrs.get("axis", -1 if opset >= 13 else 1)) % len(s)
        if opset >= 13:
            outer, n, inner = int(np.prod(s[:axis])), s[axis], int(np.prod(s[axis + 1 :]))
        else:
            outer, n, inner = int(np.prod(s[:axis])), int(np.prod(s[axis:])), 1
        return [Op("softmax", [ins[0]], [out], {"outer": outer, "n": n, "inner": inner}, name)]
    if op_type == "Resize":
        return [_lower_resize(name, op_type, ins, out, attrs, shapes, consts)]
    if op_type == "Concat":
        s = shapes[out]
        axis = int(attrs["axis"]) % len(s)
        return [
            Op(
                "concat",
                ins,
                [out],
                {
                    "outer": int(np.prod(s[:axis])),
                    "blocks": [int(np.prod(shape(i)[axis:])) for i in ins],
                    "stride": int(np.prod(s[axis:])),
                },
                name,
            )
        ]
    if op_type == "QuantizeLinear":
        return [Op("quantize", [ins[0]], [out], _qparams(ins, attrs, consts, name), name)]
    if op_type == "DequantizeLinear":
        src = producers.get(ins[0])
        if src is None or src.kind != "quantize":
            raise PluginError(
                f"neon: DequantizeLinear {name} does not follow a QuantizeLinear; "
                "only QDQ pairs on activations are supported"
            )
        return [Op("fakequant", list(src.inputs), [out], dict(src.attrs), name)]
    raise PluginError(f"neon: operator {op_type} ({name}) is not supported")


def _act_params(
    op_type: str, ins: list[str], attrs: dict[str, Any], consts: dict[str, np.ndarray]
) -> tuple[float, float]:
    if op_type == "Clip":
        lo, hi = attrs.get("min", -np.inf), attrs.get("max", np.inf)
        if len(ins) > 1 and ins[1]:
            lo = float(consts[ins[1]]) if ins[1] in consts else None
        if len(ins) > 2 and ins[2]:
            hi = float(consts[ins[2]]) if ins[2] in consts else None
        if lo is None or hi is None:
            raise PluginError("neon: Clip with non-constant min/max is not supported")
        return float(lo), float(hi)
    if op_type == "HardSigmoid":
        return float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    return 0.0, 0.0


def _qparams(
    ins: list[str], attrs: dict[str, Any], consts: dict[str, np.ndarray], name: str
) -> dict[str, Any]:
    scale = consts.get(ins[1])
    zp = consts.get(ins[2]) if len(ins) > 2 and ins[2] else np.zeros((), np.uint8)
    if scale is None or zp is None or scale.size != 1 or zp.size != 1:
        raise PluginError(f"neon: QuantizeLinear {name} needs a constant per-tensor scale and zero point")
    dtype = onnx.helper.np_dtype_to_tensor_dtype(zp.dtype)
    if dtype not in QRANGE:
        raise PluginError(
            f"neon: QuantizeLinear {name} quantizes to {zp.dtype}; only int8 and uint8 are supported"
        )
    qmin, qmax = QRANGE[dtype]
    return {"scale": float(scale.reshape(())), "zp": int(zp.reshape(())), "qmin": qmin, "qmax": qmax}


def _lower_resize(
    name: str,
    op_type: str,
    ins: list[str],
    out: str,
    attrs: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    consts: dict[str, np.ndarray],
) -> Op:
    """Nearest-neighbour Resize over H and W as a gather with a source index per output pixel. The table
    is computed by onnx's reference Resize itself on a probe image holding each pixel's index, so every
    coordinate_transformation_mode and nearest_mode is reproduced exactly."""
    mode = attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    xs, os_ = shapes[ins[0]], shapes[out]
    if mode != "nearest":
        raise PluginError(f"neon: Resize {name} uses mode={mode}; only mode=nearest compiles")
    if len(xs) != 4 or xs[:2] != os_[:2]:
        raise PluginError(f"neon: Resize {name} must keep batch and channels (NCHW, resizing H and W only)")
    if any(i and i not in consts for i in ins[1:]):
        raise PluginError(f"neon: Resize {name} needs constant roi/scales/sizes")
    H, W = xs[2], xs[3]
    probe = np.arange(H * W, dtype=np.float32).reshape(1, 1, H, W)
    feeds = {ins[0]: probe}
    for position, tensor in enumerate(ins[1:], 1):
        if not tensor:
            continue
        value = consts[tensor]
        if position == 3 and value.size == 4:  # sizes: the probe has one channel
            value = np.array([1, 1, *value.reshape(-1)[2:]], dtype=value.dtype)
        feeds[tensor] = value
    node = helper.make_node(op_type, ins, [out], **attrs)
    index = np.asarray(ReferenceEvaluator(node).run(None, feeds)[0])
    if index.shape[2:] != os_[2:]:
        raise PluginError(f"neon: Resize {name}: cannot derive its index table")
    return Op(
        "gather",
        [ins[0]],
        [out],
        {
            "C": xs[0] * xs[1],
            "HW": H * W,
            "OHW": os_[2] * os_[3],
            "index": index.reshape(-1).astype(np.int32),
        },
        name,
    )
