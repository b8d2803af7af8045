"""Transformer encoders: detect the pattern on the graph, read heads and hidden size off it, and fuse
LayerNorm, GELU, attention and skip-layernorm with onnxruntime's transformers optimizer."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from edgeplug import MissingDependencyError

from .passes import finish
from .patterns import Names, constant, is_omitted, nodes_of, producer, sole_consumer

LAYERNORM_OPSET = 17  # LayerNormalization is a standard ONNX op from this opset on

# what may sit between the Q.K^T MatMul and the Softmax of an attention block (scale, mask)
_SCORE_OPS = ("Add", "Div", "Mul", "Where", "Cast", "Sub")


@dataclass(frozen=True)
class EncoderInfo:
    """What the graph says about a transformer encoder; 0 means not found."""

    attention_blocks: int
    layernorms: int
    num_heads: int
    hidden_size: int

    @property
    def found(self) -> bool:
        return self.attention_blocks > 0 and self.layernorms > 0

    def as_dict(self) -> dict[str, int]:
        return {
            "attention_blocks": self.attention_blocks,
            "layernorms": self.layernorms,
            "num_heads": self.num_heads,
            "hidden_size": self.hidden_size,
        }


def detect_encoder(graph: gs.Graph) -> EncoderInfo:
    """Count Softmax attention blocks and LayerNorm chains; read heads and head size off the reshapes."""
    attention = sum(1 for softmax in nodes_of(graph, "Softmax") if _is_attention(graph, softmax))
    gammas = [g for g in (_layernorm_gamma(graph, n) for n in nodes_of(graph, "Sqrt")) if g is not None]
    gammas += [
        int(np.asarray(n.inputs[1].values).size)
        for n in nodes_of(graph, "LayerNormalization")
        if isinstance(n.inputs[1], gs.Constant)
    ]
    layernorms = len(gammas) + sum(
        1 for n in nodes_of(graph, "LayerNormalization") if not isinstance(n.inputs[1], gs.Constant)
    )
    shapes = [h for h in (_heads_of_reshape(graph, r) for r in nodes_of(graph, "Reshape")) if h]
    hidden = Counter(gammas).most_common(1)[0][0] if gammas else 0
    num_heads = 0
    known = Counter(shape for shape in shapes if shape[0] > 0)
    if known:  # Reshape to [.., .., heads, head_size]
        (num_heads, head_size), _ = known.most_common(1)[0]
        hidden = num_heads * head_size
    elif (
        shapes and hidden
    ):  # Reshape to [.., .., -1, head_size] (recent transformers): heads = hidden / head_size
        head_size = Counter(shape[1] for shape in shapes).most_common(1)[0][0]
        num_heads = hidden // head_size if hidden % head_size == 0 else 0
    return EncoderInfo(attention, layernorms, num_heads, hidden)


def _is_attention(graph: gs.Graph, softmax: gs.Node) -> bool:
    """Softmax(f(MatMul(q, k))) feeding a MatMul with v: the scaled dot-product attention block."""
    readers = softmax.outputs[0].outputs
    if not any(r.op == "MatMul" for r in readers):
        return False
    node = producer(softmax.inputs[0])
    for _ in range(5):
        if node is None:
            return False
        if node.op == "MatMul":
            return all(constant(t) is None for t in node.inputs)
        if node.op not in _SCORE_OPS:
            return False
        node = next((producer(t) for t in node.inputs if producer(t) is not None), None)
    return False


def _layernorm_gamma(graph: gs.Graph, sqrt: gs.Node) -> int | None:
    """Sqrt(ReduceMean(Pow(x - mean)) + eps) -> Div -> Mul(gamma): the size of gamma, or None."""
    add = producer(sqrt.inputs[0])
    if add is None or add.op != "Add":
        return None
    mean = next((producer(t) for t in add.inputs if producer(t) is not None), None)
    if mean is None or mean.op != "ReduceMean":
        return None
    square = producer(mean.inputs[0])
    if square is None or square.op not in ("Pow", "Mul"):
        return None
    div = sole_consumer(graph, sqrt.outputs[0])
    mul = sole_consumer(graph, div.outputs[0]) if div is not None and div.op == "Div" else None
    if mul is None or mul.op != "Mul":
        return 0
    gamma = next((constant(t) for t in mul.inputs if constant(t) is not None), None)
    return int(gamma.size) if gamma is not None else 0


def _heads_of_reshape(graph: gs.Graph, reshape: gs.Node) -> tuple[int, int] | None:
    """(heads, head_size) from Reshape(x, [.., .., heads, head_size]) -> Transpose(perm 0,2,1,3); heads
    is -1 when the export leaves it to be inferred."""
    transpose = sole_consumer(graph, reshape.outputs[0])
    if transpose is None or transpose.op != "Transpose":
        return None
    if list(transpose.attrs.get("perm", [])) not in ([0, 2, 1, 3], [0, 2, 3, 1]):
        return None
    shape = _shape_values(reshape.inputs[1])
    if shape is None or len(shape) != 4 or shape[3] <= 0:
        return None
    return int(shape[2]), int(shape[3])


def _shape_values(tensor: gs.Tensor) -> list[int] | None:
    """A shape tensor's values when constant, or when a Concat whose last two parts are constant."""
    value = _value(tensor)
    if value is not None:
        return [int(v) for v in value.reshape(-1)]
    concat = producer(tensor)
    if concat is None or concat.op != "Concat" or len(concat.inputs) != 4:
        return None
    tail = [_value(t) for t in concat.inputs[2:]]
    if any(v is None or v.size != 1 for v in tail):
        return None
    return [-1, -1] + [int(v.reshape(-1)[0]) for v in tail]  # type: ignore[union-attr]


