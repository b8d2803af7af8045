"""Which quantized tensors damage a candidate: every tensor the quantizer put on an int8 grid (activations
behind a Q/DQ pair or a DynamicQuantizeLinear, weights stored as int8), compared with its own float values
on the sample where the candidate is worst, next to the core's layer-wise comparison (error_profile) of the
whole candidate against the float model.

Whole-tensor figures hide the damage this looks for: an attention mask of -3.4e38 keeps the cosine of the
masked scores at 1 while every real score rounds to the zero point, and a box row in pixels keeps a detector
output's cosine high while its score rows die. So each tensor is judged on its bulk (values below 1e30, the
smallest 90% by magnitude) and slice by slice, and a range that holds huge or non-finite values is a culprit
by itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from edgeplug.plugin_api import Model, compare, error_profile, intermediate_outputs
from onnx import numpy_helper

SENTINEL = 1e30  # |x| at or above this is a mask value (-3.4e38, -inf), not a number the model computes with
BULK_QUANTILE = 0.9
MAX_BULK_ERROR = 0.2  # relative error of a tensor's bulk above which its quantization is a (mild) culprit
CLEAR_BULK_ERROR = 0.5  # ... and above which it is a clear one (most values lost)
DEAD_SHARE = 0.05  # an inner tensor's dead slices count when their range is this share of the tensor's
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1, "ConvInteger": 0}


@dataclass
class TensorDamage:
    """What quantizing one tensor did to it, and why it is a culprit (empty `reasons`: it is not)."""

    tensor: str
    kind: str  # activation | weight
    bulk_error: float
    value_range: tuple[float, float]
    worst_slice: dict[str, Any] | None = None
    dead_slices: list[dict[str, Any]] = field(default_factory=list)
    cosine_after: float | None = None  # the core's error_profile: this tensor in the candidate vs float
    reasons: list[str] = field(default_factory=list)

    @property
    def tier(self) -> int:
        """0: not a culprit; 1: a clear one (huge or non-finite range, dead slices, most values lost);
        2: a mild one (coarse steps). Repair keeps the clear ones float first."""
        if not self.reasons:
            return 0
        return 1 if self.severity >= 2.0 or self.bulk_error >= CLEAR_BULK_ERROR else 2

    @property
    def severity(self) -> float:
        if any("huge" in r or "not finite" in r for r in self.reasons):
            return 3.0
        if self.dead_slices or any(
            r.startswith(("output slice", "quantized model output")) for r in self.reasons
        ):
            return 2.0
        return min(self.bulk_error, 1.0)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "tensor": self.tensor,
            "kind": self.kind,
            "range": [_round(v) for v in self.value_range],
            "bulk_error": _round(self.bulk_error),
            "reasons": self.reasons,
        }
        if self.cosine_after is not None:
            data["cosine_in_candidate"] = _round(self.cosine_after)
        if self.worst_slice:
            data["worst_slice_error"] = _round(self.worst_slice["error"])
        return data


def diagnose(
    float_proto: onnx.ModelProto,
    candidate: onnx.ModelProto,
    sample: Mapping[str, np.ndarray],
    qdq_as_float: bool = False,
    max_slice_error: float | None = None,
    failing_outputs: Mapping[str, str] | None = None,
) -> tuple[list[TensorDamage], list[dict[str, Any]]]:
    """Every quantized tensor's damage (culprits first, most severe first) and the core's layer-wise profile
    of the candidate against the float model on `sample`. A model output whose own quantization breaks the
    step's slice budget (`max_slice_error`) is a culprit too, and so is a quantized output the verdict over
    all samples found damaged slice by slice (`failing_outputs`: output -> why; one sample may not show it)."""
    feed = dict(sample)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # mask values are -inf or -3.4e38
        profile = error_profile(Model(float_proto), Model(candidate), feed, qdq_as_float=qdq_as_float)
    after = {row["tensor"]: row["cosine"] for row in profile}
    values = intermediate_outputs(Model(candidate), feed, qdq_as_float)
    values.update({k: np.asarray(v) for k, v in feed.items()})
    outputs = {o.name for o in float_proto.graph.output}
    folded = _folded_activations(float_proto, candidate)
    names = {o for n in float_proto.graph.node for o in n.output} | {i.name for i in float_proto.graph.input}
    rows = [*_activations(candidate, values, outputs, folded, names), *_weights(float_proto, candidate)]
    for row in rows:
        row.cosine_after = after.get(row.tensor)
        if row.tensor in (failing_outputs or {}) and not row.reasons:
            row.reasons.append(f"quantized model output; over all samples: {failing_outputs[row.tensor]}")
        worst = row.worst_slice
        if (
            row.tensor in outputs
            and max_slice_error is not None
            and worst
            and worst["error"] > max_slice_error
        ):
            row.reasons.append(
                f"output slice {worst['index']} of axis {worst['axis']} is off by {worst['error']:.3g} of its "
                f"range after quantization (budget {max_slice_error:g})"
            )
    rows.sort(key=lambda r: (-r.severity if r.reasons else 1.0, -r.bulk_error))
    return rows, profile


def damage(tensor: str, kind: str, x: np.ndarray, y: np.ndarray, is_output: bool = False) -> TensorDamage:
    """Compare a tensor's float values `x` with their quantized-and-back values `y`. Dead slices (varying in
    `x`, constant in `y`) are a culprit in a model output, or where they span a real share of the range."""
    x64 = np.asarray(x, np.float64)
    y64 = np.asarray(y, np.float64)
    finite = np.isfinite(x64)
    sentinel = ~finite | (np.abs(np.where(finite, x64, 0.0)) >= SENTINEL)
    normal = x64[~sentinel]
    reasons: list[str] = []
    low = float(np.min(x64)) if x64.size else 0.0
    high = float(np.max(x64)) if x64.size else 0.0
    if sentinel.any():
        reasons.append(
            f"huge range ({low:.3g} to {high:.3g}): mask values swamp the int8 scale of the real values"
        )
    if (~np.isfinite(y64) & finite).any():
        reasons.append("values not finite after quantization")
    error = 0.0
    if normal.size:
        bound = np.quantile(np.abs(normal), BULK_QUANTILE)
        bulk = ~sentinel & (np.abs(np.where(finite, x64, 0.0)) <= bound) & np.isfinite(y64)
        ref_norm = float(np.linalg.norm(x64[bulk]))
        diff_norm = float(np.linalg.norm(x64[bulk] - y64[bulk]))
        if ref_norm > 0:
            error = diff_norm / ref_norm
        elif diff_norm > 0:
            error = float("inf")
    if error > MAX_BULK_ERROR:
        reasons.append(
            f"bulk error {error:.2f} of the values' size: the int8 steps are too coarse for most values"
        )
    clean_x = np.where(sentinel, 0.0, x64)
    with np.errstate(invalid="ignore", over="ignore"):
        return _with_slices(tensor, kind, error, (low, high), clean_x, y64, sentinel, reasons, is_output)


def _with_slices(
    tensor: str,
    kind: str,
    error: float,
    value_range: tuple[float, float],
    clean_x: np.ndarray,
    y64: np.ndarray,
    sentinel: np.ndarray,
    reasons: list[str],
    is_output: bool,
) -> TensorDamage:
    clean_y = np.where(sentinel | ~np.isfinite(y64), 0.0, y64)
    worst, dead = None, []
    if clean_x.ndim >= 1 and clean_x.size:
        batched = clean_x if kind == "activation" else clean_x[None]
        batched_y = clean_y if kind == "activation" else clean_y[None]
        if batched.ndim >= 2:
            found = compare({"t": batched}, {"t": batched_y}, samples=1)["t"]
            worst, dead = found.get("worst_slice"), found.get("dead_slices") or []
    span = float(np.max(clean_x) - np.min(clean_x)) if clean_x.size else 0.0
    if not is_output:
        dead = [d for d in dead if np.ptp(d["reference_range"]) >= DEAD_SHARE * span]
    if dead:
        first = dead[0]
        reasons.append(
            f"slice {first['first']}-{first['last']} of axis {first['axis']} is constant after quantization "
            f"(reference range {first['reference_range'][0]:.3g} to {first['reference_range'][1]:.3g})"
        )
    return TensorDamage(tensor, kind, error, value_range, worst, dead, None, reasons)


def _folded_activations(
    float_proto: onnx.ModelProto, candidate: onnx.ModelProto
) -> dict[str, tuple[float, float]]:
    """Tensors whose Relu/Clip the quantizer folded into the QuantizeLinear (the clamp of the int8 range does
    its work): {tensor: (low, high)} to apply to the candidate's value before comparing. The same name then
    holds the pre-activation value in the candidate."""
    made = {o: n for n in candidate.graph.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in float_proto.graph.initializer}
    folded: dict[str, tuple[float, float]] = {}
    for node in float_proto.graph.node:
        if node.op_type not in ("Relu", "Clip") or not node.output:
            continue
        now = made.get(node.output[0])
        if now is not None and now.op_type == node.op_type:
            continue
        low, high = 0.0, float("inf")
        if node.op_type == "Clip":
            attrs = {a.name: a.f for a in node.attribute}
            bounds = [inits.get(name) for name in list(node.input)[1:3]]
            low = float(bounds[0]) if len(bounds) > 0 and bounds[0] is not None else attrs.get("min", -np.inf)
            high = float(bounds[1]) if len(bounds) > 1 and bounds[1] is not None else attrs.get("max", np.inf)
        folded[node.output[0]] = (low, high)
    return folded


def _activations(
    candidate: onnx.ModelProto,
    values: Mapping[str, np.ndarray],
    outputs: set[str],
    folded: Mapping[str, tuple[float, float]],
    float_names: set[str],
) -> list[TensorDamage]:
    """Activations behind a QuantizeLinear -> DequantizeLinear pair (static), or a DynamicQuantizeLinear
    (dynamic: simulated as onnxruntime computes it, u8 over the tensor's own range including 0)."""
    inits = {t.name for t in candidate.graph.initializer}
    dequantized = {n.input[0]: n.output[0] for n in candidate.graph.node if n.op_type == "DequantizeLinear"}
    rows: list[TensorDamage] = []
    for node in candidate.graph.node:
        source = node.input[0] if node.input else ""
        if not source or source in inits or source not in values:
            continue
        if node.op_type == "QuantizeLinear" and dequantized.get(node.output[0]) in values:
            back = dequantized[node.output[0]]
            x, y = values[source], values[back]
            if source in folded:
                x = np.clip(x, *folded[source])
            # a quantized graph output keeps its name on the DequantizeLinear (the producer's output is
            # renamed `<name>_QuantizeLinear_Input`): report the float model's name
            name = source if source in float_names or back not in float_names else back
            rows.append(damage(name, "activation", x, y, name in outputs))
        elif node.op_type == "DynamicQuantizeLinear":
            rows.append(damage(source, "activation", values[source], _dynamic_u8(values[source])))
    return rows


def _weights(float_proto: onnx.ModelProto, candidate: onnx.ModelProto) -> list[TensorDamage]:
    """Float weights the candidate stores as `<name>_quantized` with `<name>_scale` / `<name>_zero_point`."""
    floats = {t.name: t for t in float_proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    stored = {t.name: t for t in candidate.graph.initializer}
    axes = {
        n.input[0]: next((a.i for a in n.attribute if a.name == "axis"), None)
        for n in candidate.graph.node
        if n.op_type == "DequantizeLinear"
    }
    users = {i: n.op_type for n in float_proto.graph.node for i in n.input}
    rows = []
    for name, tensor in floats.items():
        q, scale = stored.get(f"{name}_quantized"), stored.get(f"{name}_scale")
        if q is None or scale is None:
            continue
        w = numpy_helper.to_array(tensor)
        values = numpy_helper.to_array(q).astype(np.float64)
        s = numpy_helper.to_array(scale).astype(np.float64)
        zp_t = stored.get(f"{name}_zero_point")
        zp = numpy_helper.to_array(zp_t).astype(np.float64) if zp_t is not None else np.zeros_like(s)
        if values.shape != w.shape:
            continue
        axis = axes.get(q.name)
        if s.size > 1:
            if axis is None:
                axis = WEIGHT_AXIS.get(users.get(name, ""), _last_axis(w.shape, s.size))
            shape = [1] * w.ndim
            shape[axis] = s.size
            s, zp = s.reshape(shape), zp.reshape(shape)
        rows.append(damage(name, "weight", w, (values - zp) * s))
    return rows


def _dynamic_u8(x: np.ndarray) -> np.ndarray:
    """DynamicQuantizeLinear then dequantization: u8, the range [min(0, x), max(0, x)]."""
    x64 = np.asarray(x, np.float64)
    finite = x64[np.isfinite(x64)]
    low = min(0.0, float(finite.min())) if finite.size else 0.0
    high = max(0.0, float(finite.max())) if finite.size else 0.0
    scale = (high - low) / 255.0
    if not scale > 0 or not np.isfinite(scale):
        return np.where(np.isfinite(x64), 0.0, x64)
    zero = np.clip(np.round(-low / scale), 0, 255)
    with np.errstate(invalid="ignore", over="ignore"):
        return (np.clip(np.round(x64 / scale) + zero, 0, 255) - zero) * scale


def _last_axis(shape: tuple[int, ...], size: int) -> int:
    matches = [i for i, d in enumerate(shape) if d == size]
    return matches[-1] if matches else 0


def _round(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(f"{value:.6g}")
