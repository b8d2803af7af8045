"""The parts of training: losses, augmentation, the selection split, steps and the time budget."""

from __future__ import annotations

from pathlib import Path

import edgeplug
import numpy as np
import pytest
import torch
from edgeplug import DataError, RunContext, Tolerance, plugin_api
from edgeplug.plugin_api import Dataset
from edgeplug_distill.augment import augment, image_axes
from edgeplug_distill.losses import (
    DENSE,
    LOGITS,
    SKIP,
    LossWeights,
    dense,
    distillation_loss,
    kind_of,
    soft_kl,
)
from edgeplug_distill.training_data import split

from ..conftest import registered
from .conftest import DIGITS, TRAIN_DATA, ScaleLastWeight


def test_losses_vanish_on_equal_outputs_only() -> None:
    logits = torch.randn(6, 10)
    assert float(soft_kl(torch, logits, logits, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(dense(torch, logits, logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_kl(torch, logits, logits.flip(1), 4.0)) > 0.01
    # KL alone cannot see a per-sample shift of the logits; the direct match does
    shifted = logits + torch.arange(6.0)[:, None]
    assert float(soft_kl(torch, shifted, logits, 4.0)) == pytest.approx(0.0, abs=1e-5)
    assert float(dense(torch, shifted, logits)) > 0.1


def test_kinds_and_label_weight() -> None:
    assert kind_of(np.zeros((4, 10), np.float32)) == LOGITS
    assert kind_of(np.zeros((4, 3, 8, 8), np.float32)) == DENSE
    assert kind_of(np.zeros((4, 10), np.int64)) == SKIP
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    labels = torch.randint(0, 10, (8,))
    mask = torch.tensor([True] * 4 + [False] * 4)
    weights = LossWeights(temperature=2.0, alpha=1.0, feature_weight=0.0)
    total, parts = distillation_loss(torch, [student], [teacher], [LOGITS], weights, labels, mask)
    ce = torch.nn.functional.cross_entropy(student[:4], labels[:4])
    assert float(total) == pytest.approx(float(ce), rel=1e-5)  # alpha 1: the masked labels only
    assert set(parts) == {"teacher", "labels"}


def test_image_axes() -> None:
    f32 = np.dtype(np.float32)
    assert image_axes(("batch", 3, 224, 224), f32) == (2, 3)
    assert image_axes((1, 224, 224, 3), f32) == (1, 2)
    assert image_axes(("batch", 1, 8, 8), f32) == (2, 3)
    assert image_axes(("batch", 128), f32) is None
    assert image_axes(("batch", 3, 224, 224), np.dtype(np.int64)) is None


def test_augment_flips_and_shifts_half_of_the_samples() -> None:
    rng = np.random.default_rng(0)
    images = rng.standard_normal((400, 3, 16, 16)).astype(np.float32)
    out, keeps_label = augment({"x": images}, {"x": (2, 3)}, np.random.default_rng(1))
    assert out["x"].shape == images.shape and out["x"].dtype == images.dtype
    flipped = ~keeps_label
    assert 0.4 < flipped.mean() < 0.6
    same = np.array([np.array_equal(a, b) for a, b in zip(out["x"], images)])
    assert 0.15 < same.mean() < 0.35  # neither flipped nor shifted: a quarter
    assert not same[flipped].any()
    again, _ = augment({"x": images}, {"x": (2, 3)}, np.random.default_rng(1))
    assert np.array_equal(again["x"], out["x"])


def _context(samples: int = 40, labels: bool = True) -> RunContext:
    rng = np.random.default_rng(0)
    cal = [{"input": rng.random((1, 1, 8, 8), dtype=np.float32)} for _ in range(samples)]
    val = [{"input": rng.random((1, 1, 8, 8), dtype=np.float32)} for _ in range(10)]
    data = Dataset(cal, val, "file", 0, "test", np.arange(samples) % 10 if labels else None, np.zeros(10))
    return RunContext("distill", {}, Tolerance(), data, ("distill",), Path("."))


def test_selection_split_is_carved_from_the_calibration_data() -> None:
    ctx = _context()
    model = edgeplug.Model.load(DIGITS)
    data = split(ctx, model, None, 0.25, seed=3)
    assert (data.train_samples, data.selection_samples) == (30, 10)
    chosen = {s["input"].tobytes() for s in data.selection}
    trained = {s["input"].tobytes() for s in data.train}
    validation = {s["input"].tobytes() for s in ctx.data.validation}
    assert not chosen & trained and not (chosen | trained) & validation
    calibration = [s["input"].tobytes() for s in ctx.data.calibration]
    for item, row in zip(data.train, data.train_labels):
        assert row.tolist() == [calibration.index(item["input"].tobytes()) % 10]
    assert (
        split(ctx, model, None, 0.25, seed=3).selection[0]["input"].tobytes()
        == data.selection[0]["input"].tobytes()
    )


def test_too_little_data_is_refused() -> None:
    with pytest.raises(DataError, match="at least 4"):
        split(_context(samples=3), edgeplug.Model.load(DIGITS), None, 0.2, seed=0)


@pytest.mark.skipif(
    not hasattr(plugin_api, "load_data"), reason="the core's plugin API does not export load_data yet"
)
def test_distill_data_drops_validation_samples(tmp_path: Path) -> None:
    """distill.data may be the same file as --data: its samples that are validation samples are dropped, so
    neither training nor checkpoint selection sees what the step is verified on."""
    with registered((ScaleLastWeight(0.8), "scale")):
        run = edgeplug.optimize(
            DIGITS,
            ["scale", "distill"],
            data=str(TRAIN_DATA),
            options={"distill": {"data": str(TRAIN_DATA), "steps": 2, "augment": False}},
            output_dir=tmp_path,
        )
    data = run.report["steps"][1]["details"]["training"]["data"]
    validation = run.report["data"]["validation_samples"]
    assert data["dropped_as_validation_duplicates"] == validation
    assert data["training_samples"] + data["selection_samples"] == 1347 - validation


def test_steps_win_over_epochs_and_the_time_budget_stops(tmp_path: Path) -> None:
    with registered((ScaleLastWeight(0.8), "scale")):
        by_steps = edgeplug.optimize(
            DIGITS,
            ["scale", "distill"],
            data=str(TRAIN_DATA),
            options={"distill": {"steps": 3, "epochs": 50, "augment": False}},
            output_dir=tmp_path / "a",
        )
        by_time = edgeplug.optimize(
            DIGITS,
            ["scale", "distill"],
            data=str(TRAIN_DATA),
            options={"distill": {"time_budget_s": "0.001s", "augment": False}},
            output_dir=tmp_path / "b",
        )
    steps = by_steps.report["steps"][1]["details"]["training"]
    assert steps["steps"] == 3 and steps["stopped_by"] == "steps" and steps["epochs_run"] == 1
    timed = by_time.report["steps"][1]["details"]["training"]
    assert timed["stopped_by"] == "time budget" and timed["steps"] == 1 and timed["epochs_run"] == 1
    assert by_time.report["steps"][1]["status"] == "applied"


def test_feature_matching_uses_tensors_both_models_hold(tmp_path: Path) -> None:
    """A pruned model keeps the names of its layers: those whose shape it kept are matched too."""
    run = edgeplug.optimize(
        DIGITS,
        ["prune", "distill"],
        data=str(TRAIN_DATA),
        options={
            "prune": {"mode": "structured", "sparsity": 0.5, "min_cosine": 0.0},
            "distill": {"feature_weight": 1.0, "steps": 4, "min_top1": 0.9},
        },
        output_dir=tmp_path,
    )
    training = run.report["steps"][1]["details"]["training"]
    assert training["features_matched"] >= 1
    assert training["history"][-1]["loss_features"] >= 0


def test_batchnorm_statistics_passed_as_graph_constants_stay_frozen_buffers():
    """A BatchNormalization whose bias comes from an Identity node (as structured pruning leaves it):
    onnx2torch passes that BatchNorm's parameters as graph constants. The learnable constants become parameters, but its running mean and variance must stay
    buffers: as parameters, autograd refuses them ('native_batch_norm' is not differentiable with respect to
    'running_mean'; seen on the zoo's Fashion CNN with BatchNorm kept, after structured pruning)."""
    import numpy as np
    import torch
    from edgeplug_distill.converter import to_torch
    from edgeplug_distill.training import _norm_statistics, _trainable_constants
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = 4
    inits = [
        numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.ones(c, np.float32), "scale"),
        numpy_helper.from_array(np.full(c, 0.5, np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.random(c).astype(np.float32) + 0.5, "var"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Identity", ["b"], ["b_kept"], name="identity"),
            helper.make_node("BatchNormalization", ["h", "scale", "b_kept", "mean", "var"], ["y"], name="bn"),
        ],
        "bn_bias_from_identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 8, 8])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    converted = to_torch(proto)
    module = converted.module
    made = _trainable_constants(torch, module)
    assert made >= 1  # the scale learns
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    statistics = {"initializers." + name for name in _norm_statistics(module)}
    assert len(statistics) == 2  # the BatchNorm's mean and variance, found in the graph
    assert not statistics & trainable
    assert statistics <= {name for name, _ in module.named_buffers()}
    module.train()
    for sub in module.modules():
        if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
            sub.eval()
    out = converted(torch.from_numpy(rng.random((1, 3, 8, 8), np.float32)))
    out[0].sum().backward()  # raised before the fix