def _value(tensor: gs.Tensor) -> np.ndarray | None:
    """Values of an initializer, a Constant node's output, or an Unsqueeze of either."""
    value = constant(tensor)
    if value is not None:
        return value
    node = producer(tensor)
    if node is None:
        return None
    if node.op == "Constant" and "value" in node.attrs:
        return np.asarray(node.attrs["value"].values)
    if node.op == "Unsqueeze":
        return _value(node.inputs[0])
    return None


class _Emitter:
    """Appends nodes named after `base` to `graph`, each writing a fresh tensor (or `output`)."""

    def __init__(self, graph: gs.Graph, names: Names, base: str, dtype: np.dtype) -> None:
        self.graph, self.names, self.base, self.dtype = graph, names, base, dtype

    def __call__(
        self, op: str, inputs: list[gs.Tensor], output: gs.Tensor | None = None, **attrs: object
    ) -> gs.Tensor:
        result = (
            output
            if output is not None
            else gs.Variable(self.names.fresh(f"{self.base}/{op}"), dtype=self.dtype)
        )
        node = gs.Node(
            op, name=self.names.fresh(f"{self.base}/{op}"), attrs=attrs, inputs=inputs, outputs=[result]
        )
        self.graph.nodes.append(node)
        return result

    def const(self, label: str, value: float) -> gs.Constant:
        return gs.Constant(self.names.fresh(f"{self.base}/{label}"), np.array(value, dtype=self.dtype))


