"""The cascade runner on batches whose gate scores are known: which model answers each input, and the
answers back in input order."""

from __future__ import annotations

import edgeplug
import numpy as np
import pytest
from edgeplug.plugin_api import load_function
from edgeplug_adaptive.gates import Gate, complexity, probabilities
from edgeplug_adaptive.members import ROUTE_OUTPUT
from edgeplug_adaptive.runner import CascadeRunner

from .conftest import confident_rows, image_model, offset_model, write_cascade


def answered_by(outputs: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The offset each answer carries: 100 x the index of the offset model that answered."""
    return np.round((outputs["logits"] - x)[:, 0] / 100).astype(int)


def test_confidence_gate_splits_a_batch_and_keeps_its_order(tmp_path):
    artifact = write_cascade(
        tmp_path, [offset_model(0), offset_model(100)], Gate("confidence", output="logits"), [0.8]
    )
    confidences = [0.9, 0.5, 0.95, 0.7, 0.85, 0.6]
    x = confident_rows(confidences)
    np.testing.assert_allclose(probabilities(x).max(1), confidences, rtol=1e-5)
    out = CascadeRunner(artifact)({"x": x})
    expected = [0, 1, 0, 1, 0, 1]
    assert out[ROUTE_OUTPUT].tolist() == expected
    assert answered_by(out, x).tolist() == expected
    np.testing.assert_allclose(out["logits"], x + 100 * np.array(expected)[:, None], rtol=1e-6)


def test_three_models_each_answer_what_their_stage_keeps(tmp_path):
    models = [offset_model(0), offset_model(100), offset_model(200)]
    artifact = write_cascade(tmp_path, models, Gate("confidence", output="logits"), [0.9, 0.7])
    x = confident_rows([0.95, 0.8, 0.5, 0.92, 0.75, 0.6, 0.99])
    out = CascadeRunner(artifact)({"x": x})
    assert out[ROUTE_OUTPUT].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert answered_by(out, x).tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_entropy_and_margin_gates(tmp_path):
    # probabilities [0.95, .025, .025], [0.4, 0.3, 0.3], [0.8, 0.1, 0.1], [0.34, 0.33, 0.33]
    x = confident_rows([0.95, 0.4, 0.8, 0.34])
    # entropies 0.23, 1.09, 0.64, 1.10 nats: above 0.9 goes on; margins 0.925, 0.1, 0.7, 0.01: below 0.5
    for kind, threshold in (("entropy", 0.9), ("margin", 0.5)):
        models = [offset_model(0), offset_model(100)]
        artifact = write_cascade(tmp_path / kind, models, Gate(kind, output="logits"), [threshold])
        out = CascadeRunner(artifact)({"x": x})
        assert out[ROUTE_OUTPUT].tolist() == [0, 1, 0, 1], kind
        assert answered_by(out, x).tolist() == [0, 1, 0, 1], kind


def test_complexity_gate_runs_the_small_model_only_on_the_inputs_it_keeps(tmp_path, monkeypatch):
    artifact = write_cascade(
        tmp_path, [image_model(1.0), image_model(2.0)], Gate("complexity", input="x"), [0.5]
    )
    flat = np.full((1, 4, 4), 0.3, np.float32)
    checker = (np.indices((4, 4)).sum(0) % 2).astype(np.float32)[None]
    x = np.stack([flat, checker, flat * 2, checker, flat])
    energy = complexity(x)
    assert energy.tolist() == [0.0, 2.0, 0.0, 2.0, 0.0]  # each neighbour differs by 1 along both axes
    runner = CascadeRunner(artifact)
    calls = []
    original = runner._run

    def counted(stage, feed):
        calls.append((stage, len(next(iter(feed.values())))))
        return original(stage, feed)

    monkeypatch.setattr(runner, "_run", counted)
    out = runner({"x": x})
    assert out[ROUTE_OUTPUT].tolist() == [0, 1, 0, 1, 0]
    assert calls == [(0, 3), (1, 2)]  # the small model never saw the two hard inputs
    np.testing.assert_allclose(out["y"], x * np.array([1, 2, 1, 2, 1], np.float32)[:, None, None, None])


def test_a_gate_function_from_a_file_travels_with_the_cascade(tmp_path):
    source = tmp_path / "src" / "mygate.py"
    source.parent.mkdir()
    source.write_text(
        "def score(inputs, outputs):\n    return inputs['x'][:, 1] + 0 * outputs['logits'][:, 0]\n"
    )
    gate = Gate("function", output="logits", function="mygate.py:score")
    artifact = write_cascade(
        tmp_path / "out", [offset_model(0), offset_model(100)], gate, [0.5], extra=[source]
    )
    x = np.array([[0, 0.9, 0], [0, 0.1, 0], [0, 0.6, 0], [0, 0.2, 0]], np.float32)
    out = CascadeRunner(artifact)({"x": x})
    assert out[ROUTE_OUTPUT].tolist() == [0, 1, 0, 1]
    assert load_function(f"{source}:score")({"x": x}, {"logits": x}).tolist() == x[:, 1].tolist()
    (artifact.main.parent / "mygate.py").write_text(
        "def score(inputs, outputs):\n    return inputs['x'][:, 0]\n"
    )
    with pytest.raises(edgeplug.ModelError, match=r"mygate\.py does not match the sha256"):
        CascadeRunner(artifact)


def test_fixed_batch_models_run_one_input_at_a_time(tmp_path):
    models = [offset_model(0, batch=1), offset_model(100, batch=1)]
    artifact = write_cascade(tmp_path, models, Gate("confidence", output="logits"), [0.8])
    x = confident_rows([0.9, 0.5, 0.6, 0.99, 0.81])
    out = CascadeRunner(artifact)({"x": x})
    assert out[ROUTE_OUTPUT].tolist() == [0, 1, 1, 0, 0]
    assert answered_by(out, x).tolist() == [0, 1, 1, 0, 0]


def test_a_batch_the_first_model_keeps_never_reaches_the_second(tmp_path, monkeypatch):
    artifact = write_cascade(
        tmp_path, [offset_model(0), offset_model(100)], Gate("confidence", output="logits"), [0.8]
    )
    runner = CascadeRunner(artifact)
    stages = []
    original = runner._run
    monkeypatch.setattr(runner, "_run", lambda stage, feed: stages.append(stage) or original(stage, feed))
    out = runner({"x": confident_rows([0.9, 0.95])})
    assert out[ROUTE_OUTPUT].tolist() == [0, 0]
    assert stages == [0]
