"""TensorRT optimization profiles: parsed from min/opt/max options (polygraphy's `--trt-min-shapes` style,
`input:1x3x224x224`) or derived from the model's dynamic dimensions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from edgeplug import OptionError, PluginError
from edgeplug.plugin_api import TensorSpec

from .settings import TrtSettings

Shape = tuple[int, ...]


@dataclass
class Profile:
    """min/opt/max per input; `dynamic` says whether the engine needs an optimization profile at all."""

    shapes: dict[str, tuple[Shape, Shape, Shape]]
    dynamic: bool
    sources: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dynamic": self.dynamic,
            "inputs": {
                name: {
                    "min": list(mn),
                    "opt": list(op),
                    "max": list(mx),
                    "source": self.sources.get(name, ""),
                }
                for name, (mn, op, mx) in self.shapes.items()
            },
        }


def parse_shapes(items: Sequence[str] | None, option: str) -> dict[str, Shape]:
    """`["input:1x3x224x224", "mask:1x128"]` into {name: dims}; OptionError naming trt.<option> otherwise.
    The name is everything before the last colon (input names may hold colons), as for `--input-shapes`."""
    shapes: dict[str, Shape] = {}
    for item in items or []:
        name, sep, dims = str(item).rpartition(":")
        name = name.strip()
        try:
            shape = tuple(int(d) for d in dims.lower().split("x")) if sep and name else ()
        except ValueError:
            shape = ()
        if not shape:
            raise OptionError(
                f"bad value {item!r} for trt.{option}: expected NAME:1x3x224x224 items, comma-separated"
            )
        if any(d < 1 for d in shape):
            raise OptionError(f"bad value {item!r} for trt.{option}: expected dimensions of at least 1")
        if name in shapes:
            raise OptionError(f"trt.{option} gives input {name!r} twice")
        shapes[name] = shape
    return shapes


def check_shape_options(inputs: Sequence[TensorSpec], settings: TrtSettings) -> None:
    """The option half of `build_profile`, for pre_optimize: parse min/opt/max shapes and check them
    against the model's inputs (names, rank, fixed dimensions, min <= opt <= max)."""
    given = _given(inputs, settings)
    named = set().union(*given.values())
    for spec in inputs:
        if spec.name in named:
            _user_triplet(spec.name, spec, given)


def _given(inputs: Sequence[TensorSpec], settings: TrtSettings) -> dict[str, dict[str, Shape]]:
    given = {k: parse_shapes(getattr(settings, k), k) for k in ("min_shapes", "opt_shapes", "max_shapes")}
    names = [s.name for s in inputs]
    for option, shapes in given.items():
        for name in shapes:
            if name not in names:
                raise OptionError(
                    f"trt.{option} names {name!r}, but the model's inputs are {', '.join(names)}"
                )
    return given


def _user_triplet(
    name: str, spec: TensorSpec, given: Mapping[str, Mapping[str, Shape]]
) -> tuple[Shape, Shape, Shape]:
    mn, op, mx = (given[k].get(name) for k in ("min_shapes", "opt_shapes", "max_shapes"))
    if op is None:
        raise OptionError(
            f"trt: input {name!r} is in min_shapes/max_shapes but not in opt_shapes; give all three "
            "(or opt_shapes alone for a fixed shape)"
        )
    if mn is None and mx is None:
        mn = mx = op
    if mn is None or mx is None:
        missing = "min_shapes" if mn is None else "max_shapes"
        raise OptionError(f"trt: input {name!r} has no trt.{missing}; give min, opt and max shapes together")
    for label, shape in (("opt", op), ("min", mn), ("max", mx)):  # opt first: it may be alone
        if len(shape) != len(spec.shape):
            raise OptionError(
                f"trt.{label}_shapes gives {name!r} rank {len(shape)}, but the model's input has rank {len(spec.shape)}"
            )
        for axis, (dim, model_dim) in enumerate(zip(shape, spec.shape)):
            if isinstance(model_dim, int) and dim != model_dim:
                raise OptionError(
                    f"trt.{label}_shapes gives {name!r} size {dim} at axis {axis}, where the model fixes {model_dim}"
                )
    if not all(a <= b <= c for a, b, c in zip(mn, op, mx)):
        raise OptionError(
            f"trt: input {name!r} needs min <= opt <= max on every axis, got min {_fmt(mn)}, opt {_fmt(op)}, max {_fmt(mx)}"
        )
    return mn, op, mx


def _derived_triplet(
    spec: TensorSpec, max_batch: int, sample: Mapping[str, np.ndarray] | None
) -> tuple[tuple[Shape, Shape, Shape], str]:
    mn, op, mx = [], [], []
    notes = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int):
            mn.append(dim)
            op.append(dim)
            mx.append(dim)
        elif axis == 0:
            mn.append(1)
            op.append(1)
            mx.append(max_batch)
            notes.append(f"batch axis {dim or '?'}: 1..{max_batch} (max_batch)")
        elif sample is not None and spec.name in sample and np.ndim(sample[spec.name]) == len(spec.shape):
            size = int(np.shape(sample[spec.name])[axis])
            mn.append(size)
            op.append(size)
            mx.append(size)
            notes.append(f"axis {axis} ({dim or '?'}) fixed to {size}, the validation data's size")
        else:
            raise OptionError(
                f"trt: input {spec.name!r} has dynamic axis {axis} ({dim or '?'}) that cannot be derived; "
                f"give -o trt.min_shapes=/opt_shapes=/max_shapes= for it, e.g. {spec.name}:{_example(spec)}"
            )
    return (tuple(mn), tuple(op), tuple(mx)), "; ".join(notes) or "static"


def build_profile(
    inputs: Sequence[TensorSpec],
    settings: TrtSettings,
    sample: Mapping[str, np.ndarray] | None = None,
) -> Profile:
    """The profile from the user's min/opt/max options, else derived from the dynamic dimensions:
    dynamic batch (axis 0) -> min 1, opt 1, max `max_batch`; other dynamic axes -> the sample's size."""
    given = _given(inputs, settings)
    named = set().union(*given.values())
    shapes: dict[str, tuple[Shape, Shape, Shape]] = {}
    sources: dict[str, str] = {}
    for spec in inputs:
        if spec.name in named:
            shapes[spec.name] = _user_triplet(spec.name, spec, given)
            sources[spec.name] = "options"
        else:
            shapes[spec.name], sources[spec.name] = _derived_triplet(spec, settings.max_batch, sample)
    profile = Profile(shapes, any(s.is_dynamic for s in inputs), sources)
    if sample is not None:
        check_covers(profile, sample)
    return profile


def check_covers(profile: Profile, sample: Mapping[str, np.ndarray]) -> None:
    """The core verifies the engine on the validation samples: the profile must admit their shape."""
    for name, (mn, _, mx) in profile.shapes.items():
        if name not in sample:
            continue
        shape = tuple(int(d) for d in np.shape(sample[name]))
        if len(shape) != len(mn) or not all(a <= d <= b for a, d, b in zip(mn, shape, mx)):
            raise PluginError(
                f"trt: the profile of input {name!r} (min {_fmt(mn)}, max {_fmt(mx)}) does not admit the "
                f"validation inputs' shape {_fmt(shape)}, on which the engine is verified; widen min/max_shapes"
            )


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def _example(spec: TensorSpec) -> str:
    return "x".join(
        str(d) if isinstance(d, int) else ("1" if i == 0 else "128") for i, d in enumerate(spec.shape)
    )
