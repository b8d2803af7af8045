"""The calibrated cascade of the digits CNN and a strongly pruned copy: it meets a top-1 budget the small
model misses alone, sends a minority of inputs on, and is expected to cost less than the large model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from edgeplug import verify
from edgeplug.plugin_api import PluginError, Tolerance, session
from edgeplug_adaptive import calibration
from edgeplug_adaptive.gates import Gate, probabilities
from edgeplug_adaptive.routing import combine, expected_cost, reached, route

from .conftest import BUDGET, COSTS, details, manifest_of


def test_the_cascade_meets_a_budget_the_small_model_misses(cascade):
    found = details(cascade)
    validation = found["validation"]
    small = validation["alone"][0]
    assert small["top1"] < BUDGET and not small["passed"]  # the pruned model alone misses 0.98
    assert validation["cascade"]["top1"] >= BUDGET and validation["cascade"]["passed"]
    assert 0 < validation["cascade"]["share_escalated"] < 0.5  # a minority goes to the large model
    chosen = found["chosen"]
    assert 0 < chosen["share_escalated"] < 0.5
    assert chosen["top1"] - BUDGET >= found["selection"]["margin"]["top1"] > 0


def test_expected_cost_is_the_share_escalated_times_the_recorded_costs(cascade):
    found = details(cascade)
    costs = [m["cost_ms"] for m in found["models"]]
    assert costs == list(COSTS)
    manifest = manifest_of(cascade.output_dir)
    assert [m["cost_ms"] for m in manifest["models"]] == costs
    for rows in (found["calibration"], [found["chosen"]], [found["validation"]["cascade"]]):
        for row in rows:
            runs = row.get("share_run") or [1.0, row["share_escalated"]]
            assert row["expected_ms"] == round(runs[0] * costs[0] + runs[1] * costs[1], 6)
            assert runs[1] == row["share_escalated"]
    assert found["chosen"]["expected_ms"] < costs[1]  # cheaper than the large model alone
    assert found["validation"]["cascade"]["expected_ms"] < costs[1]
    assert found["beats_largest"] is True


def test_the_calibration_table_is_in_the_report(cascade):
    table = details(cascade)["calibration"]
    assert {"thresholds", "top1", "share_escalated", "expected_ms", "passed", "chosen"} <= set(table[0])
    assert sum(row["chosen"] for row in table) == 1
    # from never to always sending inputs on: the share escalated grows with the threshold
    assert table[0]["thresholds"] == ["-inf"] and table[0]["share_escalated"] == 0
    assert table[-1]["thresholds"] == ["inf"] and table[-1]["share_escalated"] == 1
    assert table[-1]["top1"] == 1.0  # the large model alone agrees with itself
    shares = [row["share_escalated"] for row in table]
    assert shares == sorted(shares)
    chosen = next(row for row in table if row["chosen"])
    assert chosen["passed"]
    assert all(row["expected_ms"] >= chosen["expected_ms"] for row in table if row["passed"])
    assert not table[0]["passed"]  # the small model alone does not meet the budget on the selection set
    written = json.loads((cascade.output_dir / "report.json").read_text())
    assert written["compile"]["details"]["calibration"] == table


def test_thresholds_are_chosen_on_samples_no_step_saw(cascade):
    selection = details(cascade)["selection"]
    assert selection["samples"] == 125  # half of the 250 calibration samples
    assert (
        "held out of the calibration split before any step ran (125 calibration samples" in selection["from"]
    )
    assert details(cascade)["validation"]["samples"] == 200  # verified on the validation samples only


def test_the_artifact_describes_itself(cascade):
    out = cascade.output_dir
    manifest = manifest_of(out)
    assert [m["file"] for m in manifest["models"]] == ["0-digits_cnn-fuse-prune.onnx", "1-digits_cnn.onnx"]
    assert manifest["gate"]["kind"] == "confidence" and manifest["gate"]["output"] == "logits"
    assert manifest["budget"]["min_top1"] == BUDGET
    assert cascade.artifact.kind == "cascade"
    assert [p.relative_to(out).as_posix() for p in cascade.artifact.files] == [
        "cascade/cascade.json",
        "cascade/0-digits_cnn-fuse-prune.onnx",
        "cascade/1-digits_cnn.onnx",
    ]
    sidecar = json.loads((out / "digits_cnn.edgeplug.json").read_text())
    assert sidecar["artifact"]["kind"] == "cascade"
    assert sidecar["artifact"]["paths"] == [p.relative_to(out).as_posix() for p in cascade.artifact.files]
    # the small model is the chain's final model, byte for byte
    assert (out / "cascade" / "0-digits_cnn-fuse-prune.onnx").read_bytes() == (
        out / "digits_cnn.onnx"
    ).read_bytes()


def test_the_threshold_splits_validation_as_recorded(cascade, digits_split):
    """Routing by the recorded threshold, recomputed from the small model's own confidences, gives the
    recorded share escalated."""
    out = cascade.output_dir
    threshold = manifest_of(out)["thresholds"][0]
    with np.load(digits_split[1]) as npz:
        x = npz["input"]
    small = session(out / "cascade" / "0-digits_cnn-fuse-prune.onnx")
    confidence = probabilities(small.run(None, {"input": x})[0]).max(1)
    escalated = confidence < threshold
    assert round(float(escalated.mean()), 6) == details(cascade)["validation"]["cascade"]["share_escalated"]


def _two_models(count: int = 100, wrong: int = 5):
    """A large model's logits and a small model's that agree except on its `wrong` least confident
    inputs; the small model's confidence rises with the input's index."""
    rng = np.random.default_rng(0)
    large = rng.standard_normal((count, 4)).astype(np.float32)
    large[np.arange(count), 0] += 5  # class 0 for every input
    small = np.zeros_like(large)
    small[:, 0] = np.linspace(0.1, 6.0, count)  # confidence grows with the index
    small[:wrong, 0], small[:wrong, 1] = 0.0, np.linspace(0.05, 0.09, wrong)  # class 1: wrong
    return small, large


def _search(small, large, budget, margin, gate=None):
    gate = gate or Gate("confidence", output="logits")
    outputs = [{"logits": small}, {"logits": large}]
    tolerance = Tolerance(min_top1=budget)

    def judge(candidate):
        return verify.judge({"logits": large}, candidate, tolerance, samples=len(large))

    scores = [gate.score({"x": small}, outputs[0])]
    return calibration.search(gate, scores, outputs, [1.0, 4.0], judge, margin, 128)  # every midpoint


def test_the_cheapest_threshold_that_keeps_the_budget_with_its_margin_wins():
    small, large = _two_models()
    # budget/n margin: 0.98 + 0.0098 needs 99 of 100 agreeing, so 4 of the 5 wrong inputs must go on
    found = _search(small, large, 0.98, None)
    assert found.chosen.escalated == pytest.approx(0.04)
    assert found.chosen.values["top1"] == 0.99
    assert found.chosen.expected_ms == pytest.approx(1.0 + 0.04 * 4.0)
    # no margin: 98 of 100 will do, so 3 go on
    assert _search(small, large, 0.98, 0.0).chosen.escalated == pytest.approx(0.03)
    # the small model alone (nothing goes on) misses; everything going on costs more than the large model
    rows = _search(small, large, 0.98, None).rows
    assert rows[0].escalated == 0 and not rows[0].passed
    assert rows[-1].escalated == 1 and rows[-1].expected_ms == 5.0


def test_no_threshold_meets_an_impossible_budget():
    small, large = _two_models()
    with pytest.raises(PluginError, match="no gate threshold meets the budget"):
        _search(small, large, 1.0, None)  # 1.0 + 1/100: not even the large model alone


def test_an_input_gate_runs_one_model_per_input():
    """With the complexity gate an input goes straight to the model that answers it: the expected cost
    counts one model per input."""
    small, large = _two_models()
    gate = Gate("complexity", input="x")
    answered = route(gate, [0.5], [np.array([0.1, 0.9, 0.2, 0.7])])
    assert answered.tolist() == [0, 1, 0, 1]
    assert reached(answered, 2, gate) == [0.5, 0.5]
    assert expected_cost(reached(answered, 2, gate), [1.0, 4.0]) == 2.5
    # a gate on the small model's outputs runs it on every input first
    assert reached(answered, 2, Gate("confidence", output="logits")) == [1.0, 0.5]
    assert expected_cost([1.0, 0.5], [1.0, 4.0]) == 3.0
    combined = combine([{"logits": small[:4]}, {"logits": large[:4]}], answered)
    np.testing.assert_array_equal(combined["logits"], np.where(answered[:, None] == 1, large[:4], small[:4]))


def test_too_few_selection_samples_for_the_budget_say_how_many():
    small, large = _two_models(count=70)
    with pytest.raises(PluginError, match="it takes at least 99 selection samples"):
        _search(small, large, 0.99, None)  # 0.99 + 0.99/70 > 1
    assert _search(small, large, 0.99, 0.0).chosen.values["top1"] >= 0.99  # without the margin it can
