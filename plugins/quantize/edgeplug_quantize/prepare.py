"""Make a float model ready for onnxruntime's quantizer: opset >= 13, weights as initializers,
onnxruntime's pre-processing (shape inference, BatchNorm folding and other basic rewrites)."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from edgeplug import PluginError
from onnx import numpy_helper

MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis attribute) needs opset 13


@dataclass
class Prepared:
    proto: onnx.ModelProto
    notes: list[str] = field(default_factory=list)
    batchnorm_before: int = 0
    batchnorm_after: int = 0


def prepare(proto: onnx.ModelProto, pre_process: bool = True) -> Prepared:
    """Upgrade the opset, turn Constant weights into initializers, then run quant_pre_process."""
    notes: list[str] = []
    bn_before = count_ops(proto, "BatchNormalization")
    opset = default_opset(proto)
    if opset < MIN_OPSET:
        proto = upgrade_opset(proto, MIN_OPSET)
        notes.append(
            f"converted opset {opset} -> {MIN_OPSET} with onnx.version_converter "
            "(per-channel QuantizeLinear needs 13)"
        )
    proto, moved = constants_to_initializers(proto)
    if moved:
        notes.append(
            f"moved {moved} Constant node values into initializers so their weights can be quantized"
        )
    if pre_process:
        processed = ort_pre_process(proto)
        if processed is None:
            notes.append("onnxruntime pre-processing failed on this model; quantizing without it")
        else:
            proto = processed
            notes.append(
                "onnxruntime quant_pre_process: symbolic shape inference and basic graph optimizations"
            )
    return Prepared(proto, notes, bn_before, count_ops(proto, "BatchNormalization"))


def default_opset(proto: onnx.ModelProto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def count_ops(proto: onnx.ModelProto, op_type: str) -> int:
    return sum(1 for n in proto.graph.node if n.op_type == op_type)


def upgrade_opset(proto: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """onnx.version_converter, checked; a model it cannot convert is refused with the reason."""
    try:
        converted = onnx.version_converter.convert_version(proto, target)
        onnx.checker.check_model(converted)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PluginError(
            f"quant: the model uses opset {default_opset(proto)} and onnx.version_converter cannot bring it to "
            f"opset {target} ({first}); re-export it at opset {target} or later"
        ) from None
    return converted


_SCALAR_ATTRS = {
    "value_float": lambda a: np.array(a.f, dtype=np.float32),
    "value_floats": lambda a: np.array(list(a.floats), dtype=np.float32),
    "value_int": lambda a: np.array(a.i, dtype=np.int64),
    "value_ints": lambda a: np.array(list(a.ints), dtype=np.int64),
}


def constants_to_initializers(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Replace top-level Constant nodes by initializers (onnxruntime quantizes initializer weights only)."""
    if not any(n.op_type == "Constant" and n.domain in ("", "ai.onnx") for n in proto.graph.node):
        return proto, 0
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    keep: list[onnx.NodeProto] = []
    moved = 0
    for node in out.graph.node:
        array = (
            _constant_value(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        )
        if array is None:
            keep.append(node)
            continue
        out.graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
        moved += 1
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out, moved


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in _SCALAR_ATTRS:
            return _SCALAR_ATTRS[attr.name](attr)
    return None  # sparse_value / string values stay Constant nodes


def ort_pre_process(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxruntime.quantization.quant_pre_process; retried without symbolic shape inference, None on failure."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quiet = logging.getLogger("onnxruntime.quantization")
    # onnxruntime's symbolic shape inference dumps sym_shape_infer_temp.onnx (+ its weights) into the
    # current folder when it fails: run it inside the temporary folder
    with tempfile.TemporaryDirectory(prefix="edgeplug-quant-pre-") as tmp, _inside(tmp):
        out = Path(tmp) / "pre.onnx"
        for skip_symbolic in (False, True):
            try:
                level = quiet.level
                quiet.setLevel(logging.CRITICAL)
                try:
                    quant_pre_process(proto, out, skip_symbolic_shape=skip_symbolic, auto_merge=True)
                finally:
                    quiet.setLevel(level)
                result = onnx.load(str(out))
                onnx.checker.check_model(result)
                return _keep_metadata(result, proto)
            except Exception:
                continue
    return None


@contextlib.contextmanager
def _inside(folder: str) -> Iterator[None]:
    """chdir for the duration (contextlib.chdir needs Python 3.11)."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def _keep_metadata(result: onnx.ModelProto, like: onnx.ModelProto) -> onnx.ModelProto:
    have = {p.key for p in result.metadata_props}
    for prop in like.metadata_props:
        if prop.key not in have:
            result.metadata_props.add(key=prop.key, value=prop.value)
    return result
