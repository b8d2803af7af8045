"""Feature squeezing against FGSM on the trained example CNN, through the plugin's own path: the threshold is
calibrated by `edgeplug run --plugins security` on one split of clean images (5% false positives) and the
guard (`squeeze=true`) is measured on another split, clean and attacked."""

from __future__ import annotations

import json
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from edgeplug import GuardRefusal
from edgeplug.model import get_metadata

from .conftest import cli, infer_cli
from .fgsm import fgsm, loss_gradient, ort_runner

SQUEEZE = {"security": {"squeeze": True}}


def calibrated(example_model: Path, calibration: Path, validation: Path, out: Path) -> Path:
    result = cli(
        [
            "run",
            str(example_model),
            "--plugins",
            "security",
            "--data",
            str(validation),
            "--calibration-data",
            str(calibration),
            "--output-dir",
            str(out),
            "--quiet",
        ]
    )
    assert result.exit_code == 0, result.output
    return out / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def splits(
    tmp_path_factory: pytest.TempPathFactory, digits: tuple[np.ndarray, np.ndarray]
) -> dict[str, Path]:
    """digits_test.npz cut in two disjoint halves (A calibrates, B measures)."""
    folder = tmp_path_factory.mktemp("splits")
    x, labels = digits
    order = np.random.default_rng(0).permutation(len(x))
    for name, part in (("A", order[: len(x) // 2]), ("B", order[len(x) // 2 :])):
        np.savez(folder / f"{name}.npz", input=x[part], labels=labels[part])
    return {"A": folder / "A.npz", "B": folder / "B.npz"}


def flagged(model: Path, x: np.ndarray) -> np.ndarray:
    result = edgeplug.infer(model, {"input": x}, guards=["security"], options=SQUEEZE)
    assert result.flags["squeeze_threshold"] > 0
    return np.array(result.flags["adversarial"])


def measure(model: Path, x: np.ndarray, labels: np.ndarray, eps: float) -> tuple[float, float, int]:
    """(detection rate of successful attacks, false-positive rate on clean x, successful attacks)."""
    run = ort_runner(str(model))
    clean_fpr = float(flagged(model, x).mean())
    correct = run({"input": x})["logits"].argmax(1) == labels
    xs, ys = x[correct], labels[correct]
    adv = fgsm(xs, loss_gradient(run, xs, ys), eps)
    success = run({"input": adv})["logits"].argmax(1) != ys
    return float(flagged(model, adv[success]).mean()), clean_fpr, int(success.sum())


def test_threshold_is_recorded_at_the_chosen_fpr(
    example_model: Path, splits: dict[str, Path], tmp_path: Path
) -> None:
    model = calibrated(example_model, splits["A"], splits["B"], tmp_path)
    squeeze = json.loads(get_metadata(onnx.load(str(model)), "edgeplug.security"))["squeeze"]
    assert squeeze["fpr"] == 0.05 and squeeze["samples"] == 225 and squeeze["layout"] == "NCHW"
    assert squeeze["bits"] == 3 and squeeze["median"] == 0  # the 2x2 median wrecks 8x8 digits: dropped
    with np.load(splits["A"]) as data:
        clean = data["input"]
    assert flagged(model, clean).mean() <= 0.05  # on its own calibration split, by construction
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["steps"][0]["details"]["squeeze_median_top1_agreement"] < 0.95


def test_fgsm_eps_0_2_is_detected_on_held_out_images(
    example_model: Path, splits: dict[str, Path], tmp_path: Path
) -> None:
    model = calibrated(example_model, splits["A"], splits["B"], tmp_path)
    with np.load(splits["B"]) as data:
        x, labels = data["input"], data["labels"]
    detection, fpr, successes = measure(model, x, labels, 0.2)
    assert successes > 100  # FGSM at eps 0.2 really fools the CNN
    assert detection >= 0.6, f"only {detection:.1%} of {successes} successful attacks flagged"
    assert fpr <= 0.10, f"{fpr:.1%} of clean held-out images flagged (calibrated to 5%)"
    assert detection > 3 * fpr  # far from a flagger that ignores the image


def test_fgsm_with_the_threshold_calibrated_on_the_training_images(
    example_model: Path,
    example_train_data: Path,
    splits: dict[str, Path],
    tmp_path: Path,
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    """The CNN is over-confident on the images it was trained on, so a threshold calibrated on them (5% of
    the training images flagged) flags more of the new clean images than asked: detection looks better
    (>= 60%) but the false-positive rate on digits_test rises above the 5% target (13.6% measured), and it
    must stay bounded (a threshold that flags everything would reach 100% detection)."""
    model = calibrated(example_model, example_train_data, splits["B"], tmp_path)
    x, labels = digits
    detection, fpr, successes = measure(model, x, labels, 0.2)
    assert successes > 200
    assert detection >= 0.6, f"only {detection:.1%} of {successes} successful attacks flagged"
    assert 0.05 < fpr <= 0.20, f"{fpr:.1%} of clean digits_test images flagged"
    assert detection > 3 * fpr


def test_squeeze_through_the_cli(
    guarded_digits: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, labels = digits
    run = ort_runner(str(guarded_digits))
    adv = fgsm(x[:40], loss_gradient(run, x[:40], labels[:40]), 0.3)
    fooled = run({"input": adv})["logits"].argmax(1) != labels[:40]
    caught = flagged(guarded_digits, adv) & fooled
    pick = adv[int(np.flatnonzero(caught)[0])][None]
    shown = infer_cli(guarded_digits, {"input": pick}, tmp_path, "squeeze=true")
    assert shown.exit_code == 0 and "adversarial: [True]" in shown.stdout
    abstained = infer_cli(guarded_digits, {"input": pick}, tmp_path, "squeeze=true", "on_adversarial=abstain")
    assert abstained.exit_code == 0
    assert abstained.stdout.startswith("abstained: flagged as adversarial by feature squeezing: score ")
    with pytest.raises(GuardRefusal, match="input 'input' flagged as adversarial"):
        edgeplug.infer(
            guarded_digits,
            {"input": pick},
            ["security"],
            {"security": {"squeeze": True, "on_adversarial": "refuse"}},
        )


def test_squeeze_needs_a_calibrated_record(
    example_model: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    result = infer_cli(
        example_model, {"input": digits[0][:1]}, tmp_path, "require_hash=false", "squeeze=true"
    )
    assert result.exit_code == 2 and "security.squeeze needs a model recorded by" in result.stderr
