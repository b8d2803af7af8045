"""Output filtering: below min_confidence the result is an explicit abstention with its score (exit 0), and
a top-1 label on the deny list abstains too."""

from __future__ import annotations

import json
from pathlib import Path

import edgeplug
import numpy as np
import onnxruntime as ort
import pytest
from edgeplug import OptionError

from .conftest import cli, infer_cli


def probabilities(model: Path, x: np.ndarray) -> np.ndarray:
    logits = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    exp = np.exp(logits - logits.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def ambiguous(guarded_digits: Path, digits: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, float]:
    """An image blended from two digits, which the CNN is unsure about, and its top-1 probability."""
    x = digits[0][:12]
    blends = (0.5 * x[:, None] + 0.5 * x[None, :]).reshape(-1, 1, 8, 8).astype(np.float32)
    tops = probabilities(guarded_digits, blends).max(1)
    pick = int(tops.argmin())
    assert tops[pick] < 0.9
    return blends[pick : pick + 1], float(tops[pick])


def test_low_confidence_is_an_explicit_abstention(
    guarded_digits: Path, ambiguous: tuple[np.ndarray, float], tmp_path: Path
) -> None:
    x, top = ambiguous
    result = infer_cli(guarded_digits, {"input": x}, tmp_path, "min_confidence=0.99")
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first == f"abstained: confidence {top:.3f} (sample 0) below min_confidence 0.99"
    api = edgeplug.infer(guarded_digits, {"input": x}, ["security"], {"security": {"min_confidence": 0.99}})
    assert api.abstained and api.flags["confidence"] == [pytest.approx(top, abs=1e-4)]
    confident = edgeplug.infer(
        guarded_digits, {"input": x}, ["security"], {"security": {"min_confidence": top - 0.01}}
    )
    assert not confident.abstained and confident.reason is None


def test_json_output_says_abstained(
    guarded_digits: Path, ambiguous: tuple[np.ndarray, float], tmp_path: Path
) -> None:
    np.savez(tmp_path / "x.npz", input=ambiguous[0])
    result = cli(
        [
            "infer",
            str(guarded_digits),
            "--input",
            str(tmp_path / "x.npz"),
            "--guard",
            "security",
            "-o",
            "security.min_confidence=0.99",
            "--json",
        ]
    )
    summary = json.loads(result.stdout)
    assert result.exit_code == 0 and summary["abstained"] is True
    assert "below min_confidence" in summary["reason"]


def test_deny_list(guarded_digits: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, labels = digits
    picks = [int(np.flatnonzero(labels == 3)[0]), int(np.flatnonzero(labels == 5)[0])]
    result = edgeplug.infer(
        guarded_digits, {"input": x[picks]}, ["security"], {"security": {"deny_labels": ["3"]}}
    )
    assert result.abstained
    assert result.reason == "label 3 (sample 0) is on the deny list"
    allowed = edgeplug.infer(
        guarded_digits, {"input": x[picks[1:]]}, ["security"], {"security": {"deny_labels": ["3"]}}
    )
    assert not allowed.abstained


def test_filters_need_a_classifier(tmp_path: Path) -> None:
    from .models import allocating_model

    model = allocating_model(tmp_path / "sum.onnx")  # output [N, 1]: not class scores
    inputs = {"x": np.ones((1, 1), np.float32), "width": np.array([3], np.int64)}
    with pytest.raises(OptionError, match="need a classifier output"):
        edgeplug.infer(
            model, inputs, ["security"], {"security": {"require_hash": False, "min_confidence": 0.5}}
        )


def test_bad_deny_labels_refused_before_running(
    guarded_digits: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    with pytest.raises(
        OptionError, match=r"bad value 'cat' for security\.deny_labels: expected class indices"
    ):
        edgeplug.infer(
            guarded_digits, {"input": digits[0][:1]}, ["security"], {"security": {"deny_labels": "cat"}}
        )
