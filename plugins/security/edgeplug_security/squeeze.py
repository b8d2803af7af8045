"""Feature squeezing (Xu, Evans, Qi, NDSS 2018): compare the prediction on an image with the predictions
on bit-depth-reduced and median-smoothed copies; a large L1 distance between the softmax vectors flags
an adversarial input. The threshold is calibrated on clean data to a chosen false-positive rate."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from edgeplug.plugin_api import TensorSpec

Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Squeezer:
    """The squeezers of one image classifier and the distance threshold (None before calibration)."""

    input: str
    output: str
    layout: str  # NCHW or NHWC
    low: float  # the pixel range bit-depth reduction quantizes in
    high: float
    bits: int  # 0 disables bit-depth reduction
    median: int  # median window side; 0 or 1 disables smoothing
    threshold: float | None = None
    fpr: float | None = None
    samples: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Squeezer:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    # -- the squeezers ------------------------------------------------------------------------
    def squeezed(self, x: np.ndarray) -> list[np.ndarray]:
        """The squeezed copies of a batch of images, in a fixed order (bit depth, then median)."""
        copies = []
        if self.bits > 0:
            copies.append(reduce_bit_depth(x, self.bits, self.low, self.high))
        if self.median > 1:
            copies.append(median_smooth(x, self.median, self.layout))
        return copies

    def scores(self, run: Run, inputs: Mapping[str, np.ndarray], original: np.ndarray) -> np.ndarray:
        """Per-sample max over squeezers of the L1 distance between softmax(original) and softmax(squeezed).

        One extra `run` call per squeezer (each keeps the batch size, so fixed batch sizes work)."""
        x = inputs[self.input]
        reference = probabilities(np.asarray(original).reshape(len(x), -1))
        score = np.zeros(len(x), dtype=np.float64)
        for copy in self.squeezed(x):
            squeezed_out = np.asarray(run({**inputs, self.input: copy})[self.output]).reshape(len(x), -1)
            score = np.maximum(score, np.abs(probabilities(squeezed_out) - reference).sum(axis=-1))
        return score


def reduce_bit_depth(x: np.ndarray, bits: int, low: float, high: float) -> np.ndarray:
    """Quantize [low, high] to 2**bits levels (values outside are clipped first)."""
    span = high - low if high > low else 1.0
    levels = 2**bits - 1
    unit = np.clip((x - low) / span, 0.0, 1.0)
    return (np.round(unit * levels) / levels * span + low).astype(x.dtype, copy=False)


def median_smooth(x: np.ndarray, size: int, layout: str) -> np.ndarray:
    """Median filter of a size x size window over the spatial axes, edges replicated (window anchored as
    in Xu et al.'s 2x2 filter: the pixel and its right/lower neighbours)."""
    h_axis, w_axis = (2, 3) if layout == "NCHW" else (1, 2)
    pad = [(0, 0)] * x.ndim
    pad[h_axis] = (size // 2 - (1 - size % 2), size // 2)
    pad[w_axis] = (size // 2 - (1 - size % 2), size // 2)
    padded = np.pad(x, pad, mode="edge")
    height, width = x.shape[h_axis], x.shape[w_axis]
    windows = []
    for dy in range(size):
        for dx in range(size):
            index: list[slice] = [slice(None)] * x.ndim
            index[h_axis] = slice(dy, dy + height)
            index[w_axis] = slice(dx, dx + width)
            windows.append(padded[tuple(index)])
    return np.median(np.stack(windows, axis=0), axis=0).astype(x.dtype, copy=False)


def probabilities(values: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, unless the rows already are probabilities (non-negative, sum 1)."""
    values = values.astype(np.float64, copy=False)
    if values.size and values.min() >= 0 and np.allclose(values.sum(axis=-1), 1.0, atol=1e-3):
        return values
    shifted = values - values.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def classifier_io(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> tuple[str, str, str] | None:
    """(input, output, layout) when the model is an image classifier: one 4-D float image input
    (1 or 3 or 4 channels) and a 2-D float [N, C>=2] output; None otherwise."""
    if len(inputs) != 1 or inputs[0].dtype.kind != "f" or len(inputs[0].shape) != 4:
        return None
    logits = [
        o
        for o in outputs
        if o.dtype.kind == "f" and len(o.shape) == 2 and (not isinstance(o.shape[1], int) or o.shape[1] >= 2)
    ]
    if not logits:
        return None
    shape = inputs[0].shape
    channels_first = shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4)
    channels_last = shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4)
    if not (channels_first or channels_last):
        return None
    return inputs[0].name, logits[0].name, "NCHW" if channels_first else "NHWC"


def threshold_for(scores: np.ndarray, fpr: float) -> float:
    """The smallest calibration score t such that at most `fpr` of the clean scores are above it (flag if
    score > t): with n scores, the (n - floor(fpr * n))-th smallest."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    allowed = int(np.floor(fpr * len(ordered) + 1e-9))
    return float(ordered[max(len(ordered) - 1 - allowed, 0)])
