"""fashion_cnn: trained here to at least 90% on the Fashion-MNIST test set."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import zoo
from benchmarks.zoo.onnx_export import run_batched

pytestmark = pytest.mark.slow  # minutes of training from a cold cache


def test_accuracy_recorded_and_remeasured(fashion_cnn: zoo.ZooModel) -> None:
    assert fashion_cnn.properties["test_accuracy"] >= 0.90
    with np.load(fashion_cnn.data["evaluation"]) as data:
        images, labels = data["input"], data["labels"]
    assert images.shape == (10000, 1, 28, 28) and labels.shape == (10000,)
    pick = np.random.default_rng(1).choice(len(images), 2000, replace=False)
    logits = run_batched(fashion_cnn.model, {"input": images[pick]}, batch=500)
    remeasured = np.mean(logits.argmax(1) == labels[pick])
    assert remeasured >= 0.90
    assert abs(remeasured - fashion_cnn.properties["test_accuracy"]) < 0.02  # 2,000 of the 10,000 images
    folded_vs_bn = run_batched(fashion_cnn.models["model_bn"], {"input": images[pick[:256]]})
    np.testing.assert_allclose(folded_vs_bn, logits[:256], atol=1e-4, rtol=1e-4)
    assert fashion_cnn.metric == "accuracy"


def test_calibration_comes_from_the_training_set(fashion_cnn: zoo.ZooModel) -> None:
    with np.load(fashion_cnn.data["calibration"]) as cal, np.load(fashion_cnn.data["evaluation"]) as ev:
        cal_x, ev_x = cal["input"], ev["input"]
    assert cal_x.shape[1:] == (1, 28, 28) and len(cal_x) >= 256
    ev_keys = {row.tobytes() for row in ev_x.reshape(len(ev_x), -1)}
    assert not any(row.tobytes() in ev_keys for row in cal_x.reshape(len(cal_x), -1))
