"""Shared fixtures of the prune tests: the example CNN, its data, and zoo models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DIGITS = EXAMPLES / "digits_cnn.onnx"
TEST_DATA = EXAMPLES / "digits_test.npz"
TRAIN_DATA = EXAMPLES / "digits_train.npz"


@pytest.fixture(scope="session")
def resnet_style() -> Path:
    from tests import zoo

    return zoo.cached("resnet_style")


@pytest.fixture(scope="session")
def mobilenet_style() -> Path:
    from tests import zoo

    return zoo.cached("mobilenet_style")


def run_onnx(model: bytes | str | Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a model (bytes or path) in onnxruntime on one feed."""
    source = model if isinstance(model, bytes) else str(model)
    sess = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def digits_accuracy(model: bytes | str | Path) -> float:
    with np.load(TEST_DATA) as npz:
        x, y = npz["input"], npz["labels"]
    logits = run_onnx(model, {"input": x})[0]
    return float(np.mean(logits.argmax(1) == y))
