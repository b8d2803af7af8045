"""The security record kept in the model's metadata_props: the input spec and the squeezing threshold."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import onnx
from edgeplug import GuardRefusal, Model, PluginError
from edgeplug.plugin_api import get_metadata, set_metadata

from .input_spec import InputSpec
from .squeeze import Squeezer

KEY = "edgeplug.security"
VERSION = 1


@dataclass(frozen=True)
class SecurityRecord:
    inputs: dict[str, InputSpec]
    squeezer: Squeezer | None
    recorded: bool  # False when built from the model's declared inputs (no record in the metadata)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": VERSION,
                "inputs": {name: spec.as_dict() for name, spec in self.inputs.items()},
                "squeeze": self.squeezer.as_dict() if self.squeezer else None,
            },
            sort_keys=True,
            allow_nan=False,  # a NaN range or threshold would disable the guard: never write one
        )

    def write(self, proto: onnx.ModelProto) -> None:
        try:
            text = self.to_json()
        except ValueError:
            raise PluginError(
                "security: the record holds a NaN or infinite range or threshold and was not written"
            ) from None
        set_metadata(proto, KEY, text)


def read_record(model: Model) -> SecurityRecord:
    """The record written by `edgeplug run --plugins security`, or the model's declared input spec."""
    text = get_metadata(model.proto, KEY)
    if text is None:
        return SecurityRecord({s.name: InputSpec.from_tensor(s) for s in model.inputs}, None, False)
    try:
        data: Mapping[str, Any] = json.loads(text)
        inputs = {name: InputSpec.from_dict(name, spec) for name, spec in data["inputs"].items()}
        squeezer = Squeezer.from_dict(data["squeeze"]) if data.get("squeeze") else None
    except (ValueError, KeyError, TypeError) as exc:
        raise GuardRefusal(f"the model's {KEY} metadata is corrupt ({type(exc).__name__}: {exc})") from None
    declared = {s.name for s in model.inputs}
    if set(inputs) != declared:
        raise GuardRefusal(
            f"the model's {KEY} metadata describes inputs {sorted(inputs)}, "
            f"but the model has {sorted(declared)}"
        )
    check_finite(inputs, squeezer)
    return SecurityRecord(inputs, squeezer, True)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_finite(inputs: Mapping[str, InputSpec], squeezer: Squeezer | None) -> None:
    """Fail closed on a record whose range or threshold is not a finite number (NaN compares false with
    everything, so a NaN bound or threshold would let every input through)."""
    for name, spec in inputs.items():
        bounds = (spec.low, spec.high)
        if bounds == (None, None):
            continue  # no range recorded
        if not (all(_finite(v) for v in bounds) and bounds[0] <= bounds[1]):  # type: ignore[operator]
            raise GuardRefusal(
                f"the model's {KEY} metadata records an invalid range {list(bounds)} for input {name!r} "
                "(not finite, or low above high); re-record it with `edgeplug run --plugins security`"
            )
    if squeezer is None:
        return
    bad = [k for k in ("low", "high") if not _finite(getattr(squeezer, k))]
    if squeezer.threshold is not None and not _finite(squeezer.threshold):
        bad.append("threshold")
    if bad:
        values = ", ".join(f"{k} {getattr(squeezer, k)!r}" for k in bad)
        raise GuardRefusal(
            f"the model's {KEY} metadata records a non-finite feature-squeezing {values}; "
            "re-record it with `edgeplug run --plugins security`"
        )
