"""What distill refuses, and where it does not apply."""

from __future__ import annotations

from pathlib import Path

import edgeplug
import numpy as np
import pytest
from click.testing import CliRunner
from edgeplug import Model, PluginError, RunContext, Tolerance
from edgeplug.capabilities import FORMS, ChainView
from edgeplug.cli import main
from edgeplug.plugin_api import CONTRIB, DYNAMIC_INT8, FP16, QDQ_INT8, Dataset
from edgeplug_distill import plugin

from ..conftest import registered
from .conftest import DIGITS, TRAIN_DATA, ScaleLastWeight, unsupported_op_model


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("edgeplug: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_refuses_generated_inputs(tmp_path: Path) -> None:
    line = one_line_error(invoke("run", DIGITS, "--plugins", "distill", "--output-dir", tmp_path))
    assert "distill" in line and "needs real data" in line and "--data" in line


def test_refuses_after_quantization_by_capability(tmp_path: Path) -> None:
    """quant emits int8 Q/DQ; distill declares it cannot take them, so the core refuses the chain before any
    step runs, naming both."""
    result = invoke(
        "run",
        DIGITS,
        "--plugins",
        "quant,distill",
        "--data",
        TRAIN_DATA,
        "-o",
        "quant.mode=static",
        "--output-dir",
        tmp_path,
    )
    line = one_line_error(result)
    assert "distill" in line and "Q/DQ" in line and "produced by quant" in line
    assert "pre_optimize" not in result.output  # refused before any plugin ran


def test_pre_optimize_says_to_distil_before_quantization() -> None:
    """Called without the core's chain check (a program using the hooks), pre_optimize refuses with the
    sentence a user can act on."""
    model = Model.load(DIGITS)
    ctx = RunContext(
        "distill", {}, Tolerance(), Dataset([], [], "file", 0, "none"), ("quant", "distill"), Path(".")
    )
    ctx.view = ChainView(FORMS, frozenset({QDQ_INT8}), frozenset())
    with pytest.raises(PluginError, match="put distill before quantization"):
        plugin.pre_optimize(model=model, ctx=ctx)


def test_capabilities() -> None:
    caps = plugin.plugin_capabilities(options={}, downstream=FORMS)
    assert caps.judged_against == "original"
    assert not caps.consumes & {QDQ_INT8, DYNAMIC_INT8, CONTRIB, FP16}
    assert not caps.produces


def test_names_the_operator_the_converter_lacks(tmp_path: Path) -> None:
    model = unsupported_op_model(tmp_path / "thresholded.onnx")
    images = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "data.npz", input=images)
    with registered((ScaleLastWeight(0.5), "scale")), pytest.raises(PluginError) as caught:
        edgeplug.optimize(
            model, ["scale", "distill"], data=str(tmp_path / "data.npz"), output_dir=tmp_path / "out"
        )
    message = str(caught.value)
    assert "ThresholdedRelu (opset 17) at node thresholded" in message
    assert "onnx2torch==1.5.15" in message


@pytest.mark.parametrize("chain", [["distill"], ["fuse", "distill"]])
def test_nothing_to_recover_is_not_applicable(tmp_path: Path, chain: list[str]) -> None:
    """First in a chain (the model is the original) or after exact steps only: not applicable, no error."""
    run = edgeplug.optimize(DIGITS, chain, data=str(TRAIN_DATA), output_dir=tmp_path)
    step = run.report["steps"][-1]
    assert step["plugin"] == "distill" and step["status"] == "not_applicable"
    assert "training" not in step["details"]


@pytest.mark.parametrize(
    ("option", "words"),
    [
        ("distill.time_budget_s=soon", "distill.time_budget_s"),
        ("distill.alpha=2", "distill.alpha"),
        ("distill.selection_fraction=0.9", "distill.selection_fraction"),
        ("distill.lr=0", "distill.lr"),
    ],
)
def test_bad_options_are_one_line(tmp_path: Path, option: str, words: str) -> None:
    result = invoke(
        "run", DIGITS, "--plugins", "distill", "--data", TRAIN_DATA, "-o", option, "--output-dir", tmp_path
    )
    assert words in one_line_error(result)


def test_missing_training_data_file(tmp_path: Path) -> None:
    result = invoke(
        "run",
        DIGITS,
        "--plugins",
        "distill",
        "--data",
        TRAIN_DATA,
        "-o",
        f"distill.data={tmp_path / 'no.npz'}",
        "--output-dir",
        tmp_path / "out",
    )
    assert "distill.data" in one_line_error(result)
