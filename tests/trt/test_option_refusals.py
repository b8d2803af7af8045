"""trt option values are refused in pre_optimize, before the core's reference pass and any step; good
profile options pass; profile shape items are parsed by the core's --input-shapes parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from edgeplug import Model, OptionError, RunContext
from edgeplug.cli import main
from edgeplug.options import Tolerance
from edgeplug.pipeline import parse_input_shapes
from edgeplug_trt import plugin, profiles


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
        (["trt.opt_shapes=input:1xx8x8"], "bad trt.opt_shapes item 'input:1xx8x8'"),
        (["trt.opt_shapes=input:0x1x8x8"], "every dimension must be at least 1"),
        (["trt.max_batch=0"], "trt.max_batch"),
        (["trt.workspace_mb=0"], "workspace_mb must be at least 1"),
        (["trt.optimization_level=6"], "optimization_level must be within 0..5"),
    ],
)
def test_bad_options_exit_2_before_any_work(
    tmp_path: Path, example_model: Path, example_test_data: Path, options: list[str], message: str
) -> None:
    """The core's reference pass (report["original"]) never runs, nor any step."""
    out = tmp_path / "out"
    args = ["run", str(example_model), "--plugins", "trt", "--data", str(example_test_data)]
    for option in options:
        args += ["-o", option]
    result = CliRunner().invoke(main, [*args, "--output-dir", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("edgeplug: error:") and message in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and "original" not in report and report["steps"] == []


def test_good_profile_options_pass_pre_optimize(example_model: Path) -> None:
    model = Model.load(example_model)
    opts = {
        **{o.name: o.default for o in plugin.plugin_options()},
        "min_shapes": ["input:1x1x8x8"],
        "opt_shapes": ["input:4x1x8x8"],
        "max_shapes": ["input:16x1x8x8"],
    }
    ctx = RunContext("trt", opts, Tolerance(), None, ("trt",), Path("."))  # type: ignore[arg-type]
    plugin.pre_optimize(model=model, ctx=ctx)  # no error, and no data needed


def test_shape_items_are_parsed_by_the_core(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def spy(text: str | None) -> dict[str, list[int]]:
        seen.append(str(text))
        return parse_input_shapes(text)

    monkeypatch.setattr(profiles, "parse_input_shapes", spy)
    got = profiles.parse_shapes(["input:1x3x224x224", "encoder:mask:1X128"], "opt_shapes")
    assert got == {"input": (1, 3, 224, 224), "encoder:mask": (1, 128)}
    assert seen == ["input:1x3x224x224", "encoder:mask:1X128"]
    for bad in ("input", ":1x2", "  :1x2", "input:1x", ""):
        with pytest.raises(OptionError, match=r"bad trt\.opt_shapes item .*: write NAME:1x3x224x224"):
            profiles.parse_shapes([bad], "opt_shapes")
