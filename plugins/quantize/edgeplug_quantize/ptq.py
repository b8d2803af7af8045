"""Post-training quantization through onnxruntime: static QDQ INT8, dynamic INT8, and FP16."""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
from edgeplug.plugin_api import OptionError, PluginError

from .calibration import METHODS, Sample, SampleReader, strided
from .keep_float import detach_from_dequantize
from .nncf_ptq import quantize_nncf
from .prepare import internalize
from .rounding import ROUNDING_SAMPLES, compensate, spread

# Ops onnxruntime quantizes whose cost is real arithmetic: what the per-node sensitivity search may keep float.
COMPUTE_OPS = (
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Attention",
    "LSTM",
    "GRU",
    "EmbedLayerNormalization",
)
# Dynamic quantization targets transformer and recurrent layers (onnxruntime's advice); ConvInteger is slow.
DYNAMIC_OPS = ("MatMul", "Gemm", "Attention", "LSTM", "GRU", "EmbedLayerNormalization", "Gather")
FP16_KEEP_FLOAT = ("Resize", "Range", "NonMaxSuppression", "TopK", "RandomUniformLike", "RandomNormalLike")


@dataclass(frozen=True)
class Recipe:
    """Everything one quantization call needs besides the model and the data."""

    mode: str
    per_channel: bool = True
    calibration: str = "minmax"
    activation_type: str = "u8"
    weight_type: str = "s8"
    reduce_range: bool = False
    symmetric: bool = False
    exclude_nodes: tuple[str, ...] = ()
    exclude_types: tuple[str, ...] = ()
    table: Path | None = None
    dynamic_ops: tuple[str, ...] = DYNAMIC_OPS
    extra: dict[str, Any] = field(default_factory=dict)
    float_tensors: tuple[str, ...] = ()  # tensors kept float: their producer and consumers are excluded
    engine: str = "onnxruntime"  # static only: onnxruntime's quantize_static, or "nncf" (nncf_ptq.py)
    rounding: str = "nearest"  # static onnxruntime only: or "gptq" (rounding.py)

    def excluding(self, nodes: Sequence[str]) -> Recipe:
        return replace(self, exclude_nodes=tuple(dict.fromkeys((*self.exclude_nodes, *nodes))))

    def keeping_float(self, tensors: Sequence[str]) -> Recipe:
        return replace(self, float_tensors=tuple(dict.fromkeys((*self.float_tensors, *tensors))))

    @property
    def label(self) -> str:
        """A short name for tables: `static u8/s8 per-channel minmax`, `dynamic per-tensor`, `fp16`."""
        if self.mode == "fp16":
            return "fp16"
        grain = "per-channel" if self.per_channel else "per-tensor"
        parts = [self.mode]
        if self.mode == "static":
            parts.append(f"{self.activation_type}/{self.weight_type}")
        elif self.weight_type != "s8":
            parts.append(f"{self.weight_type} weights")
        parts.append(grain)
        if self.mode == "dynamic" and "Conv" in self.dynamic_ops:
            parts.append("+Conv")
        if self.reduce_range:
            parts.append("reduce_range")
        if self.mode == "static" and self.engine == "nncf":
            parts.append("nncf bias-corrected")
        elif self.mode == "static":
            if self.symmetric:
                parts.append("symmetric")
            parts.append(self.calibration)
            if self.rounding == "gptq":
                parts.append("gptq rounding")
            if self.extra.get("QuantizeBias") is False:
                parts.append("float bias")
        return " ".join(parts)

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mode": self.mode, "recipe": self.label}
        if self.mode in ("static", "dynamic"):
            data.update(
                per_channel=self.per_channel, weight_type=self.weight_type, reduce_range=self.reduce_range
            )
            if self.mode == "static":
                data.update(
                    activation_type=self.activation_type,
                    symmetric=self.symmetric,
                    calibration="nncf (minmax, full bias correction)"
                    if self.engine == "nncf"
                    else self.calibration,
                    format="QDQ",
                    engine=self.engine,
                    rounding=self.rounding,
                )
            else:
                data["activation_type"] = "u8 (dynamic, computed per inference)"
        data["excluded_nodes"] = list(self.exclude_nodes)
        data["excluded_op_types"] = list(self.exclude_types)
        data["float_tensors"] = list(self.float_tensors)
        return data


