"""Image augmentation for distillation: random horizontal flips and shifted crops of 4-D float inputs, each
applied to half of the samples. The teacher sees the same augmented inputs, so the targets stay right; the labels
hold for shifted crops but not for flips (a flipped digit is no longer that digit), so flipped samples are
masked out of the labels' cross-entropy."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .training_data import Sample

CHANNELS = (1, 2, 3, 4)
SHIFT_FRACTION = 0.125  # largest shift, as a share of the height and width (reflected padding)
FLIP_SHARE = 0.5
SHIFT_SHARE = 0.5  # half of the samples keep their framing: the model's own input distribution stays


def image_axes(shape: tuple[int | str | None, ...], dtype: np.dtype) -> tuple[int, int] | None:
    """(height axis, width axis) of an NCHW or NHWC image input, None for anything else."""
    if len(shape) != 4 or np.dtype(dtype).kind != "f":
        return None
    dims = [d if isinstance(d, int) else None for d in shape]
    if dims[1] in CHANNELS and (dims[2] or 0) > 4 and (dims[3] or 0) > 4:
        return 2, 3
    if dims[3] in CHANNELS and (dims[1] or 0) > 4 and (dims[2] or 0) > 4:
        return 1, 2
    return None


def augment(
    inputs: Mapping[str, np.ndarray], axes: Mapping[str, tuple[int, int]], rng: np.random.Generator
) -> tuple[Sample, np.ndarray]:
    """Flip and shift-crop every image input (the same draw per sample for all of them); returns the new
    inputs and the per-sample mask of samples whose labels still hold (not flipped)."""
    count = len(next(iter(inputs.values())))
    flips = rng.random(count) < FLIP_SHARE
    shifted = rng.random(count) < SHIFT_SHARE
    shifts = np.where(shifted[:, None], rng.random((count, 2)), 0.5)  # 0.5: the centre, no shift
    result: Sample = dict(inputs)
    for name, (h_axis, w_axis) in axes.items():
        array = inputs[name]
        height, width = array.shape[h_axis], array.shape[w_axis]
        pad_h, pad_w = max(1, round(height * SHIFT_FRACTION)), max(1, round(width * SHIFT_FRACTION))
        widths = [(0, 0)] * array.ndim
        widths[h_axis], widths[w_axis] = (pad_h, pad_h), (pad_w, pad_w)
        padded = np.pad(array, widths, mode="reflect" if min(height, width) > max(pad_h, pad_w) else "edge")
        out = np.empty_like(array)
        for i in range(count):
            top = int(shifts[i, 0] * (2 * pad_h + 1))
            left = int(shifts[i, 1] * (2 * pad_w + 1))
            index: list[slice | int] = [slice(None)] * array.ndim
            index[0] = i
            index[h_axis] = slice(top, top + height)
            index[w_axis] = slice(left, left + width)
            crop = padded[tuple(index)]
            if flips[i]:
                crop = np.flip(crop, axis=w_axis - 1)
            out[i] = crop
        result[name] = out
    return result, ~flips
