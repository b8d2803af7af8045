"""`squeeze_min_agreement`: a squeezer that changes the top-1 class of too many clean calibration images is
dropped from the record; 0 keeps every squeezer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import edgeplug
from edgeplug.model import get_metadata
from edgeplug_security.record import KEY


def record_with(example_model: Path, data: Path, out: Path, agreement: float) -> tuple[Any, dict[str, Any]]:
    """The recorded squeezer and the step's details after `edgeplug run --plugins security`."""
    result = edgeplug.optimize(
        example_model,
        ["security"],
        data=data,
        output_dir=out,
        options={"security": {"squeeze_min_agreement": agreement}},
    )
    squeeze = json.loads(get_metadata(result.model.proto, KEY))["squeeze"]
    return squeeze, result.report["steps"][0]["details"]


def test_min_agreement_decides_which_squeezers_are_kept(
    example_model: Path, example_test_data: Path, tmp_path: Path
) -> None:
    every, details = record_with(example_model, example_test_data, tmp_path / "all", 0.0)
    bits, median = details["squeeze_bits_top1_agreement"], details["squeeze_median_top1_agreement"]
    assert (every["bits"], every["median"]) == (3, 2)  # 0 keeps both, whatever they do to the images
    assert median < bits  # the 2x2 median changes more 8x8 digits than 3-bit reduction does
    between = (median + bits) / 2
    some, again = record_with(example_model, example_test_data, tmp_path / "some", between)
    assert (again["squeeze_bits_top1_agreement"], again["squeeze_median_top1_agreement"]) == (bits, median)
    assert (some["bits"], some["median"]) == (3, 0)  # the median falls under the bar and is dropped
    assert some["threshold"] < every["threshold"]  # the median's own changes no longer raise the bar
