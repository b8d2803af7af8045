"""Fold inference-mode BatchNormalization into the Conv, ConvTranspose, Gemm or MatMul before it.

BN(y) = (y - mean) * s + beta with s = gamma / sqrt(var + eps), per channel (axis 1): the producer's
output channels are scaled by s and its bias b becomes (b - mean) * s + beta. The arithmetic is done in
the statistics' precision (float32 for float32 models) in the order onnxruntime's own ConvBNFusion uses,
so under onnxruntime the folded model computes what the unfolded one computes, to the bit where it can.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from .patterns import (
    Names,
    constant,
    exclusive,
    is_omitted,
    is_output,
    is_rewritable,
    move_output,
    nodes_of,
    producer,
    reviewed,
)

FOLDABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class Affine:
    """The per-channel affine map of an inference BatchNormalization, in its compute dtype."""

    scale: np.ndarray
    beta: np.ndarray
    mean: np.ndarray

    @classmethod
    def of(cls, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float) -> Affine:
        dtype = gamma.dtype if gamma.dtype in (np.float32, np.float64) else np.dtype(np.float32)
        gamma, beta, mean, var = (np.asarray(p, dtype=dtype).reshape(-1) for p in (gamma, beta, mean, var))
        scale = gamma / np.sqrt(var + dtype.type(eps))
        return cls(scale, beta, mean)

    @property
    def size(self) -> int:
        return int(self.scale.size)

    def weights(self, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """`values` with its output channels scaled; `shape` puts the channels on the right axis."""
        return (values.astype(self.scale.dtype) * self.scale.reshape(shape)).astype(values.dtype)

    def bias(self, old: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
        """(old - mean) * scale + beta, or beta - mean * scale without a bias (broadcast on the last axis)."""
        if old is None:
            return (self.beta - self.mean * self.scale).astype(dtype)
        return ((old.astype(self.scale.dtype) - self.mean) * self.scale + self.beta).astype(dtype)


@dataclass
class BatchNormReport:
    """What the fold did: folds per producer op, and why the BNs it left were left."""

    folded: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "batchnorm_folded": dict(sorted(self.folded.items())),
            "batchnorm_left": dict(sorted(self.skipped.items())),
        }


def fold_batchnorms(graph: gs.Graph) -> BatchNormReport:
    """Fold every foldable BatchNormalization in place; leave the others with a reason."""
    report = BatchNormReport()
    names = Names(graph)
    for bn in nodes_of(graph, "BatchNormalization"):
        prod = producer(bn.inputs[0])
        reason = _fold_one(graph, bn, names)
        if reason is None:
            report.folded[prod.op] += 1  # type: ignore[union-attr]
        else:
            report.skipped[reason] += 1
    return report


def _fold_one(graph: gs.Graph, bn: gs.Node, names: Names) -> str | None:
    """Fold `bn` into its producer and return None, or return why it cannot be folded."""
    if int(bn.attrs.get("training_mode", 0)) != 0:
        return "training mode"
    if len(bn.outputs) != 1 and any(t.outputs or is_output(graph, t) for t in bn.outputs[1:]):
        return "running statistics read"
    if int(bn.attrs.get("spatial", 1)) != 1:
        return "spatial=0"
    params = [constant(t) for t in bn.inputs[1:5]]
    if len(params) != 4 or any(p is None for p in params):
        return "non-constant statistics"
    x = bn.inputs[0]
    prod = producer(x)
    if prod is None or not is_rewritable(graph, prod, *FOLDABLE):
        return f"input not from {'/'.join(FOLDABLE)}"
    if prod.op == "MatMul" and not reviewed(graph, "Gemm"):
        return "Gemm of this opset not reviewed"
    if prod.outputs[0] is not x:
        return "input not the producer's first output"
    if len(x.outputs) != 1 or is_output(graph, x):
        return "input has other consumers"
    gamma, beta, mean, var = params
    if gamma.dtype.kind != "f":  # type: ignore[union-attr]
        return "non-float statistics"
    if not (gamma.size == beta.size == mean.size == var.size):  # type: ignore[union-attr]
        return "statistics of different sizes"
    bn_map = Affine.of(gamma, beta, mean, var, float(bn.attrs.get("epsilon", 1e-5)))  # type: ignore[arg-type]
    fold = {
        "Conv": _fold_conv,
        "ConvTranspose": _fold_conv_transpose,
        "Gemm": _fold_gemm,
        "MatMul": _fold_matmul,
    }
    reason = fold[prod.op](graph, prod, bn_map, names)
    if reason is None and prod.op != "MatMul":  # MatMul is replaced by a Gemm that takes the output
        move_output(bn, prod)
    return reason


def _weights(node: gs.Node, index: int) -> tuple[gs.Constant | None, str | None]:
    """The constant at input `index`, or the reason it cannot be rewritten."""
    if len(node.inputs) <= index or is_omitted(node.inputs[index]):
        return None, None
    tensor = node.inputs[index]
    if not isinstance(tensor, gs.Constant):
        return None, "non-constant weights"
    if not exclusive(tensor, node):
        return None, "shared weights"
    if np.asarray(tensor.values).dtype.kind != "f":
        return None, "non-float weights"
    return tensor, None


def _bias(node: gs.Node, index: int, bn_map: Affine, names: Names, dtype: np.dtype) -> str | None:
    """Rewrite (or add) the per-channel bias at input `index` as (bias - mean) * scale + beta."""
    bias, reason = _weights(node, index)
    if reason:
        return reason
    old = None
    if bias is not None:
        old = np.asarray(bias.values).reshape(-1)
        if old.size != bn_map.size:
            return "bias of unexpected shape"
    values = bn_map.bias(old, dtype)
    new = gs.Constant(names.fresh(f"{node.name or node.op}.bias_folded"), values)
    while len(node.inputs) <= index:
        node.inputs.append(gs.Variable.empty())
    node.inputs[index] = new
    return None


def _fold_conv(graph: gs.Graph, conv: gs.Node, bn_map: Affine, names: Names) -> str | None:
    w, reason = _weights(conv, 1)
    if w is None:
        return reason or "non-constant weights"
    values = np.asarray(w.values)
    if values.shape[0] != bn_map.size:
        return "channel count mismatch"
    _, reason = _weights(conv, 2)
    if reason:
        return reason
    reason = _bias(conv, 2, bn_map, names, values.dtype)
    if reason is None:
        w.values = bn_map.weights(values, (-1,) + (1,) * (values.ndim - 1))
    return reason


def _fold_conv_transpose(graph: gs.Graph, conv: gs.Node, bn_map: Affine, names: Names) -> str | None:
    w, reason = _weights(conv, 1)
    if w is None:
        return reason or "non-constant weights"
    values = np.asarray(w.values)  # [C_in, M / group, k...]
    group = int(conv.attrs.get("group", 1))
    c_in, per_group = values.shape[0], values.shape[1]
    if c_in % group or per_group * group != bn_map.size:
        return "channel count mismatch"
    _, reason = _weights(conv, 2)
    if reason:
        return reason
    kernel = values.shape[2:]
    grouped = values.reshape((group, c_in // group, per_group, *kernel))
    reason = _bias(conv, 2, bn_map, names, values.dtype)
    if reason is None:
        channels = (group, 1, per_group) + (1,) * len(kernel)
        w.values = bn_map.weights(grouped, channels).reshape(values.shape)
    return reason


def _fold_gemm(graph: gs.Graph, gemm: gs.Node, bn_map: Affine, names: Names) -> str | None:
    b, reason = _weights(gemm, 1)
    if b is None:
        return reason or "non-constant weights"
    values = np.asarray(b.values)
    trans_b = int(gemm.attrs.get("transB", 0))
    n = values.shape[0] if trans_b else values.shape[1]
    if values.ndim != 2 or n != bn_map.size:
        return "channel count mismatch"
    c, reason = _weights(gemm, 2)
    if reason:
        return reason
    old = None
    if c is not None:
        old = np.asarray(c.values)
        if old.ndim > 2 or (old.ndim >= 1 and old.shape[-1] not in (1, n)):
            return "bias of unexpected shape"
        beta = float(gemm.attrs.get("beta", 1.0))
        old = old if beta == 1.0 else old * old.dtype.type(beta)
    bias = bn_map.bias(old, values.dtype)  # broadcasts along the output channels (last axis)
    b.values = bn_map.weights(values, (-1, 1) if trans_b else (1, -1))
    new = gs.Constant(names.fresh(f"{gemm.name or 'Gemm'}.bias_folded"), bias)
    while len(gemm.inputs) < 3:
        gemm.inputs.append(gs.Variable.empty())
    gemm.inputs[2] = new
    gemm.attrs["beta"] = 1.0
    return None


def _fold_matmul(graph: gs.Graph, matmul: gs.Node, bn_map: Affine, names: Names) -> str | None:
    """MatMul(A[M,K], B[K,N]) + BN becomes Gemm(A, B*s, t): only for 2-D A, where BN's channel is N."""
    b, reason = _weights(matmul, 1)
    if b is None:
        return reason or "non-constant weights"
    values = np.asarray(b.values)
    a = matmul.inputs[0]
    if a.shape is None or len(a.shape) != 2:
        return "MatMul input not 2-D"
    if values.ndim != 2 or values.shape[1] != bn_map.size:
        return "channel count mismatch"
    bn = matmul.outputs[0].outputs[0]
    b.values = bn_map.weights(values, (1, -1))
    bias = gs.Constant(names.fresh(f"{matmul.name or 'MatMul'}.bias_folded"), bn_map.bias(None, values.dtype))
    gemm = gs.Node("Gemm", name=matmul.name, inputs=[a, b, bias], outputs=[])
    graph.nodes.append(gemm)
    matmul.inputs.clear()
    matmul.outputs.clear()
    move_output(bn, gemm)
    return None