def resolve_exclusions(
    tokens: Sequence[str], proto: onnx.ModelProto
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split `exclude` tokens into op types and node names; an unknown token is an OptionError."""
    nodes = {n.name for n in proto.graph.node}
    present_types = {n.op_type for n in proto.graph.node}
    names: list[str] = []
    types: list[str] = []
    for token in tokens:
        if token in present_types or onnx.defs.has(token):
            types.append(token)
        elif token in nodes:
            names.append(token)
        else:
            close = difflib.get_close_matches(token, sorted(nodes | present_types), n=3, cutoff=0.5)
            hint = (
                f"did you mean {' or '.join(close)}?" if close else "it is neither a node name nor an op type"
            )
            raise OptionError(f"quant.exclude: {token!r} is not in the model: {hint}")
    by_type = [n.name for n in proto.graph.node if n.op_type in types and n.name]
    return tuple(dict.fromkeys(names + by_type)), tuple(types)


def dynamic_ops_for(proto: onnx.ModelProto) -> tuple[tuple[str, ...], str | None]:
    """Dynamic INT8 targets MatMul-like layers; a convolutional model (more Conv than MatMul/Gemm nodes,
    no attention or recurrent layer) also gets its Conv layers as ConvInteger."""
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    sequence = any(counts.get(op) for op in ("Attention", "LSTM", "GRU", "EmbedLayerNormalization"))
    if sequence or counts.get("Conv", 0) <= counts.get("MatMul", 0) + counts.get("Gemm", 0):
        return DYNAMIC_OPS, None
    return (*DYNAMIC_OPS, "Conv"), (
        "convolutional model: dynamic INT8 quantizes its Conv layers too (ConvInteger); "
        "static INT8 with --data calibration is faster and more accurate"
    )


def compute_nodes(proto: onnx.ModelProto, recipe: Recipe) -> list[onnx.NodeProto]:
    """Nodes the sensitivity search may keep in float: compute nodes the quantizer would otherwise convert."""
    ops = (
        COMPUTE_OPS if recipe.mode != "dynamic" else tuple(o for o in COMPUTE_OPS if o in recipe.dynamic_ops)
    )
    if recipe.mode == "fp16":
        ops = (*COMPUTE_OPS, "Add", "Mul", "Softmax", "LayerNormalization", "ReduceMean", "Pow")
    return [
        n
        for n in proto.graph.node
        if n.op_type in ops
        and n.name
        and n.name not in recipe.exclude_nodes
        and n.op_type not in recipe.exclude_types
    ]


def nodes_touching(proto: onnx.ModelProto, tensors: Iterable[str]) -> list[str]:
    """The producer and every consumer of each tensor: excluding them keeps the tensor float (onnxruntime's
    QDQ quantizer puts a Q/DQ pair on a tensor when its producer or a consumer asks for it)."""
    wanted = set(tensors)
    found: list[str] = []
    for node in proto.graph.node:
        if node.name and (wanted & set(node.output) or wanted & set(node.input)):
            found.append(node.name)
    return found


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """onnxruntime's quantizer logs warnings and prints calibration progress on stdout: keep both quiet. Its
    numpy RuntimeWarnings (a non-finite calibration range divided into a scale) are not left to the user:
    the plugin keeps such tensors in float (selection.py) and says so in the report."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with (
            open(os.devnull, "w") as sink,
            contextlib.redirect_stdout(sink),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
    finally:
        logger.setLevel(level)


def quantize(
    proto: onnx.ModelProto, recipe: Recipe, calibration: Sequence[Sample] | None = None
) -> onnx.ModelProto:
    """One quantization of `proto` by `recipe`; static mode needs `calibration` or an existing table."""
    if recipe.float_tensors:
        recipe = recipe.excluding(nodes_touching(proto, recipe.float_tensors))
    if recipe.mode == "fp16":
        return to_fp16(proto, recipe)
    with tempfile.TemporaryDirectory(prefix="edgeplug-quant-") as tmp, _quiet_ort():
        out = Path(tmp) / "quantized.onnx"
        # Pass a path: given a ModelProto, onnxruntime saves it as external data in place (mutating it).
        source = Path(tmp) / "float.onnx"
        nncf = recipe.mode == "static" and recipe.engine == "nncf"
        if not nncf:  # NNCF takes the ModelProto
            onnx.save(proto, str(source))
        # NNCF raises its own error types (nncf.ValidationError, nncf.InternalError...): all are its refusal
        caught: tuple[type[BaseException], ...] = (
            (Exception,) if nncf else (ValueError, RuntimeError, KeyError, AssertionError)
        )
        try:
            if nncf:
                if not calibration:
                    raise ValueError("NNCF's recipe needs calibration samples")
                onnx.save(quantize_nncf(proto, recipe, calibration), str(out))
            elif recipe.mode == "static":
                _static(source, out, recipe, calibration)
            else:
                _dynamic(source, out, recipe, {n.name for n in proto.graph.node if n.op_type == "Gemm"})
        except caught as exc:
            raise PluginError(
                f"quant: {'NNCF' if nncf else 'onnxruntime'} could not quantize this model ({recipe.mode}): "
                f"{_first_line(exc)}; exclude the failing node or op type with -o quant.exclude=..."
            ) from None
        result = internalize(onnx.load(str(out), load_external_data=False), out.parent)
    if recipe.mode == "static" and recipe.exclude_nodes:
        detach_from_dequantize(result, proto, recipe.exclude_nodes)
    if recipe.mode == "static" and recipe.engine == "onnxruntime" and recipe.rounding == "gptq":
        if not calibration:
            raise PluginError("quant: gptq rounding needs calibration samples (--data or --calibration-data)")
        compensate(result, proto, spread(calibration, ROUNDING_SAMPLES))
    if recipe.mode == "dynamic":
        # Inferred value_info left in a dynamically quantized model slows onnxruntime down: on BERT-base at
        # 1 thread, 45.2 ms with it and 33.5 ms without (benchmarks/perf_table.py); onnxruntime re-infers.
        del result.graph.value_info[:]
    _copy_metadata(result, proto)
    return result


def _qtype(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QUInt8 if name == "u8" else QuantType.QInt8


def _static(source: Path, out: Path, recipe: Recipe, calibration: Sequence[Sample] | None) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    extra: dict[str, Any] = {}
    reader = None
    if calibration:
        samples, chunk = strided(calibration)
        reader = SampleReader(samples)
        if recipe.calibration == "minmax" and chunk < len(samples):
            extra["CalibStridedMinMax"] = chunk
    if recipe.symmetric:
        extra.update(ActivationSymmetric=True, WeightSymmetric=True)
    extra.update(recipe.extra)
    quantize_static(
        str(source),
        str(out),
        calibration_data_reader=reader,
        quant_format=QuantFormat.QDQ,
        # onnxruntime's own default set (both registries), minus the excluded op types
        op_types_to_quantize=sorted(
            t for t in {*QDQRegistry, *QLinearOpsRegistry} if t not in recipe.exclude_types
        ),
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        activation_type=_qtype(recipe.activation_type),
        weight_type=_qtype(recipe.weight_type),
        nodes_to_exclude=list(recipe.exclude_nodes),
        calibrate_method=getattr(CalibrationMethod, METHODS[recipe.calibration]),
        extra_options=extra,
        calibration_cache_path=str(recipe.table) if recipe.table else None,
    )


def _dynamic(source: Path, out: Path, recipe: Recipe, gemms: set[str]) -> None:
    from onnxruntime.quantization import quantize_dynamic

    # quantize_dynamic first rewrites Gemm as MatMul `<name>_MatMul` + Add, then quantizes that MatMul:
    # excluding the Gemm's own name (or the Gemm op type) alone would not keep it in float.
    excluded = [*recipe.exclude_nodes, *(f"{n}_MatMul" for n in recipe.exclude_nodes if n in gemms)]
    extra: dict[str, Any] = {"MatMulConstBOnly": True}
    extra.update(recipe.extra)
    quantize_dynamic(
        str(source),
        str(out),
        op_types_to_quantize=[t for t in recipe.dynamic_ops if t not in recipe.exclude_types],
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        weight_type=_qtype(recipe.weight_type),
        nodes_to_exclude=excluded,
        extra_options=extra,
    )


def to_fp16(proto: onnx.ModelProto, recipe: Recipe) -> onnx.ModelProto:
    """onnxruntime.transformers' float16 conversion, keeping float32 inputs and outputs."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    work = onnx.ModelProto()
    work.CopyFrom(proto)
    try:
        result = convert_float_to_float16(
            work,
            keep_io_types=True,
            op_block_list=sorted({*DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_FLOAT, *recipe.exclude_types}),
            node_block_list=list(recipe.exclude_nodes),
        )
    except (ValueError, RuntimeError, KeyError) as exc:
        raise PluginError(
            f"quant: float16 conversion failed ({_first_line(exc)}); "
            "exclude the failing op type with -o quant.exclude=..."
        ) from None
    result = toposorted(result)
    _copy_metadata(result, proto)
    return result


def toposorted(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Nodes in topological order (the float16 converter appends the input Casts at the end)."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(proto)
    graph.toposort()
    result = gs.export_onnx(graph, do_type_check=False)
    result.ir_version = proto.ir_version
    del result.opset_import[:]
    result.opset_import.extend(proto.opset_import)
    return result


def _copy_metadata(result: onnx.ModelProto, like: onnx.ModelProto) -> None:
    have = {p.key for p in result.metadata_props}
    for prop in like.metadata_props:
        if prop.key not in have:
            result.metadata_props.add(key=prop.key, value=prop.value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
