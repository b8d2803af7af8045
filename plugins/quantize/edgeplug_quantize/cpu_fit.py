"""Choose INT8 types that are fast and accurate on this CPU and fit the target of the chain (capabilities)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeplug.plugin_api import SYMMETRIC_INT8

X86 = ("x86_64", "amd64", "i686", "x86")


@dataclass(frozen=True)
class TypeChoice:
    """Activation/weight types and range settings, with why each was chosen."""

    activation_type: str
    weight_type: str
    reduce_range: bool
    symmetric: bool
    per_channel: bool
    reasons: list[str] = field(default_factory=list)
    auto: list[str] = field(default_factory=list)  # the settings chosen here, not given by the user

    def as_dict(self) -> dict[str, Any]:
        return {
            "activation_type": self.activation_type,
            "weight_type": self.weight_type,
            "reduce_range": self.reduce_range,
            "symmetric": self.symmetric,
            "per_channel": self.per_channel,
            "chosen_automatically": self.auto,
            "reasons": self.reasons,
        }


def needs_reduce_range(cpu: Mapping[str, Any]) -> bool:
    """x86 without VNNI sums u8*s8 pairs into saturating 16-bit lanes (vpmaddubsw): 7-bit weights avoid it."""
    return cpu.get("machine", "") in X86 and not cpu.get("vnni")


def choose_types(
    options: Mapping[str, Any], cpu: Mapping[str, Any], target: Iterable[str] = ()
) -> TypeChoice:
    """The user's explicit settings win; the rest follow the target's needs and then the CPU."""
    reasons: list[str] = []
    symmetric_target = SYMMETRIC_INT8 in set(target)
    if symmetric_target:
        act, wgt, reduce, sym = "s8", "s8", False, True
        reasons.append(
            "the target wants symmetric int8 (symmetric-int8): s8 activations and weights with zero point 0"
        )
    elif cpu.get("machine", "") in X86 and cpu.get("vnni"):
        act, wgt, reduce, sym = "u8", "s8", False, False
        reasons.append(
            "x86 with VNNI ("
            + ", ".join(f for f in cpu.get("flags", []) if "vnni" in f or "amx" in f)
            + "): u8 activations with s8 per-channel weights run on the u8*s8 dot-product kernels; "
            "no range reduction needed"
        )
    elif needs_reduce_range(cpu):
        act, wgt, reduce, sym = "u8", "s8", True, False
        reasons.append(
            "x86 without VNNI: u8*s8 products are summed in pairs into saturating 16-bit lanes "
            "(vpmaddubsw), so weights are quantized to 7 bits (reduce_range) to avoid overflow"
        )
    elif cpu.get("dotprod"):
        act, wgt, reduce, sym = "s8", "s8", False, False
        reasons.append("ARM with dotprod: s8 activations and weights (sdot), as onnxruntime advises for ARM")
    else:
        act, wgt, reduce, sym = "s8", "s8", False, False
        reasons.append("CPU without int8 dot products: s8 activations and weights (onnxruntime's ARM advice)")

    auto: list[str] = []
    chosen: dict[str, Any] = {
        "activation_type": act,
        "weight_type": wgt,
        "reduce_range": reduce,
        "symmetric": sym,
        "per_channel": True,
    }
    for key, value in list(chosen.items()):
        given = options.get(key)
        if given is None:
            auto.append(key)
        elif given != value:
            chosen[key] = given
            reasons.append(
                f"{key}={_show(given)} as given by the user (this CPU/target suggests {_show(value)})"
            )
    if symmetric_target and chosen["activation_type"] == "u8" and chosen["symmetric"]:
        reasons.append(
            "warning: u8 activations cannot have zero point 0 with symmetric ranges; s8 suits this target"
        )
    return TypeChoice(
        chosen["activation_type"],
        chosen["weight_type"],
        bool(chosen["reduce_range"]),
        bool(chosen["symmetric"]),
        bool(chosen["per_channel"]),
        reasons,
        auto,
    )


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
