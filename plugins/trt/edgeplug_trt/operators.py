"""The ONNX operators TensorRT's ONNX parser supports, as data, and the check of a graph against them.

Source: onnx/onnx-tensorrt, docs/operators.md, "TensorRT 10.15 supports operators in the inclusive range
of opset 9 to opset 24" (the support matrix of the TensorRT 10.x parser; rows marked Y are SUPPORTED,
rows marked N are UNSUPPORTED). RESTRICTIONS keeps the matrix's notes for the operators that have one.
An operator outside both sets (e.g. a custom-domain op) is unknown to the parser: it only builds if a
TensorRT plugin of that name is registered.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import onnx

TABLE_SOURCE = "onnx/onnx-tensorrt docs/operators.md"
TABLE_TENSORRT_VERSION = "10.15"
OPSET_RANGE = (9, 24)


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


SUPPORTED = _names(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
    BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
    CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
    Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
    Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish
    Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
    LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike
    Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
    ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN RoiAlign
    RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid
    Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
    TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """
)

UNSUPPORTED = _names(
    """
    AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad Compress
    ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool
    MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement
    OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty
    SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence
    StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
    """
)

RESTRICTIONS = {
    "AveragePool": "2D or 3D pooling only; dilations empty or all ones",
    "MaxPool": "2D or 3D pooling only; the Indices output is unsupported; dilations empty or all ones",
    "LpPool": "dilations empty or all ones",
    "CumSum": "axis must be a build-time constant",
    "DequantizeLinear": "x_zero_point must be zero",
    "QuantizeLinear": "y_zero_point must be zero",
    "Dropout": "is_training must be an initializer evaluating to False",
    "EyeLike": "input must have static dimensions",
    "Hardmax": "the axis dimension must be a build-time constant",
    "If": "both branches' outputs must have the same rank and different names",
    "LayerNormalization": "only the first output Y is supported",
    "Loop": "scan output length cannot be dynamic; loop-carried shapes must not change across iterations",
    "LSTM": "bidirectional: same activations both ways; input_forget and layout must be 0",
    "GRU": "bidirectional: same activations both ways",
    "RNN": "bidirectional: same activations both ways",
    "OneHot": "depth must be a build-time constant",
    "Resize": "modes nearest/linear only (no cubic), no antialias, aspect ratio policy stretch",
    "ScatterND": "reduction must be none",
    "TopK": "sorted must be 1; K below 3840",
    "GridSample": "input must be 4D",
    "Squeeze": "axes must be resolvable to a constant",
    "Unsqueeze": "axes must be resolvable to a constant",
    "ReduceMean": "axes must be an initializer",
    "ReduceSum": "axes must be an initializer",
    "ReduceMax": "axes must be an initializer",
    "ReduceMin": "axes must be an initializer",
    "ReduceProd": "axes must be an initializer",
    "STFT": "frame_step and window must be initializers; real-valued input",
}

STANDARD_DOMAINS = ("", "ai.onnx")


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _restriction_violation(node: onnx.NodeProto, used: set[str]) -> str | None:
    """The checks of the matrix's restrictions that can be decided from the graph alone."""
    op = node.op_type
    if op == "MaxPool" and len(node.output) > 1 and node.output[1] in used:
        return "MaxPool's Indices output is used, and TensorRT does not support it"
    if op == "LayerNormalization" and any(o in used for o in node.output[1:]):
        return "LayerNormalization's Mean/InvStdDev outputs are used; TensorRT supports only Y"
    if op == "Resize":
        mode = _attr(node, "mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ("nearest", "linear"):
            return f"Resize mode {mode!r} is not supported (nearest and linear are)"
        if _attr(node, "antialias", 0):
            return "Resize with antialias is not supported"
    if op == "TopK" and _attr(node, "sorted", 1) != 1:
        return "TopK with sorted=0 is not supported"
    if op == "ScatterND":
        reduction = _attr(node, "reduction", b"none")
        reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
        if reduction != "none":
            return f"ScatterND reduction {reduction!r} is not supported"
    if op in ("AveragePool", "MaxPool", "LpPool"):
        dilations = _attr(node, "dilations", [])
        if dilations and any(d != 1 for d in dilations):
            return f"{op} with dilations {list(dilations)} is not supported"
    return None


def _nodes(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            for sub in attr.graphs:
                yield from _nodes(sub)


def _used_tensors(graph: onnx.GraphProto) -> set[str]:
    used = {o.name for o in graph.output}
    for node in _nodes(graph):
        used.update(i for i in node.input if i)
    return used


def check_operators(proto: onnx.ModelProto) -> dict[str, Any]:
    """Every node (subgraphs included) against the table: unsupported, unknown and restricted ops."""
    used = _used_tensors(proto.graph)
    unsupported: list[dict[str, str]] = []
    custom: list[dict[str, str]] = []
    counts: dict[str, int] = {}
    restrictions: dict[str, str] = {}
    for node in _nodes(proto.graph):
        name = node.name or f"<unnamed {node.op_type}>"
        if node.domain not in STANDARD_DOMAINS:
            key = f"{node.domain}.{node.op_type}"
            counts[key] = counts.get(key, 0) + 1
            custom.append(
                {
                    "node": name,
                    "op_type": node.op_type,
                    "domain": node.domain,
                    "reason": "not an ONNX-domain operator; needs a TensorRT plugin registered "
                    f"as {node.op_type!r}",
                }
            )
            continue
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        if node.op_type in UNSUPPORTED:
            unsupported.append(
                {
                    "node": name,
                    "op_type": node.op_type,
                    "reason": "marked unsupported (N) in the TensorRT parser's matrix",
                }
            )
        elif node.op_type not in SUPPORTED:
            unsupported.append(
                {
                    "node": name,
                    "op_type": node.op_type,
                    "reason": "not in the TensorRT parser's operator matrix",
                }
            )
        else:
            violation = _restriction_violation(node, used)
            if violation:
                unsupported.append({"node": name, "op_type": node.op_type, "reason": violation})
            elif node.op_type in RESTRICTIONS:
                restrictions[node.op_type] = RESTRICTIONS[node.op_type]
    opset = next((i.version for i in proto.opset_import if i.domain in STANDARD_DOMAINS), 0)
    low, high = OPSET_RANGE
    return {
        "table": f"{TABLE_SOURCE}, TensorRT {TABLE_TENSORRT_VERSION}, opsets {low}-{high}",
        "opset": opset,
        "opset_supported": low <= opset <= high,
        "operators": dict(sorted(counts.items())),
        "unsupported": unsupported,
        "custom_domain": custom,
        "restrictions_to_respect": restrictions,
    }
