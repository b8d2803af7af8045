"""`edgeplug infer --artifact` on a cascade: each input answered by the model its gate picks, which one in
the extra output `cascade_model`, the security guards around it as around any artifact; measured costs;
a budget no threshold can meet."""

from __future__ import annotations

import edgeplug
import numpy as np
import pytest
from click.testing import CliRunner
from edgeplug.cli import main
from edgeplug.plugin_api import session
from edgeplug_adaptive.gates import probabilities
from edgeplug_adaptive.members import ROUTE_OUTPUT

from .conftest import manifest_of


@pytest.fixture(scope="module")
def inputs(digits_split):
    with np.load(digits_split[1]) as npz:
        return npz["input"][:60]


def expected_routes(out, x):
    """The model each input goes to, recomputed from the small model's confidence and the threshold."""
    threshold = manifest_of(out)["thresholds"][0]
    small = session(out / "cascade" / "0-digits_cnn-fuse-prune.onnx")
    return (probabilities(small.run(None, {"input": x})[0]).max(1) < threshold).astype(int)


def test_each_input_is_answered_by_the_model_the_gate_picks(cascade, inputs):
    out = cascade.output_dir
    result = edgeplug.infer(out / "digits_cnn.onnx", {"input": inputs}, artifact=True)
    routes = expected_routes(out, inputs)
    assert 0 < routes.sum() < len(routes)  # these inputs go both ways
    assert result.outputs[ROUTE_OUTPUT].tolist() == routes.tolist()
    models = [session(out / "cascade" / f) for f in ("0-digits_cnn-fuse-prune.onnx", "1-digits_cnn.onnx")]
    alone = [m.run(None, {"input": inputs})[0] for m in models]
    expected = np.where(routes[:, None] == 1, alone[1], alone[0])
    np.testing.assert_allclose(result.outputs["logits"], expected, rtol=1e-5, atol=1e-5)


def test_the_cli_names_the_answering_models(cascade, inputs, tmp_path):
    x = tmp_path / "x.npz"
    np.savez(x, input=inputs[:5])
    saved = tmp_path / "y.npz"
    model = str(cascade.output_dir / "digits_cnn.onnx")
    result = CliRunner().invoke(
        main, ["infer", model, "--input", str(x), "--artifact", "--output", str(saved)]
    )
    assert result.exit_code == 0, result.output
    assert "cascade_model: shape [5]" in result.output
    with np.load(saved) as npz:
        assert npz[ROUTE_OUTPUT].tolist() == expected_routes(cascade.output_dir, inputs[:5]).tolist()


def test_security_guards_the_cascade_as_any_artifact(cascade, inputs):
    final = cascade.output_dir / "digits_cnn.onnx"
    x = {"input": inputs[:6]}
    with pytest.raises(edgeplug.OptionError, match="isolate=false"):
        edgeplug.infer(final, x, guards=["security"], artifact=True)
    guarded = edgeplug.infer(
        final, x, guards=["security"], artifact=True, options={"security": {"isolate": False}}
    )
    plain = edgeplug.infer(final, x, artifact=True)
    np.testing.assert_array_equal(guarded.outputs["logits"], plain.outputs["logits"])
    assert guarded.outputs[ROUTE_OUTPUT].tolist() == plain.outputs[ROUTE_OUTPUT].tolist()
    assert "model_sha256" in guarded.flags


def test_costs_are_measured_with_the_core_benchmark(cascade, digits_split, tmp_path):
    small = cascade.output_dir / "cascade" / "0-digits_cnn-fuse-prune.onnx"
    large = cascade.output_dir / "cascade" / "1-digits_cnn.onnx"
    calibration, validation = digits_split
    result = edgeplug.optimize(
        small,
        "adaptive",
        data=validation,
        calibration_data=calibration,
        options={"adaptive": {"models": f"{small},{large}", "bench_runs": "20", "min_top1": "0.95"}},
        output_dir=tmp_path / "out",
    )
    found = result.report["compile"]["details"]
    for model in found["models"]:
        assert model["timing"]["runs"] == 20 and model["timing"]["threads"] == 1
        assert model["cost_ms"] == model["timing"]["p50_ms"] > 0
    costs = [m["cost_ms"] for m in found["models"]]
    assert [m["cost_ms"] for m in manifest_of(tmp_path / "out")["models"]] == [round(c, 6) for c in costs]
    chosen = found["chosen"]
    assert chosen["expected_ms"] == round(costs[0] + chosen["share_escalated"] * costs[1], 6)


def test_a_budget_no_threshold_meets_is_refused(cascade, digits_split, tmp_path):
    small = cascade.output_dir / "cascade" / "0-digits_cnn-fuse-prune.onnx"
    large = cascade.output_dir / "cascade" / "1-digits_cnn.onnx"
    calibration, validation = digits_split
    with pytest.raises(edgeplug.PluginError, match="no gate threshold meets the budget with its margin"):
        edgeplug.optimize(
            small,
            "adaptive",
            data=validation,
            calibration_data=calibration,
            # the budget/n margin on top of a perfect accuracy: not even the large model alone gets there
            options={"adaptive": {"models": f"{small},{large}", "costs": "1,2", "min_accuracy": "1"}},
            output_dir=tmp_path / "out",
        )
