"""The security record kept in the model's metadata_props: the input spec and the squeezing threshold."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import onnx
from edgeplug import GuardRefusal
from edgeplug.model import Model, get_metadata, set_metadata

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
        )

    def write(self, proto: onnx.ModelProto) -> None:
        set_metadata(proto, KEY, self.to_json())


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
    return SecurityRecord(inputs, squeezer, True)
