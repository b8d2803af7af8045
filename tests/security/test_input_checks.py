"""Input checks: dtype, shape (dynamic dims), NaN/Inf and the recorded value range, through the CLI and the API."""

from __future__ import annotations

import json
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from edgeplug import GuardRefusal
from edgeplug.model import get_metadata
from edgeplug_security.input_spec import InputSpec, check_inputs

from .conftest import error_line, infer_cli


def test_run_records_the_input_spec(guarded_digits: Path) -> None:
    record = json.loads(get_metadata(onnx.load(str(guarded_digits)), "edgeplug.security"))
    spec = record["inputs"]["input"]
    assert spec["dtype"] == "float32"
    assert spec["shape"] == ["batch", 1, 8, 8]
    low, high = spec["range"]
    assert low == pytest.approx(-0.05) and high == pytest.approx(1.05)  # [0, 1] observed, 5% margin
    assert "calibration" in spec["range_source"]
    report = json.loads((guarded_digits.parent / "report.json").read_text())
    step = report["steps"][0]
    assert step["status"] == "applied" and step["verification"]["passed"]
    assert step["details"]["input_spec"]["input"]["range"] == [low, high]


def test_clean_inputs_pass(
    guarded_digits: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, labels = digits
    result = infer_cli(guarded_digits, {"input": x[:8]}, tmp_path)
    assert result.exit_code == 0, result.output
    assert f"top-1 {labels[:8].tolist()}" in result.stdout


def test_out_of_range_refused(
    guarded_digits: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x = digits[0][:2] * 255.0  # an unnormalized image
    line = error_line(infer_cli(guarded_digits, {"input": x}, tmp_path))
    assert "input 'input' has values in [0, 255], outside its allowed range [-0.05, 1.05]" in line


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_non_finite_refused(
    guarded_digits: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path, bad: float, word: str
) -> None:
    x = digits[0][:2].copy()
    x[1, 0, 3, 4] = bad
    line = error_line(infer_cli(guarded_digits, {"input": x}, tmp_path))
    assert f"input 'input' holds 1 {word} value(s) (first at index [1, 0, 3, 4])" in line


def test_wrong_shape_refused_by_the_cli(
    guarded_digits: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x = digits[0][:2, :, :, :7]  # 8x7 images
    line = error_line(infer_cli(guarded_digits, {"input": x}, tmp_path))
    assert "input has shape [2, 1, 8, 7]" in line


def test_user_range_at_inference(
    guarded_digits: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    line = error_line(infer_cli(guarded_digits, {"input": digits[0][:1]}, tmp_path, "input_range=0,0.5"))
    assert "outside its allowed range [0, 0.5] (security.input_range)" in line


def test_api_refuses_with_guard_refusal(guarded_digits: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    x = digits[0][:1].copy()
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(GuardRefusal, match="NaN"):
        edgeplug.infer(guarded_digits, {"input": x}, guards=["security"])
    ok = edgeplug.infer(guarded_digits, {"input": digits[0][:1]}, guards=["security"])
    assert ok.outputs["logits"].argmax(1)[0] == digits[1][0]


SPEC = {"x": InputSpec("x", "float32", ("batch", 3, None, 8), 0.0, 1.0, "user")}


def test_dynamic_dims_are_respected() -> None:
    check_inputs({"x": np.zeros((5, 3, 17, 8), np.float32)}, SPEC, batch_free=False)
    check_inputs({"x": np.zeros((1, 3, 2, 8), np.float32)}, SPEC, batch_free=False)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((1, 3, 4, 8), np.float64), "has dtype float64, the model expects float32"),
        (np.zeros((1, 3, 4, 8), np.int32), "has dtype int32"),
        (
            np.zeros((1, 4, 4, 8), np.float32),
            r"has shape \[1, 4, 4, 8\], the model expects \[batch, 3, \?, 8\] \(axis 1\)",
        ),
        (np.zeros((1, 3, 4), np.float32), r"\(rank 3\)"),
        (np.zeros((0, 3, 4, 8), np.float32), "axis 0 is empty"),
        (
            np.full((1, 3, 4, 8), 1.5, np.float32),
            r"values in \[1.5, 1.5\], outside its allowed range \[0, 1\]",
        ),
    ],
)
def test_guard_level_refusals(array: np.ndarray, message: str) -> None:
    with pytest.raises(GuardRefusal, match=message):
        check_inputs({"x": array}, SPEC, batch_free=False)


def test_fixed_batch_of_one_accepts_any_batch_when_run_per_sample() -> None:
    spec = {"x": InputSpec("x", "float32", (1, 3), None, None, None)}
    check_inputs({"x": np.zeros((4, 3), np.float32)}, spec, batch_free=True)
    with pytest.raises(GuardRefusal, match="axis 0"):
        check_inputs({"x": np.zeros((4, 3), np.float32)}, spec, batch_free=False)


def test_unknown_and_missing_inputs() -> None:
    with pytest.raises(GuardRefusal, match="input 'y' is not an input"):
        check_inputs({"x": np.zeros((1, 3, 4, 8), np.float32), "y": np.zeros(1)}, SPEC, batch_free=False)
    with pytest.raises(GuardRefusal, match="input 'x' is missing"):
        check_inputs({}, SPEC, batch_free=False)


@pytest.mark.parametrize("isolate", [True, False])
def test_check_inputs_false_lets_out_of_range_and_nan_inputs_reach_the_model(
    guarded_digits: Path, digits: tuple[np.ndarray, np.ndarray], isolate: bool
) -> None:
    """With the default the guard refuses these inputs; with `check_inputs=false` the model computes on
    them, exactly as it does unguarded (the integrity check still applies)."""
    x = digits[0][:2].copy()
    x[0] *= 255.0  # outside the recorded [-0.05, 1.05]
    x[1, 0, 3, 4] = np.nan
    checked = {"security": {"isolate": isolate}}
    with pytest.raises(GuardRefusal, match="outside its allowed range"):
        edgeplug.infer(guarded_digits, {"input": x[:1]}, ["security"], checked)
    with pytest.raises(GuardRefusal, match=r"holds 1 NaN value\(s\)"):
        edgeplug.infer(guarded_digits, {"input": x[1:]}, ["security"], checked)
    options = {"security": {"check_inputs": False, "isolate": isolate}}
    guarded = edgeplug.infer(guarded_digits, {"input": x}, ["security"], options)
    plain = edgeplug.infer(guarded_digits, {"input": x})
    np.testing.assert_array_equal(guarded.outputs["logits"], plain.outputs["logits"])
    assert np.isnan(guarded.outputs["logits"][1]).all() and np.isfinite(guarded.outputs["logits"][0]).all()
    assert guarded.flags["model_sha256"]  # the model was still checked
