"""A user-set budget without a sparsity: the plugin searches the highest sparsity meeting it."""

from __future__ import annotations

from pathlib import Path

import edgeplug
import pytest

from tests.prune.conftest import DIGITS, TEST_DATA, TRAIN_DATA


@pytest.mark.parametrize(
    ("prune_options", "metric", "budget"),
    [
        ({"min_cosine": 0.99}, "cosine", 0.99),
        ({"mode": "structured", "min_top1": 0.99}, "top1", 0.99),
    ],
)
def test_budget_search_finds_the_highest_passing_sparsity(
    prune_options: dict, metric: str, budget: float, tmp_path: Path
) -> None:
    result = edgeplug.optimize(
        DIGITS,
        ["prune"],
        data=TEST_DATA,
        calibration_data=str(TRAIN_DATA),
        output_dir=tmp_path,
        options={"prune": prune_options},
    )
    step = result.report["steps"][0]
    assert step["status"] == "applied"
    search = step["details"]["search"]
    chosen = step["details"]["sparsity_target"]
    trace = search["trace"]
    passed = [t["sparsity"] for t in trace if t["passed"]]
    failed = [t["sparsity"] for t in trace if not t["passed"]]
    assert chosen == pytest.approx(max(passed), abs=1e-6)
    assert 0.1 < chosen < 0.95
    # bracketed: a slightly higher sparsity was tried and failed the budget
    above = [s for s in failed if s > chosen]
    assert above and min(above) - chosen < 0.02
    # and the core's own verification of the chosen model agrees
    assert step["verification"]["vs_previous"]["logits"][metric] >= budget
    assert step["verification"]["passed"]


def test_given_sparsity_is_not_searched(tmp_path: Path) -> None:
    result = edgeplug.optimize(
        DIGITS,
        ["prune"],
        data=TEST_DATA,
        output_dir=tmp_path,
        options={"prune": {"sparsity": 0.3, "min_cosine": 0.95}},
    )
    details = result.report["steps"][0]["details"]
    assert "search" not in details
    assert details["sparsity_target"] == 0.3


def test_unreachable_budget_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(edgeplug.PluginError, match="loosen the budget"):
        edgeplug.optimize(
            DIGITS,
            ["prune"],
            data=TEST_DATA,
            output_dir=tmp_path,
            options={"prune": {"max_abs_error": 1e-9, "min_cosine": 0.9999999}},
        )
