"""The cascade's models: which ones (the chain's final and original models, or files), and the checks that
they can stand in for each other (same inputs, same outputs)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeplug.plugin_api import Model, PluginError, TensorSpec

from .settings import FINAL, ORIGINAL

ROUTE_OUTPUT = "cascade_model"  # the extra output naming, per input, the model that answered
TWO_GB = 2**31 - 1


@dataclass(frozen=True)
class Member:
    """One model of the cascade: the model, the file name it gets in the cascade folder, and where it
    came from (for the report)."""

    model: Model
    file: str
    origin: str


def specs_of(texts: Sequence[str]) -> list[str]:
    """The model list the user gave, or the default (the chain's final model, then its original)."""
    return list(texts) if texts else [FINAL, ORIGINAL]


def check_count(texts: Sequence[str]) -> None:
    if len(texts) < 2:
        given = ",".join(texts) or "nothing"
        raise PluginError(
            f"adaptive: a cascade needs at least two models, smallest first, and adaptive.models gives "
            f"{len(texts)} ({given}); write -o adaptive.models=small.onnx,large.onnx"
        )


def load(
    texts: Sequence[str],
    final: Model | None,
    original: Model | None,
    loaded: Mapping[str, Model] | None = None,
) -> list[Member]:
    """The models named by `texts` (paths, @final, @original), with their cascade file names; `loaded`
    holds files already loaded (by pre_optimize)."""
    check_count(texts)
    members: list[Member] = []
    for index, text in enumerate(texts):
        if text == FINAL:
            if final is None:
                raise PluginError("adaptive: @final names the chain's final model, which is not known yet")
            model, origin = final, _chain_origin(final)
        elif text == ORIGINAL:
            if original is None:
                raise PluginError("adaptive: @original names the chain's original model, which is not known")
            model, origin = original, "the model the chain started from"
        else:
            model, origin = (loaded or {}).get(text) or Model.load(Path(text)), str(text)
        members.append(Member(model, f"{index}-{_stem(model, text)}.onnx", origin))
    _check_distinct(members)
    return members


def _chain_origin(model: Model) -> str:
    steps = ", ".join(model.history)
    return f"the chain's final model, after {steps}" if steps else "the chain's final model, no step applied"


def _stem(model: Model, text: str) -> str:
    if text in (FINAL, ORIGINAL):
        base = model.source.stem if model.source is not None else "model"
        stem = "-".join([base, *model.history]) if text == FINAL else base
    else:  # a file of an earlier cascade keeps its name, not its index
        stem = re.sub(r"^\d+-", "", Path(text).stem)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "model"


def _check_distinct(members: Sequence[Member]) -> None:
    seen: dict[bytes, Member] = {}
    for member in members:
        data = member.model.serialized()
        if data in seen:
            first = seen[data]
            raise PluginError(
                f"adaptive: models {first.file} ({first.origin}) and {member.file} ({member.origin}) are the "
                "same model; a cascade needs a smaller model before a larger one (put a compressing step "
                "before adaptive, or name the models with -o adaptive.models=small.onnx,large.onnx)"
            )
        seen[data] = member


def check_compatible(members: Sequence[Member]) -> None:
    """Refuse (PluginError, one sentence) models that take other inputs or give other outputs than the
    first one, models over 2 GB, and an output named like the cascade's route output."""
    first = members[0]
    for member in members:
        if member.model.proto.ByteSize() > TWO_GB:
            raise PluginError(
                f"adaptive: model {member.file} ({member.origin}) is over 2 GB; cascade models must fit in "
                "one .onnx file"
            )
        if any(o.name == ROUTE_OUTPUT for o in member.model.outputs):
            raise PluginError(
                f"adaptive: model {member.file} has an output named {ROUTE_OUTPUT!r}, the name the cascade "
                "gives its extra output (which model answered); rename that output"
            )
    for member in members[1:]:
        for what, mine, theirs in (
            ("inputs", first.model.inputs, member.model.inputs),
            ("outputs", first.model.outputs, member.model.outputs),
        ):
            why = _difference(mine, theirs)
            if why:
                raise PluginError(
                    f"adaptive: the cascade's models must have the same {what}, and {member.file} "
                    f"({member.origin}) differs from {first.file} ({first.origin}): {why}"
                )


def _difference(mine: Sequence[TensorSpec], theirs: Sequence[TensorSpec]) -> str | None:
    """Why two lists of tensors are not interchangeable (names, types, known dimensions past the batch)."""
    names_a, names_b = [t.name for t in mine], [t.name for t in theirs]
    if sorted(names_a) != sorted(names_b):
        return f"names {', '.join(names_a)} against {', '.join(names_b)}"
    by_name = {t.name: t for t in theirs}
    for a in mine:
        b = by_name[a.name]
        if a.dtype != b.dtype:
            return f"{a.name} is {a.dtype} against {b.dtype}"
        if len(a.shape) != len(b.shape) or any(
            isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(a.shape[1:], b.shape[1:])
        ):
            return f"{a.describe()} against {b.describe()}"
    return None
