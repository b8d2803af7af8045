"""trt option values are refused before the core's reference pass and any step: types and bounds by the
core (from the declaration in settings.py), the min/opt/max shapes against the model in pre_optimize; good
profile options pass; profile shape items are parsed like --input-shapes, with messages naming the option."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from edgeplug import Model, OptionError, RunContext
from edgeplug.cli import main
from edgeplug.options import Tolerance
from edgeplug_trt import plugin, profiles
from edgeplug_trt.settings import TrtSettings


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["trt.min_shapes=input:4x1x8x8", "trt.opt_shapes=input:2x1x8x8", "trt.max_shapes=input:8x1x8x8"],
            "needs min <= opt <= max on every axis",
        ),
        (["trt.max_shapes=input:8x1x8x8"], "not in opt_shapes"),
        (["trt.opt_shapes=input:2x1x8"], "trt.opt_shapes gives 'input' rank 3"),
        (["trt.opt_shapes=input:2x3x8x8"], "where the model fixes 1"),
        (["trt.opt_shapes=image:1x1x8x8"], "trt.opt_shapes names 'image'"),
        (["trt.opt_shapes=input:1xx8x8"], "bad value 'input:1xx8x8' for trt.opt_shapes: expected NAME:"),
        (["trt.opt_shapes=input:0x1x8x8"], "for trt.opt_shapes: expected dimensions of at least 1"),
        # types, choices and bounds: the core, from the declaration, in its one format
        (["trt.max_batch=0"], "bad value '0' for trt.max_batch: expected an integer of at least 1"),
        (["trt.workspace_mb=0"], "bad value '0' for trt.workspace_mb: expected an integer of at least 1"),
        (["trt.workspace_mb=1.5"], "bad value '1.5' for trt.workspace_mb: expected an integer"),
        (
            ["trt.optimization_level=6"],
            "bad value '6' for trt.optimization_level: expected an integer from 0 to 5",
        ),
        (["trt.precision=int4"], "bad value 'int4' for trt.precision: expected one of fp32, fp16, int8"),
        (["trt.tf32=maybe"], "bad value 'maybe' for trt.tf32: expected true or false"),
    ],
)
def test_bad_options_exit_2_before_any_work(
    tmp_path: Path, example_model: Path, example_test_data: Path, options: list[str], message: str
) -> None:
    """The core's reference pass (report["original"]) never runs, nor any step. A value the core refuses
    while parsing the options stops the run before the output folder is touched."""
    out = tmp_path / "out"
    args = ["run", str(example_model), "--plugins", "trt", "--data", str(example_test_data)]
    for option in options:
        args += ["-o", option]
    result = CliRunner().invoke(main, [*args, "--output-dir", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("edgeplug: error:") and message in result.output
    if (out / "report.json").exists():  # refused by pre_optimize
        report = json.loads((out / "report.json").read_text())
        assert report["status"] == "failed" and "original" not in report and report["steps"] == []
    else:  # refused by the core's option parsing
        assert message.startswith("bad value '") and not list(out.rglob("*.onnx"))


def test_good_profile_options_pass_pre_optimize(example_model: Path) -> None:
    model = Model.load(example_model)
    settings = TrtSettings(
        min_shapes=["input:1x1x8x8"], opt_shapes=["input:4x1x8x8"], max_shapes=["input:16x1x8x8"]
    )
    ctx = RunContext("trt", {}, Tolerance(), None, ("trt",), Path("."), settings=settings)  # type: ignore[arg-type]
    plugin.pre_optimize(model=model, ctx=ctx)  # no error, and no data needed


def test_shape_items_are_parsed_like_input_shapes() -> None:
    """NAME:DIMS with the name before the last colon and x or X between dimensions, as --input-shapes."""
    got = profiles.parse_shapes(["input:1x3x224x224", "encoder:mask:1X128"], "opt_shapes")
    assert got == {"input": (1, 3, 224, 224), "encoder:mask": (1, 128)}
    for bad in ("input", ":1x2", "  :1x2", "input:1x", ""):
        with pytest.raises(OptionError, match=r"bad value .* for trt\.opt_shapes: expected NAME:1x3x224x224"):
            profiles.parse_shapes([bad], "opt_shapes")
