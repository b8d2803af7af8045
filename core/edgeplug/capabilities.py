"""Capabilities: what a plugin consumes and produces, in the core's words, so that no plugin names another.

Model forms (features a model may hold): `contrib-ops` (onnxruntime com.microsoft operators), `qdq-int8`
(QuantizeLinear/DequantizeLinear), `dynamic-int8` (DynamicQuantizeLinear, MatMulInteger, ConvInteger, ...),
`fp16` (float16 tensors), `batchnorm` (BatchNormalization nodes). Target properties (what a compile
plugin's target does): `int8-exact` (integer arithmetic without saturation, so Q/DQ is verified as float
operators), `symmetric-int8` (wants zero-point-0 int8), `int8-qdq-only` (parses int8 Q/DQ only, not the
int32 DequantizeLinear of quantized biases).

A plugin declares `Capabilities(consumes=..., produces=..., removes=..., target=...)` from its
`plugin_capabilities` hook. The core refuses, before any work, a chain where a form the input model holds
reaches a plugin that does not consume it; a plugin that can emit a form asks `ctx.downstream` whether every
later plugin consumes it and adapts (or refuses with these words), and reads `ctx.target` to fit the target.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import onnx

from .model import _all_nodes

CONTRIB = "contrib-ops"
QDQ_INT8 = "qdq-int8"
DYNAMIC_INT8 = "dynamic-int8"
FP16 = "fp16"
BATCHNORM = "batchnorm"
FORMS = frozenset({CONTRIB, QDQ_INT8, DYNAMIC_INT8, FP16, BATCHNORM})

INT8_EXACT = "int8-exact"
SYMMETRIC_INT8 = "symmetric-int8"
INT8_QDQ_ONLY = "int8-qdq-only"
TARGET_PROPERTIES = frozenset({INT8_EXACT, SYMMETRIC_INT8, INT8_QDQ_ONLY})

WORDS = {
    CONTRIB: "onnxruntime contrib ops (com.microsoft)",
    QDQ_INT8: "int8 Q/DQ (QuantizeLinear/DequantizeLinear)",
    DYNAMIC_INT8: "dynamic int8 (DynamicQuantizeLinear, MatMulInteger, ConvInteger)",
    FP16: "float16 tensors",
    BATCHNORM: "BatchNormalization nodes",
}
DYNAMIC_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "QAttention"}
CONTRIB_DOMAINS = {"com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental"}


@dataclass(frozen=True)
class Capabilities:
    """What a plugin takes and gives. `consumes`: the model forms it accepts (all by default); `produces`:
    forms it may add (adapting to `ctx.downstream`); `removes`: forms it takes out (fuse folds
    BatchNormalization); `target`: properties of the target a compile plugin builds for; `judged_against`: "original" for a step
    that changes what the model computes by design (distillation), whose budget is judged against the chain's
    original model instead of the model before it."""

    consumes: frozenset[str] = FORMS
    produces: frozenset[str] = frozenset()
    removes: frozenset[str] = frozenset()
    target: frozenset[str] = frozenset()
    judged_against: str = "previous"  # "original": a step that changes the model by design (distillation)
    machine_dependent: bool = False  # its result depends on the CPU it runs on (a choice by timing)

    def __post_init__(self) -> None:
        for name, values, known in (
            ("consumes", self.consumes, FORMS),
            ("produces", self.produces, FORMS),
            ("removes", self.removes, FORMS),
            ("target", self.target, TARGET_PROPERTIES),
        ):
            unknown = set(values) - known
            if unknown:
                raise ValueError(f"Capabilities.{name}: unknown {sorted(unknown)}; known {sorted(known)}")
            object.__setattr__(self, name, frozenset(values))
        if self.judged_against not in ("previous", "original"):
            raise ValueError("Capabilities.judged_against: 'previous' or 'original'")


def forms_of(proto: onnx.ModelProto) -> frozenset[str]:
    """The forms a model holds."""
    found: set[str] = set()
    for node in _all_nodes(proto.graph):
        if node.domain in CONTRIB_DOMAINS:
            found.add(CONTRIB)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.domain in ("", "ai.onnx"):
            found.add(QDQ_INT8)
        if node.op_type in DYNAMIC_OPS:
            found.add(DYNAMIC_INT8)
        if node.op_type == "BatchNormalization":
            found.add(BATCHNORM)
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer) or any(
        v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        for v in [*proto.graph.input, *proto.graph.output]
    ):
        found.add(FP16)
    return frozenset(found)


def describe(forms: Iterable[str]) -> str:
    return ", ".join(WORDS.get(f, f) for f in sorted(forms)) or "nothing"


def describe_consumed(forms: Iterable[str]) -> str:
    extra = describe(forms)
    return "standard ONNX" + ("" if extra == "nothing" else f" with {extra}")


@dataclass(frozen=True)
class ChainView:
    """What one plugin of a chain may know of the others, without their names."""

    downstream: frozenset[str]  # forms every later plugin consumes (what this one may emit)
    upstream: frozenset[str]  # forms earlier plugins may produce
    target: frozenset[str]  # target properties of the compile plugins after this one
    ahead: frozenset[str] = frozenset()  # forms later plugins may produce (int8 when a quantizer follows)


def chain_views(chain: Sequence[str], caps: Mapping[str, Capabilities]) -> dict[str, ChainView]:
    views = {}
    for i, name in enumerate(chain):
        later = [caps[n] for n in chain[i + 1 :]]
        earlier = [caps[n] for n in chain[:i]]
        downstream = FORMS
        for c in later:
            downstream &= c.consumes
        views[name] = ChainView(
            downstream=frozenset(downstream),
            upstream=frozenset().union(*(c.produces for c in earlier)) if earlier else frozenset(),
            target=frozenset().union(*(c.target for c in later)) if later else frozenset(),
            ahead=frozenset().union(*(c.produces for c in later)) if later else frozenset(),
        )
    return views


def refusal(
    chain: Sequence[str],
    caps: Mapping[str, Capabilities],
    forms: frozenset[str],
    removers: Mapping[str, Sequence[str]] | None = None,
) -> str | None:
    """Why the chain cannot take a model holding `forms` (None when it can): the first plugin that would
    receive a form it does not consume, named with the form and what the plugin consumes; `removers` (form
    -> installed plugins that remove it) turns into a hint."""
    present = set(forms)
    made_by: dict[str, str] = {}
    for name in chain:
        cap = caps[name]
        missing = present - cap.consumes
        if missing:
            sources = sorted({made_by[f] for f in missing if f in made_by})
            origin = f" (produced by {', '.join(sources)})" if sources else " (the input model holds them)"
            fixes = sorted({p for f in missing for p in (removers or {}).get(f, ())})
            hint = (
                f"; put a plugin that removes them before {name} (installed: {', '.join(fixes)})"
                if fixes
                else ""
            )
            if sources:
                hint += f"; put {name} before {', '.join(sources)}"
            elif missing & {QDQ_INT8, DYNAMIC_INT8}:
                hint += f"; run {name} on the float model, before quantization"
            return (
                f"plugin {name!r} cannot take this model: it would receive {describe(missing)}{origin}, and "
                f"{name} consumes only {describe_consumed(cap.consumes)}{hint}"
            )
        present -= cap.removes
        present |= cap.produces
        made_by.update({f: name for f in cap.produces})
    return None
