"""What `edgeplug run --plugins security` records: an exact (metadata-only) step, the input spec from the
data or from the user, and nothing it cannot back with real data."""

from __future__ import annotations

import json
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from edgeplug import GuardRefusal, OptionError
from edgeplug.model import get_metadata

from .conftest import cli


def record_of(path: Path) -> dict:
    return json.loads(get_metadata(onnx.load(str(path)), "edgeplug.security"))


def test_graph_is_untouched_and_outputs_exact(guarded_digits: Path, example_model: Path) -> None:
    before, after = onnx.load(str(example_model)), onnx.load(str(guarded_digits))
    assert list(after.graph.node) == list(before.graph.node)  # (the core's loader adds value_info)
    assert list(after.graph.initializer) == list(before.graph.initializer)
    report = json.loads((guarded_digits.parent / "report.json").read_text())
    metrics = report["steps"][0]["verification"]["vs_previous"]
    assert all(m["max_abs_error"] == 0.0 for m in metrics.values())


def test_user_range_is_recorded(example_model: Path, example_test_data: Path, tmp_path: Path) -> None:
    result = edgeplug.optimize(
        example_model,
        ["security"],
        data=example_test_data,
        output_dir=tmp_path,
        options={"security": {"input_range": "input:0:1", "range_margin": 0.5}},
    )
    spec = record_of(result.output_dir / "digits_cnn.onnx")["inputs"]["input"]
    assert spec["range"] == [0.0, 1.0] and spec["range_source"] == "user"


def test_margin_widens_the_observed_range(
    example_model: Path, example_test_data: Path, tmp_path: Path
) -> None:
    result = edgeplug.optimize(
        example_model,
        ["security"],
        data=example_test_data,
        output_dir=tmp_path,
        options={"security": {"range_margin": 0.25}},
    )
    assert record_of(result.output_dir / "digits_cnn.onnx")["inputs"]["input"]["range"] == [-0.25, 1.25]


def test_generated_data_records_no_range_and_no_threshold(
    example_model: Path, guarded_digits: Path, tmp_path: Path
) -> None:
    result = edgeplug.optimize(example_model, ["security"], output_dir=tmp_path)
    model = result.output_dir / "digits_cnn.onnx"
    record = record_of(model)
    assert record["inputs"]["input"]["range"] is None
    assert record["inputs"]["input"]["shape"] == ["batch", 1, 8, 8]
    assert record["squeeze"] is None
    x = np.full((1, 1, 8, 8), 7.0, np.float32)  # far outside any image range
    with pytest.raises(GuardRefusal, match="outside its allowed range"):  # where a range was recorded
        edgeplug.infer(guarded_digits, {"input": x}, ["security"])
    guarded = edgeplug.infer(model, {"input": x}, ["security"])  # no range: only dtype/shape/finite checks
    np.testing.assert_array_equal(
        guarded.outputs["logits"], edgeplug.infer(model, {"input": x}).outputs["logits"]
    )
    with pytest.raises(OptionError, match=r"security\.squeeze needs a model recorded by"):  # no threshold
        edgeplug.infer(model, {"input": x}, ["security"], {"security": {"squeeze": True}})


def test_bad_range_option_is_refused(example_model: Path, example_test_data: Path, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match=r"security\.input_range names 'image'"):
        edgeplug.optimize(
            example_model,
            ["security"],
            data=example_test_data,
            output_dir=tmp_path,
            options={"security": {"input_range": "image:0:1"}},
        )
    result = cli(
        [
            "run",
            str(example_model),
            "--plugins",
            "security",
            "--data",
            str(example_test_data),
            "-o",
            "security.input_range=1,0",
            "--output-dir",
            str(tmp_path / "b"),
        ]
    )
    assert result.exit_code == 2 and "LOW 1.0 is above HIGH 0.0" in result.stderr


def test_plugin_is_listed_with_its_options() -> None:
    result = cli(["plugins", "--json"])
    plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    security = plugins["security"]
    assert security["distribution"] == "edgeplug-security"
    assert {"guard_inference", "transform_graph", "plugin_options"} <= set(security["hooks"])
    for option in ("timeout_s", "memory_mb", "min_confidence", "squeeze", "require_hash", "squeeze_fpr"):
        assert option in security["options"]


@pytest.mark.parametrize(
    "option, value",
    [("timeout_s", "0"), ("memory_mb", "-1"), ("squeeze_fpr", "1.5"), ("min_confidence", "2")],
)
def test_out_of_range_options_are_refused(
    example_model: Path, tmp_path: Path, option: str, value: str
) -> None:
    np.savez(tmp_path / "x.npz", input=np.zeros((1, 1, 8, 8), np.float32))
    result = cli(
        [
            "infer",
            str(example_model),
            "--input",
            str(tmp_path / "x.npz"),
            "--guard",
            "security",
            "-o",
            "security.require_hash=false",
            "-o",
            f"security.{option}={value}",
        ]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith(f"edgeplug: error: bad value {value!r} for security.{option}: expected a")
