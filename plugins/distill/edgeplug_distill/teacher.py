"""The teacher: the chain's original model run by onnxruntime, exactly as verification runs it, with the
intermediate tensors it shares with the student (same name, same shape) exposed for feature matching."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from edgeplug import PluginError
from edgeplug.plugin_api import session

from .training_data import Sample


def _shapes(proto: onnx.ModelProto) -> dict[str, tuple[int, tuple[int | str, ...], onnx.ValueInfoProto]]:
    """Node output name -> (element type, shape, value info) from shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # no shapes, no features: feature matching is optional
        return {}
    produced = {name for node in inferred.graph.node for name in node.output}
    found = {}
    for info in inferred.graph.value_info:
        tensor = info.type.tensor_type
        if info.name not in produced or not tensor.HasField("shape"):
            continue
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim
        )
        found[info.name] = (tensor.elem_type, dims, info)
    return found


def common_features(teacher: onnx.ModelProto, student: onnx.ModelProto) -> list[str]:
    """Float intermediate tensors that exist with the same name and shape in both models (a pruned model
    keeps the names of the layers whose width it kept), in the student's graph order."""
    ours, theirs = _shapes(student), _shapes(teacher)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
    outputs = {o.name for o in student.graph.output} | {o.name for o in teacher.graph.output}
    names = []
    for node in student.graph.node:
        for name in node.output:
            mine, other = ours.get(name), theirs.get(name)
            if not mine or not other or name in outputs or mine[0] not in floats or mine[0] != other[0]:
                continue
            if len(mine[1]) >= 2 and mine[1] == other[1] and all(isinstance(d, int) for d in mine[1][1:]):
                names.append(name)
    return names


class Teacher:
    """Runs the original model on batches; returns the outputs matched to the student's, then features."""

    def __init__(
        self, proto: onnx.ModelProto, outputs: Sequence[str], features: Sequence[str], threads: int
    ) -> None:
        model = onnx.ModelProto()
        model.CopyFrom(proto)
        names = [o.name for o in proto.graph.output]
        if set(outputs) <= set(names):
            self.outputs = list(outputs)  # matched by name, in the student's order
        elif len(outputs) == len(names):
            self.outputs = names  # renamed by a step: matched by position
        else:
            raise PluginError(
                f"distill: the model's outputs ({', '.join(outputs)}) do not match the original's "
                f"({', '.join(names)}); distillation needs the same outputs"
            )
        if features:
            infos = _shapes(proto)
            model.graph.output.extend(infos[name][2] for name in features)
        self.names = [*self.outputs, *features]
        self.session = session(model.SerializeToString(), threads=threads)
        self.batchable = all(
            not i.type.tensor_type.shape.dim or not i.type.tensor_type.shape.dim[0].HasField("dim_value")
            for i in proto.graph.input
        )

    def run(self, items: Sequence[Sample]) -> list[np.ndarray]:
        """The teacher's arrays for a list of items, concatenated along the batch axis."""
        if self.batchable and len(items) > 1:
            feed = {name: np.concatenate([item[name] for item in items]) for name in items[0]}
            return [np.asarray(a) for a in self.session.run(self.names, feed)]
        parts = [self.session.run(self.names, dict(item)) for item in items]
        return [np.concatenate([np.asarray(p[i]) for p in parts]) for i in range(len(self.names))]
