"""The trained student back to ONNX: same input and output names, same opset, the same dynamic dimensions,
the model-level fields of the model it came from; and the check that the export computes what the trained
torch module computes."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from edgeplug import PluginError
from edgeplug.plugin_api import restore_model_fields, session

from .converter import Converted, require_torch
from .training_data import Sample

FIDELITY = 1e-5  # largest |exported - torch| relative to the output's scale (max |value|, at least 1)


def _opset(proto: onnx.ModelProto) -> int:
    return next((imp.version for imp in proto.opset_import if imp.domain in ("", "ai.onnx")), 17)


def _dynamic_axes(proto: onnx.ModelProto) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {}
    for value in [*proto.graph.input, *proto.graph.output]:
        for index, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value"):
                axes.setdefault(value.name, {})[index] = dim.dim_param or f"{value.name}_dim{index}"
    return axes


def _outputs_only(torch: Any, converted: Converted) -> Any:
    """The module without the feature outputs added for training."""
    count = len(converted.outputs)

    class Outputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = converted.module

        def forward(self, *args: Any) -> Any:
            result = self.inner(*args)
            result = tuple(result) if isinstance(result, (tuple, list)) else (result,)
            return result[0] if count == 1 else result[:count]

    return Outputs()


def to_onnx(converted: Converted, like: onnx.ModelProto, example: Sample) -> onnx.ModelProto:
    """Export the (trained) module with torch's TorchScript exporter at the opset of `like`."""
    torch = require_torch()
    module = _outputs_only(torch, converted).eval()
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[name])) for name in converted.inputs)
    opset = _opset(like)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # the legacy exporter's deprecation notices say nothing about the model
        try:
            with torch.no_grad():
                torch.onnx.export(
                    module,
                    args,
                    buffer,
                    dynamo=False,  # the dynamo exporter cannot export every onnx2torch module at opset < 18
                    opset_version=opset,
                    input_names=list(converted.inputs),
                    output_names=list(converted.outputs),
                    dynamic_axes=_dynamic_axes(like) or None,
                    training=torch.onnx.TrainingMode.EVAL,
                    do_constant_folding=True,
                )
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PluginError(
                f"distill: exporting the trained model back to ONNX at opset {opset} failed: {first}"
            ) from None
    exported = onnx.load_from_string(buffer.getvalue())
    restore_model_fields(exported, like)
    return exported


def fidelity(converted: Converted, exported: onnx.ModelProto, samples: Sequence[Sample]) -> float:
    """Largest |exported - torch| over `samples` and outputs, relative to the output's scale."""
    torch = require_torch()
    sess = session(exported.SerializeToString())
    names = [o.name for o in exported.graph.output]
    worst = 0.0
    converted.module.eval()
    for sample in samples:
        got = sess.run(names, dict(sample))
        with torch.no_grad():
            ref = converted(*[torch.from_numpy(np.ascontiguousarray(sample[n])) for n in converted.inputs])
        for r, g in zip(ref[: len(names)], got):
            r = r.numpy()
            if r.dtype.kind != "f":
                worst = max(worst, 0.0 if np.array_equal(r, g) else float("inf"))
                continue
            scale = max(1.0, float(np.abs(r).max()) if r.size else 1.0)
            worst = max(worst, float(np.abs(r - g).max()) / scale if r.size else 0.0)
    return worst
