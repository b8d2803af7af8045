"""The squeezers themselves: bit-depth reduction levels, the 2x2 median window, layouts, and model detection."""

from __future__ import annotations

import numpy as np
import pytest
from edgeplug.model import TensorSpec
from edgeplug_security.squeeze import (
    classifier_io,
    median_smooth,
    probabilities,
    reduce_bit_depth,
    threshold_for,
)


def test_bit_depth_levels() -> None:
    x = np.linspace(0, 1, 101, dtype=np.float32)
    assert sorted(set(reduce_bit_depth(x, 1, 0.0, 1.0).tolist())) == [0.0, 1.0]
    three = reduce_bit_depth(x, 3, 0.0, 1.0)
    assert len(set(three.tolist())) == 8 and np.abs(three - x).max() <= 1 / 14 + 1e-6
    scaled = reduce_bit_depth(x * 255, 1, 0.0, 255.0)  # quantizes in the recorded range, not [0, 1]
    assert sorted(set(scaled.tolist())) == [0.0, 255.0]


def brute_median(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape
    before = size // 2 - (1 - size % 2)
    out = np.empty_like(image)
    for i in range(height):
        for j in range(width):
            rows = np.clip(np.arange(i - before, i - before + size), 0, height - 1)
            cols = np.clip(np.arange(j - before, j - before + size), 0, width - 1)
            out[i, j] = np.median(image[np.ix_(rows, cols)])
    return out


@pytest.mark.parametrize("size", [2, 3])
def test_median_matches_a_brute_force_window(size: int) -> None:
    x = np.random.default_rng(0).random((2, 3, 6, 7)).astype(np.float32)
    got = median_smooth(x, size, "NCHW")
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(got[n, c], brute_median(x[n, c], size), rtol=1e-6)
    nhwc = median_smooth(x.transpose(0, 2, 3, 1), size, "NHWC")
    np.testing.assert_allclose(nhwc, got.transpose(0, 2, 3, 1), rtol=1e-6)


def test_probabilities_and_threshold() -> None:
    logits = np.array([[2.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(probabilities(logits).sum(1), 1.0)
    probs = np.array([[0.9, 0.1]])
    np.testing.assert_allclose(probabilities(probs), probs)  # already probabilities: kept
    scores = np.arange(100) / 100
    t = threshold_for(scores, 0.05)
    assert np.mean(scores > t) <= 0.05 and np.mean(scores >= t) > 0.05


def spec(name: str, dtype: str, shape: tuple) -> TensorSpec:
    return TensorSpec(name, np.dtype(dtype), shape)


def test_image_classifier_detection() -> None:
    logits = [spec("logits", "float32", ("N", 10))]
    assert classifier_io([spec("x", "float32", ("N", 3, 224, 224))], logits) == ("x", "logits", "NCHW")
    assert classifier_io([spec("x", "float32", (1, 32, 32, 3))], logits) == ("x", "logits", "NHWC")
    assert classifier_io([spec("ids", "int64", ("N", 16))], logits) is None
    assert classifier_io([spec("x", "float32", ("N", 3, 224, 224))], [spec("y", "float32", ("N", 1))]) is None
