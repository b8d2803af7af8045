"""Option values checked before any work: counts of at least 1, budgets within range, a writable table, in
the core's one message format (each option is declared once, with its bounds)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import edgeplug
import pytest
from edgeplug import OptionError, RunContext
from edgeplug.options import Tolerance
from edgeplug_quantize import calibration, plugin

from .conftest import DIGITS, DIGITS_TEST, make_ctx, run_cli

COUNTS = ("calibration_samples", "sensitivity_samples", "qat_epochs", "qat_batch_size")


@pytest.fixture(scope="module")
def digits() -> edgeplug.Model:
    return edgeplug.Model.load(DIGITS)


@pytest.mark.parametrize("key", COUNTS)
@pytest.mark.parametrize("value", [0, -3, None])
def test_counts_below_one_are_refused_not_replaced_by_defaults(digits, key, value):
    ctx = make_ctx(digits, DIGITS_TEST, **{key: value})
    with pytest.raises(
        OptionError, match=rf"bad value {value} for quant\.{key}: expected an integer.*of at least 1"
    ):
        plugin.pre_optimize(digits, ctx)
    with pytest.raises(OptionError, match=rf"for quant\.{key}: expected an integer.*of at least 1"):
        edgeplug.optimize(DIGITS, ["quant"], data=DIGITS_TEST, options={"quant": {key: value}})


def test_counts_of_one_are_accepted(digits):
    plugin.pre_optimize(digits, make_ctx(digits, DIGITS_TEST, **dict.fromkeys(COUNTS, 1)))


def test_zero_calibration_samples_exits_2_on_the_cli(tmp_path):
    result = run_cli(
        "run",
        DIGITS,
        "--plugins",
        "quant",
        "--data",
        DIGITS_TEST,
        "-o",
        "quant.calibration_samples=0",
        "--output-dir",
        tmp_path / "out",
    )
    assert result.exit_code == 2, result.output
    assert re.search(r"for quant\.calibration_samples: expected an integer.*of at least 1", result.output)
    assert "calibrating" not in result.output


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("min_top1", 1.5, "from 0 to 1"),
        ("min_top1", -0.1, "from 0 to 1"),
        ("min_cosine", 1.01, "from -1 to 1"),
        ("min_cosine", -2.0, "from -1 to 1"),
        ("min_cosine", float("nan"), "from -1 to 1"),
        ("max_abs_error", -1.0, "of at least 0"),
        ("max_slice_error", -0.5, "of at least 0"),
    ],
)
def test_user_budgets_out_of_range_are_refused_by_the_core(key, value, allowed):
    """Budgets are the core's options: it checks their bounds when it parses them, before any step."""
    with pytest.raises(OptionError, match=rf"for quant\.{key}: expected a number.*{allowed}"):
        edgeplug.optimize(DIGITS, ["quant"], data=DIGITS_TEST, options={"quant": {key: value}})


def test_user_budgets_at_the_edges_are_accepted(digits):
    plugin.pre_optimize(digits, make_ctx(digits, DIGITS_TEST, min_top1=0.0, min_cosine=-1.0))
    plugin.pre_optimize(digits, make_ctx(digits, DIGITS_TEST, min_top1=1.0, min_cosine=1.0))


def test_qat_counts_are_checked_before_training(tmp_path):
    """load_model runs (and trains) before pre_optimize: a zero epoch count must stop it first."""
    fake = tmp_path / "model.h5"
    fake.write_bytes(b"not a keras file")  # never opened: the options are refused first
    opts = {o.name: o.default for o in plugin.plugin_options()} | {"qat_epochs": 0}
    ctx = RunContext("quant", opts, Tolerance(), None, ("quant",), tmp_path, quiet=True)  # type: ignore[arg-type]
    with pytest.raises(
        OptionError, match=r"bad value 0 for quant\.qat_epochs: expected an integer.*of at least 1"
    ):
        plugin.load_model(fake, ctx)
    result = run_cli(
        "run",
        fake,
        "--plugins",
        "quant",
        "--data",
        DIGITS_TEST,
        "-o",
        "quant.qat_batch_size=-1",
        "--output-dir",
        tmp_path / "out",
    )
    assert result.exit_code == 2, result.output
    assert re.search(r"for quant\.qat_batch_size: expected an integer.*of at least 1", result.output)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
def test_unwritable_calibration_table_exits_2_before_calibrating(tmp_path):
    result = run_cli(
        "run",
        DIGITS,
        "--plugins",
        "quant",
        "--data",
        DIGITS_TEST,
        "-o",
        "quant.calibration_table=/proc/nope/x.json",
        "--output-dir",
        tmp_path / "out",
    )
    assert result.exit_code == 2, result.output
    assert "quant.calibration_table=/proc/nope/x.json cannot be written" in result.output
    assert "calibrating" not in result.output and "plugin raised" not in result.output


def test_calibration_table_under_a_file_or_at_a_folder_is_refused(digits, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for bad, message in ((blocker / "t.json", "cannot be written"), (tmp_path, "is a folder")):
        ctx = make_ctx(digits, DIGITS_TEST, mode="static", calibration_table=bad)
        with pytest.raises(OptionError, match=message):
            plugin.pre_optimize(digits, ctx)


def test_calibration_table_in_new_folders_passes_and_leaves_nothing_behind(tmp_path, monkeypatch):
    calibration.check_table_target(tmp_path / "new" / "deeper" / "t.json")
    assert list(tmp_path.iterdir()) == []  # the probe removed the folders and the file it made
    monkeypatch.chdir(tmp_path)
    calibration.check_table_target(Path("relative-table.json"))  # in the current folder
    assert list(tmp_path.iterdir()) == []
