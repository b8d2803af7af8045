"""Option values checked before any work: counts of at least 1, budgets within range, a writable table."""

from __future__ import annotations

import dataclasses
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
        OptionError, match=rf"quant\.{key} must be an integer of at least 1 \(allowed: 1 or more\)"
    ):
        plugin.pre_optimize(digits, ctx)


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
    assert "quant.calibration_samples must be an integer of at least 1" in result.output
    assert "calibrating" not in result.output


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("min_top1", 1.5, "between 0 and 1"),
        ("min_top1", -0.1, "between 0 and 1"),
        ("min_cosine", 1.01, "between -1 and 1"),
        ("min_cosine", -2.0, "between -1 and 1"),
        ("min_cosine", float("nan"), "between -1 and 1"),
        ("max_abs_error", -1.0, "at least 0"),
    ],
)
def test_user_budgets_out_of_range_are_refused(digits, key, value, allowed):
    """The core checks these when it parses options; pre_optimize checks them too (hooks may be called directly)."""
    ctx = make_ctx(digits, DIGITS_TEST)
    ctx.tolerance = dataclasses.replace(ctx.tolerance, **{key: value, "user_set": frozenset({key})})
    with pytest.raises(OptionError, match=rf"for quant\.{key}: expected a number {allowed}"):
        plugin.pre_optimize(digits, ctx)


def test_user_budgets_at_the_edges_are_accepted(digits):
    plugin.pre_optimize(digits, make_ctx(digits, DIGITS_TEST, min_top1=0.0, min_cosine=-1.0))
    plugin.pre_optimize(digits, make_ctx(digits, DIGITS_TEST, min_top1=1.0, min_cosine=1.0))


def test_budgets_the_user_did_not_set_are_not_checked(digits):
    ctx = make_ctx(digits, DIGITS_TEST)
    ctx.tolerance = dataclasses.replace(ctx.tolerance, min_top1=2.0, user_set=frozenset())
    plugin.pre_optimize(digits, ctx)


def test_qat_counts_are_checked_before_training(tmp_path):
    """load_model runs (and trains) before pre_optimize: a zero epoch count must stop it first."""
    fake = tmp_path / "model.h5"
    fake.write_bytes(b"not a keras file")  # never opened: the options are refused first
    opts = {o.name: o.default for o in plugin.plugin_options()} | {"qat_epochs": 0}
    ctx = RunContext("quant", opts, Tolerance(), None, ("quant",), tmp_path, quiet=True)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match=r"quant\.qat_epochs must be an integer of at least 1"):
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
    assert "quant.qat_batch_size must be an integer of at least 1" in result.output


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
