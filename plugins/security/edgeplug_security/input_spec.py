"""The input spec (dtype, shape with dynamic dims, value range) and the checks made against it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from edgeplug import GuardRefusal, OptionError
from edgeplug.plugin_api import TensorSpec


@dataclass(frozen=True)
class InputSpec:
    """What one input may look like: dtype, shape (str/None = dynamic), and an allowed [low, high] range."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]
    low: float | None = None
    high: float | None = None
    range_source: str | None = None  # "calibration", "user", or None when no range is known

    def as_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "range": self.range,
            "range_source": self.range_source,
        }

    @property
    def range(self) -> list[float] | None:
        return None if self.low is None or self.high is None else [self.low, self.high]

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> InputSpec:
        low, high = data.get("range") or (None, None)
        return cls(name, str(data["dtype"]), tuple(data["shape"]), low, high, data.get("range_source"))

    @classmethod
    def from_tensor(cls, spec: TensorSpec) -> InputSpec:
        return cls(spec.name, str(spec.dtype), tuple(spec.shape))

    def with_range(self, low: float, high: float, source: str) -> InputSpec:
        return InputSpec(self.name, self.dtype, self.shape, float(low), float(high), source)


def observed_range(
    samples: Sequence[Mapping[str, np.ndarray]], name: str, margin: float
) -> tuple[float, float]:
    """Min and max of `name` over the samples, widened by `margin` times the span on each side."""
    low = float(min(np.min(s[name]) for s in samples))
    high = float(max(np.max(s[name]) for s in samples))
    pad = margin * (high - low) if high > low else margin * max(abs(high), 1.0)
    return low - pad, high + pad


def parse_ranges(items: Sequence[str], names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """`input_range`: either two numbers (LOW,HIGH for every input) or NAME:LOW:HIGH items."""
    if not items:
        return {}
    try:
        if len(items) == 2 and all(":" not in i for i in items):
            low, high = float(items[0]), float(items[1])
            ranges = {n: (low, high) for n in names}
        else:
            ranges = {}
            for item in items:
                name, low_text, high_text = item.rsplit(":", 2)
                if name not in names:
                    raise OptionError(
                        f"security.input_range names {name!r}; the model's inputs are {', '.join(names)}"
                    )
                ranges[name] = (float(low_text), float(high_text))
    except ValueError:
        raise OptionError(
            f"bad security.input_range {','.join(items)!r}: write LOW,HIGH (every input) or NAME:LOW:HIGH,..."
        ) from None
    for name, (low, high) in ranges.items():
        if not (math.isfinite(low) and math.isfinite(high)):
            raise OptionError(f"security.input_range for {name}: LOW and HIGH must be finite numbers")
        if not low <= high:
            raise OptionError(f"security.input_range for {name}: LOW {low} is above HIGH {high}")
    return ranges


def check_inputs(inputs: Mapping[str, np.ndarray], specs: Mapping[str, InputSpec], batch_free: bool) -> None:
    """Refuse (GuardRefusal) the first input that is missing, mistyped, misshaped, non-finite or out of range.

    `batch_free`: the first axis may have any size even where the spec fixes it to 1, because the model is
    then run one sample at a time (as the core's runner does).
    """
    extra = sorted(set(inputs) - set(specs))
    if extra:
        raise GuardRefusal(f"input {extra[0]!r} is not an input of the model (expected {', '.join(specs)})")
    for name, spec in specs.items():
        if name not in inputs:
            raise GuardRefusal(f"input {name!r} is missing")
        check_one(np.asarray(inputs[name]), spec, batch_free)


def check_one(array: np.ndarray, spec: InputSpec, batch_free: bool) -> None:
    name = spec.name
    if str(array.dtype) != spec.dtype:
        raise GuardRefusal(f"input {name!r} has dtype {array.dtype}, the model expects {spec.dtype}")
    expected = ", ".join(str(d) if d is not None else "?" for d in spec.shape)
    if array.ndim != len(spec.shape):
        raise GuardRefusal(
            f"input {name!r} has shape {list(array.shape)} (rank {array.ndim}), the model expects [{expected}]"
        )
    for axis, (got, want) in enumerate(zip(array.shape, spec.shape)):
        if got == 0:
            raise GuardRefusal(f"input {name!r} has shape {list(array.shape)}: axis {axis} is empty")
        if isinstance(want, int) and got != want and not (axis == 0 and batch_free and want == 1):
            raise GuardRefusal(
                f"input {name!r} has shape {list(array.shape)}, the model expects [{expected}] (axis {axis})"
            )
    if array.dtype.kind in "fc":
        finite = np.isfinite(array)
        if not finite.all():
            bad = array[~finite]
            nans, infs = int(np.isnan(bad).sum()), int(np.isinf(bad).sum())
            where = tuple(int(i) for i in np.argwhere(~finite)[0])
            what = " and ".join(
                p for p in (f"{nans} NaN" if nans else "", f"{infs} Inf" if infs else "") if p
            )
            raise GuardRefusal(f"input {name!r} holds {what} value(s) (first at index {list(where)})")
    if spec.range is not None and array.dtype.kind in "fiub":
        low, high = float(array.min()), float(array.max())
        if low < spec.low or high > spec.high:  # type: ignore[operator]
            raise GuardRefusal(
                f"input {name!r} has values in [{low:.6g}, {high:.6g}], outside its allowed range "
                f"[{spec.low:.6g}, {spec.high:.6g}] ({spec.range_source})"
            )
