"""The gate: one score per input that decides whether a model's answer is kept or the input goes on.

Scores and the side that escalates:
- `confidence`: top-1 probability of the model's logits (softmax unless they are probabilities); below
  the threshold goes on.
- `margin`: top-1 minus top-2 probability; below goes on.
- `entropy`: entropy of the probabilities (nats); above goes on.
- `complexity`: a statistic of the input alone, computed before any model runs: the mean squared
  difference of neighbouring pixels (image gradient energy) of a float image [N, C, H, W] / [N, H, W, C] /
  [N, H, W], or the count of non-padding tokens of an integer input [N, L]; above goes on, so a hard input
  skips the models that would not keep its answer.
- a user function `module:function` or `file.py:function`, called `(inputs, outputs)` with the batch's
  input dict and the model's output dict, returning one score per input; below goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from edgeplug.plugin_api import (
    EdgeplugError,
    OptionError,
    PluginError,
    TensorSpec,
    load_function,
)

BUILTIN = ("confidence", "margin", "entropy", "complexity")
LOGIT_GATES = ("confidence", "margin", "entropy")
FUNCTION = "function"
# a sample's probabilities must sum to 1 within this to be taken as probabilities rather than logits
PROBABILITY_SUM_ATOL = 1e-3


@dataclass
class Gate:
    """A gate as the manifest records it. `kind` is a built-in name or `function`; `output`/`input` the
    tensor it reads; `softmax` whether the output holds logits (decided once, on the selection samples);
    `function` the user function as `module:function` or `FILE.py:function` (the file inside the cascade
    folder)."""

    kind: str
    output: str | None = None
    input: str | None = None
    pad_token: int = 0
    softmax: bool = True
    function: str | None = None
    _loaded: Callable[..., Any] | None = field(default=None, repr=False, compare=False)

    @property
    def escalates_above(self) -> bool:
        """True when a score above the threshold sends the input on (entropy, complexity)."""
        return self.kind in ("entropy", "complexity")

    @property
    def before_model(self) -> bool:
        """The score depends on the input only: the model that would not keep the answer never runs."""
        return self.kind == "complexity"

    @property
    def needs_logits(self) -> bool:
        return self.kind in LOGIT_GATES

    def describe(self) -> str:
        if self.kind == FUNCTION:
            return f"the function {self.function}"
        if self.kind == "complexity":
            return f"the complexity of input {self.input!r}"
        return f"the {self.kind} of output {self.output!r}"

    def escalates(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        """Which inputs go on to the next model at this threshold."""
        scores = np.asarray(scores, np.float64)
        return scores > threshold if self.escalates_above else scores < threshold

    def score(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray] | None,
        folder: Path | None = None,
    ) -> np.ndarray:
        """One score per input of the batch (`outputs` are the model's; None for the complexity gate)."""
        count = len(next(iter(inputs.values())))
        if self.kind == "complexity":
            values = complexity(inputs[self.input or next(iter(inputs))], self.pad_token)
        elif self.kind == FUNCTION:
            func = self.load(folder)
            try:
                values = np.asarray(func(dict(inputs), dict(outputs or {})), np.float64).reshape(-1)
            except Exception as exc:
                raise EdgeplugError(
                    f"the gate function {self.function} raised {type(exc).__name__}: {exc}"
                ) from None
        else:
            probs = probabilities(np.asarray((outputs or {})[self.output]), self.softmax)
            if self.kind == "confidence":
                values = probs.max(axis=1)
            elif self.kind == "margin":
                top2 = np.sort(probs, axis=1)[:, -2:]
                values = top2[:, 1] - top2[:, 0]
            else:
                values = -(probs * np.log(np.clip(probs, 1e-30, None))).sum(axis=1)
        if values.shape != (count,):
            raise EdgeplugError(
                f"the gate ({self.describe()}) gave {values.size} scores for a batch of {count} inputs"
            )
        if not np.isfinite(values).all():
            raise EdgeplugError(f"the gate ({self.describe()}) gave a NaN or infinite score")
        return values

    def load(self, folder: Path | None = None) -> Callable[..., Any]:
        """The user function; a recorded file is taken from `folder` (the cascade folder)."""
        if self._loaded is None:
            spec = str(self.function)
            where, _, name = spec.rpartition(":")
            if where.endswith(".py") and folder is not None:
                spec = f"{folder / where}:{name}"
            self._loaded = load_function(spec, "adaptive gate")
        return self._loaded

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "output": self.output,
            "input": self.input,
            "pad_token": self.pad_token,
            "softmax": self.softmax,
            "function": self.function,
            "escalates": "above" if self.escalates_above else "below",
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Gate:
        kind = raw.get("kind")
        if kind not in (*BUILTIN, FUNCTION):
            raise ValueError(f"unknown gate {kind!r}")
        if kind == FUNCTION and not isinstance(raw.get("function"), str):
            raise ValueError("a function gate names no function")
        if kind in LOGIT_GATES and not isinstance(raw.get("output"), str):
            raise ValueError(f"the {kind} gate names no output")
        return cls(
            kind=kind,
            output=raw.get("output"),
            input=raw.get("input"),
            pad_token=int(raw.get("pad_token") or 0),
            softmax=bool(raw.get("softmax", True)),
            function=raw.get("function"),
        )


def parse(gate: str, output: str | None, input_name: str | None, pad_token: int) -> Gate:
    """The gate the option `adaptive.gate` names; a function is imported now, so a typo fails before any
    work. OptionError names the option and what is expected."""
    text = str(gate).strip()
    if text in BUILTIN:
        return Gate(text, output=output, input=input_name, pad_token=pad_token)
    if ":" not in text:
        raise OptionError(
            f"bad value {gate!r} for adaptive.gate: expected one of {', '.join(BUILTIN)}, or a function "
            "written as module:function or path/to/file.py:function"
        )
    found = Gate(FUNCTION, output=output, input=input_name, pad_token=pad_token, function=text)
    found.load()
    return found


def fit(gate: Gate, inputs: list[TensorSpec], outputs: list[TensorSpec], model: str) -> Gate:
    """The gate with the tensors it reads filled in, checked against a model's declared inputs and
    outputs; PluginError (one sentence) when the model lacks what the gate reads."""
    if gate.needs_logits:
        logits = [o for o in outputs if _declared_logits(o)]
        if gate.output is not None:
            named = [o for o in outputs if o.name == gate.output]
            if not named:
                raise OptionError(
                    f"bad value {gate.output!r} for adaptive.output: model {model} has no such output "
                    f"(it has {', '.join(o.name for o in outputs)})"
                )
            if not _declared_logits(named[0]):
                raise PluginError(
                    f"adaptive: the {gate.kind} gate reads logits, and output {named[0].describe()} of "
                    f"model {model} is not 2-D [N, C>=2] floats; gate on complexity or a function instead"
                )
            chosen = named[0].name
        elif logits:
            chosen = logits[0].name
        else:
            raise PluginError(
                f"adaptive: the {gate.kind} gate reads logits, and model {model} has no 2-D [N, C>=2] float "
                f"output ({', '.join(o.describe() for o in outputs)}); gate on complexity or a function instead"
            )
        return Gate(gate.kind, chosen, gate.input, gate.pad_token, gate.softmax, gate.function, gate._loaded)
    if gate.kind == "complexity":
        name = gate.input or inputs[0].name
        named = [i for i in inputs if i.name == name]
        if not named:
            raise OptionError(
                f"bad value {name!r} for adaptive.complexity_input: model {model} has no such input "
                f"(it has {', '.join(i.name for i in inputs)})"
            )
        if not _complexity_readable(named[0]):
            raise PluginError(
                f"adaptive: the complexity gate reads an image (float [N, C, H, W], [N, H, W, C] or [N, H, W]) "
                f"or tokens (integer [N, L]), and input {named[0].describe()} of model {model} is neither"
            )
        return Gate(gate.kind, gate.output, name, gate.pad_token, gate.softmax, gate.function, gate._loaded)
    return gate


def _declared_logits(spec: TensorSpec) -> bool:
    classes = spec.shape[1] if len(spec.shape) == 2 else None
    return spec.dtype.kind == "f" and len(spec.shape) == 2 and (not isinstance(classes, int) or classes >= 2)


def _complexity_readable(spec: TensorSpec) -> bool:
    return (spec.dtype.kind == "f" and len(spec.shape) in (3, 4)) or (
        spec.dtype.kind in "iu" and len(spec.shape) == 2
    )


def looks_like_probabilities(values: np.ndarray) -> bool:
    """Every row non-negative and summing to 1: the output already holds probabilities."""
    values = np.asarray(values, np.float64)
    return bool(
        values.size and values.min() >= 0 and np.allclose(values.sum(axis=1), 1.0, atol=PROBABILITY_SUM_ATOL)
    )


def probabilities(values: np.ndarray, softmax: bool = True) -> np.ndarray:
    """Rows of class probabilities: the softmax of logits, or the values as they are."""
    values = np.asarray(values, np.float64)
    if not softmax:
        return values
    shifted = values - values.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def complexity(array: np.ndarray, pad_token: int = 0) -> np.ndarray:
    """Per input: image gradient energy (mean squared difference of neighbouring values along the two
    spatial axes) of a float image, or the number of non-padding tokens of an integer [N, L] input."""
    array = np.asarray(array)
    count = len(array)
    if array.dtype.kind in "iub" and array.ndim == 2:
        return (array != pad_token).sum(axis=1).astype(np.float64)
    if array.dtype.kind == "f" and array.ndim in (3, 4):
        values = array.astype(np.float64)
        # [N, H, W]; [N, C, H, W] unless the last axis looks like channels (1, 3 or 4 of them)
        channels_last = array.ndim == 3 or array.shape[3] <= 4 < array.shape[1]
        axes = (1, 2) if channels_last else (2, 3)
        energy = np.zeros(count)
        for axis in axes:
            if values.shape[axis] > 1:
                energy += (np.diff(values, axis=axis) ** 2).reshape(count, -1).mean(axis=1)
        return energy
    raise PluginError(
        f"adaptive: the complexity gate cannot read an input of shape {list(array.shape)} and type "
        f"{array.dtype}; it reads float images or integer tokens"
    )
