"""Option values are refused with exit 2 before any work: bad ranges, NaN, out-of-bounds values (by the
core, from the declaration in settings.py, in its one format), a malformed pin, and the worker's limits
where no worker runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from .conftest import cli, error_line


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("input_range=5,1", r"LOW 5\.0 is above HIGH 1\.0"),
        ("input_range=image:0:1", r"security\.input_range names 'image'"),
        ("input_range=-inf,inf", "LOW and HIGH must be finite numbers"),
        # NaN and bounds: refused by the core's option parser, naming option and value
        (
            "squeeze_fpr=nan",
            r"bad value 'nan' for security\.squeeze_fpr: expected a number \(float\) from 0 to 1$",
        ),
        ("squeeze_bits=17", r"bad value '17' for security\.squeeze_bits: expected an integer from 0 to 16$"),
        (
            "range_margin=inf",
            r"bad value 'inf' for security\.range_margin: expected a number \(float\) from 0 to 10$",
        ),
        ("deny_labels=cat", r"bad value 'cat' for security\.deny_labels: expected class indices"),
    ],
)
def test_bad_run_options_exit_2_before_any_work(
    example_model: Path, example_test_data: Path, tmp_path: Path, option: str, message: str
) -> None:
    out = tmp_path / "out"
    result = cli(
        [
            *("run", str(example_model), "--plugins", "security", "--data", str(example_test_data)),
            *("-o", f"security.{option}", "--output-dir", str(out), "--quiet"),
        ]
    )
    assert re.search(message, error_line(result))
    assert not list(out.rglob("*.onnx"))  # no model written: no step ran
    if (out / "report.json").exists():  # else refused before the output folder was touched
        report = json.loads((out / "report.json").read_text())
        assert report["status"] == "failed" and "original" not in report and report["steps"] == []


@pytest.mark.parametrize("pin", ["abc", "g" * 64, "0" * 63])
def test_a_malformed_pin_is_refused(example_model: Path, tmp_path: Path, pin: str) -> None:
    np.savez(tmp_path / "x.npz", input=np.zeros((1, 1, 8, 8), np.float32))
    args = ["infer", str(example_model), "--input", str(tmp_path / "x.npz"), "--guard", "security"]
    line = error_line(cli([*args, "-o", f"security.sha256={pin}"]))
    assert (
        line == f"edgeplug: error: bad value {pin!r} for security.sha256: expected a sha256 (64 hex digits)"
    )


def test_a_timeout_beyond_a_week_is_refused(example_model: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", input=np.zeros((1, 1, 8, 8), np.float32))
    args = ["infer", str(example_model), "--input", str(tmp_path / "x.npz"), "--guard", "security"]
    line = error_line(cli([*args, "-o", "security.require_hash=false", "-o", "security.timeout_s=1e30"]))
    assert (
        line
        == "edgeplug: error: bad value '1e30' for security.timeout_s: expected a number (float) from 0.001 to 604800"
    )
