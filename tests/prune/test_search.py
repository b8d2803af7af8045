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


def _equal_magnitude_mlp(path: Path) -> Path:
    """Two Gemm layers whose weights all have magnitude ~1: magnitude pruning removes energy in proportion to
    the sparsity, so the default 0.5 leaves an output cosine near 0.7, below the step's default 0.9."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        np.sign(rng.standard_normal(shape)).astype(np.float32) * (1 + 0.01 * rng.random(shape, np.float32))
        for shape in ((64, 64), (64, 16))
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w0"], ["h"], name="fc0"),
            helper.make_node("Gemm", ["h", "w1"], ["y"], name="fc1"),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def test_the_default_sparsity_is_lowered_until_the_steps_budget_holds(tmp_path: Path) -> None:
    """No sparsity and no budget given: 0.5 misses the default cosine budget, so the plugin bisects below it
    instead of failing the step; a model where 0.5 holds keeps 0.5 (one evaluation)."""
    model = _equal_magnitude_mlp(tmp_path / "mlp.onnx")
    options = {"prune": {"skip_first_last": False}}
    result = edgeplug.optimize(model, ["prune"], output_dir=tmp_path / "out", options=options)
    step = result.report["steps"][0]
    search = step["details"]["search"]
    assert search["user_set"] is False and search["budget"] == {"cosine": 0.9}
    assert search["trace"][0] == {**search["trace"][0], "sparsity": 0.5, "passed": False}
    chosen = step["details"]["sparsity_target"]
    assert 0.05 < chosen < 0.25  # energy kept ~ 1 - sparsity per layer: cosine 0.9 near 0.1-0.2
    assert step["verification"]["passed"]
    assert step["verification"]["vs_previous"]["y"]["cosine"] >= 0.9

    result = edgeplug.optimize(DIGITS, ["prune"], data=TEST_DATA, output_dir=tmp_path / "digits")
    details = result.report["steps"][0]["details"]
    assert details["sparsity_target"] == 0.5 and len(details["search"]["trace"]) == 1
