"""Make a float model ready for onnxruntime's quantizer: opset >= 13, weights as initializers, every
tensor's data inside the model (no external data), onnxruntime's pre-processing (shape inference,
BatchNorm folding and other basic rewrites)."""

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
from edgeplug.plugin_api import PluginError
from onnx import external_data_helper, numpy_helper

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
    proto, named = name_nodes(proto)
    if named:
        notes.append(f"named {named} unnamed node(s) (<op_type>_<index>) so they can be kept in float")
    if pre_process:
        processed = ort_pre_process(proto)
        if processed is None:
            notes.append("onnxruntime pre-processing failed on this model; quantizing without it")
        else:
            proto = processed
            notes.append(
                "onnxruntime quant_pre_process: symbolic shape inference and basic graph optimizations"
            )
    proto, named = name_nodes(proto)  # pre-processing may add unnamed nodes
    return Prepared(proto, notes, bn_before, count_ops(proto, "BatchNormalization"))


def name_nodes(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy where every top-level node has a unique name: onnxruntime excludes nodes from quantization by
    name, so an unnamed node could never be kept in float."""
    unnamed = [i for i, n in enumerate(proto.graph.node) if not n.name]
    if not unnamed:
        return proto, 0
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    taken = {n.name for n in out.graph.node}
    for index in unnamed:
        node = out.graph.node[index]
        name = f"{node.op_type}_{index}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)
    return out, len(unnamed)


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
    """onnxruntime.quantization.quant_pre_process; retried without symbolic shape inference, None on failure.

    It is given a saved copy, never `proto`: when symbolic shape inference fails, its retry path hands a
    ModelProto to `extract_raw_data_from_model`, which rewrites the initializers in place into references to
    a file "foo.bin" that does not exist (rapidocr's PP-OCR cls model then failed to load: "Cannot parse data
    from external tensors")."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quiet = logging.getLogger("onnxruntime.quantization")
    # onnxruntime's symbolic shape inference dumps sym_shape_infer_temp.onnx (+ its weights) into the
    # current folder when it fails: run it inside the temporary folder
    with tempfile.TemporaryDirectory(prefix="edgeplug-quant-pre-") as tmp, _inside(tmp):
        source = Path(tmp) / "float.onnx"
        onnx.save(proto, str(source))
        out = Path(tmp) / "pre.onnx"
        for skip_symbolic in (False, True):
            try:
                level = quiet.level
                quiet.setLevel(logging.CRITICAL)
                try:
                    quant_pre_process(str(source), out, skip_symbolic_shape=skip_symbolic, auto_merge=True)
                finally:
                    quiet.setLevel(level)
                result = internalize(onnx.load(str(out), load_external_data=False), Path(tmp))
                onnx.checker.check_model(result)
                return _keep_metadata(result, proto)
            except Exception:
                continue
    return None


def internalize(proto: onnx.ModelProto, folder: Path) -> onnx.ModelProto:
    """Every tensor's data inside the model (initializers and Constant/attribute tensors, subgraphs too):
    external data written by onnxruntime's tools into a temporary folder is read back from `folder`; a
    reference that cannot be resolved there is a PluginError, never a model that fails to load later."""
    tensors = list(_all_tensors(proto.graph))
    if any(external_data_helper.uses_external_data(t) for t in tensors):
        try:
            external_data_helper.load_external_data_for_model(proto, str(folder))
        except (OSError, ValueError) as exc:
            raise PluginError(
                f"quant: onnxruntime wrote the model with external data that cannot be read back ({exc})"
            ) from None
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    return proto


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


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