def fuse_encoder(
    proto: onnx.ModelProto, num_heads: int, hidden_size: int
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """onnxruntime.transformers.optimizer.optimize_model(model_type="bert") on a copy of `proto`, python
    fusions only (opt_level=0, so no onnxruntime-session rewrites such as MatMul+Add -> Gemm interfere)."""
    try:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as exc:  # pragma: no cover - shipped with onnxruntime
        raise MissingDependencyError(
            f"fuse: the transformer fusions need onnxruntime's transformers package ({exc}); "
            "pip install onnxruntime, or pass -o fuse.transformer=off"
        ) from None
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    options = FusionOptions("bert")
    # bert's default turns the 2-D mask into a 1-D "valid length" index, which assumes right-side
    # padding and changes results for any other mask: keep the raw mask so the fusion stays exact.
    options.use_raw_attention_mask(True)
    with _quiet("onnxruntime.transformers", "onnx_model", "fusion_base"):
        optimizer: Any = optimize_model(
            work,
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=options,
            opt_level=0,
            use_gpu=False,
        )
        stats = {op: n for op, n in optimizer.get_fused_operator_statistics().items() if n}
    fused = optimizer.model
    opset = next((o.version for o in fused.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < LAYERNORM_OPSET and stats.get("LayerNormalization"):
        graph = gs.import_onnx(fused)
        stats["LayerNormalization"] -= decompose_layernorms(graph)
        stats = {op: n for op, n in stats.items() if n}
        fused = gs.export_onnx(graph, do_type_check=False)
    _import_contrib_domains(fused)
    return fused, stats


def _import_contrib_domains(proto: onnx.ModelProto) -> None:
    """Declare the domains the fused nodes use (the optimizer writes com.microsoft nodes without importing
    the domain; onnx.checker refuses that, a graphsurgeon export used to add it)."""
    known = {imp.domain for imp in proto.opset_import}
    used = {node.domain for node in proto.graph.node if node.domain not in ("", "ai.onnx")}
    for domain in sorted(used - known):
        proto.opset_import.append(onnx.helper.make_opsetid(domain, 1))


def decompose_layernorms(graph: gs.Graph) -> int:
    """Write standard-domain LayerNormalization nodes back as ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add.

    The fusion emits LayerNormalization where EmbedLayerNormalization or SkipLayerNormalization did not
    absorb it (static-shape exports); it is a standard op only from opset 17 (onnxruntime runs it below,
    onnx.checker refuses it). Returns how many were decomposed."""
    names = Names(graph)
    count = 0
    for ln in nodes_of(graph, "LayerNormalization"):
        axis = int(ln.attrs.get("axis", -1))
        if axis >= 0 or any(t.outputs for t in ln.outputs[1:]):
            continue
        axes = list(range(axis, 0))  # LayerNormalization normalizes over axis..last
        x, scale = ln.inputs[0], ln.inputs[1]
        bias = ln.inputs[2] if len(ln.inputs) > 2 and not is_omitted(ln.inputs[2]) else None
        dtype = np.asarray(scale.values).dtype if isinstance(scale, gs.Constant) else np.dtype(np.float32)
        out = ln.outputs[0]
        ln.outputs.clear()
        ln.inputs.clear()
        emit = _Emitter(graph, names, ln.name or "LayerNormalization", dtype)
        mean = emit("ReduceMean", [x], axes=axes, keepdims=1)
        centred = emit("Sub", [x, mean])
        variance = emit("ReduceMean", [emit("Pow", [centred, emit.const("two", 2.0)])], axes=axes, keepdims=1)
        epsilon = emit.const("epsilon", float(ln.attrs.get("epsilon", 1e-5)))
        normed = emit("Div", [centred, emit("Sqrt", [emit("Add", [variance, epsilon])])])
        if bias is None:
            emit("Mul", [normed, scale], out)
        else:
            emit("Add", [emit("Mul", [normed, scale]), bias], out)
        count += 1
    finish(graph)
    return count


class _quiet:
    """Silence the optimizer's INFO/WARNING logging for the duration of a block."""

    def __init__(self, *prefixes: str) -> None:
        self.prefixes = prefixes
        self.saved: list[tuple[logging.Logger, int]] = []

    def __enter__(self) -> None:
        names = [n for n in logging.root.manager.loggerDict if n.startswith(self.prefixes)]
        for name in {*names, *self.prefixes}:
            logger = logging.getLogger(name)
            self.saved.append((logger, logger.level))
            logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for logger, level in self.saved:
            logger.setLevel(level)
