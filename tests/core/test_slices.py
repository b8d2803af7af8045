"""Verification that cannot be fooled: slice-by-slice comparison, dead slices, and a detector whose scores a
quantizer could kill while the box rows keep the whole-output cosine near 1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from edgeplug import Tolerance
from edgeplug.cli import main
from edgeplug.verify import compare, evaluate, slices
from onnx import TensorProto, helper, numpy_helper


def yolo_like(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """[4, 6, 200]: rows 0-3 boxes in pixels (0..640), rows 4-5 sigmoid scores (0..1)."""
    ref = np.empty((4, 6, 200))
    ref[:, :4] = rng.uniform(0, 640, (4, 4, 200))
    ref[:, 4:] = rng.uniform(0, 0.9, (4, 2, 200))
    return ref, ref.copy()


def test_a_dead_row_is_found_and_fails_whatever_the_cosine():
    ref, got = yolo_like(np.random.default_rng(0))
    got[:, 4:] = 0.0  # the scores rounded to zero
    found = slices(ref, got)
    assert [(d["axis"], d["first"], d["last"], d["value"]) for d in found["dead_slices"]] == [(1, 4, 5, 0.0)]
    metrics, failures = evaluate({"out": ref}, {"out": got}, Tolerance(min_cosine=0.99))
    assert metrics["out"]["cosine"] > 0.99  # the box rows dominate the whole-output cosine
    assert failures == [
        "output out axis 1 indices 4-5 (of 6) constant 0 after the step; reference range "
        f"{ref[:, 4:].min():.4g} to {ref[:, 4:].max():.4g}"
    ]
    waived = evaluate({"out": ref}, {"out": got}, Tolerance(min_cosine=0.99, allow_dead=True))[1]
    assert waived == []


def test_a_reversed_row_and_a_row_scaled_by_two_exceed_the_slice_budget():
    ref, got = yolo_like(np.random.default_rng(1))
    got[:, 5] = ref[:, 5].max() + ref[:, 5].min() - ref[:, 5]  # reversed: same range, wrong order
    worst = slices(ref, got)["worst_slice"]
    assert (worst["axis"], worst["index"]) == (1, 5) and worst["error"] > 0.8
    assert any(
        "axis 1 index 5 (of 6)" in f
        for f in evaluate({"o": ref}, {"o": got}, Tolerance(max_slice_error=0.25))[1]
    )
    ref, got = yolo_like(np.random.default_rng(2))
    got[:, 4] *= 2
    worst = slices(ref, got)["worst_slice"]
    assert (worst["axis"], worst["index"]) == (1, 4) and worst["error"] > 0.9
    assert "dead_slices" not in slices(ref, got)
    # a faithful candidate: small noise stays far inside the budget
    ref, got = yolo_like(np.random.default_rng(3))
    got += np.random.default_rng(4).normal(0, 1e-3, got.shape)
    assert slices(ref, got)["worst_slice"]["error"] < 0.01
    assert evaluate({"o": ref}, {"o": got}, Tolerance(max_slice_error=0.25))[1] == []


def test_ragged_and_string_outputs_are_compared_per_sample_and_exactly():
    from edgeplug.metrics import Ragged

    ref = {"r": Ragged([np.ones(3), np.ones(5)]), "s": np.array(["a", "b"], dtype=object)}
    same = {"r": Ragged([np.ones(3), np.ones(5)]), "s": np.array(["a", "b"], dtype=object)}
    assert evaluate(ref, same, Tolerance(rtol=1e-4, atol=1e-5))[1] == []
    other = {"r": Ragged([np.ones(3), np.ones(4)]), "s": np.array(["a", "c"], dtype=object)}
    failures = evaluate(ref, other, Tolerance(rtol=1e-4, atol=1e-5))[1]
    assert "output r changed shape [5] -> [4] on sample 1" in failures
    assert "output s: 1 of 2 values differ" in failures
    assert compare(ref, same)["s"]["exact"]


def detector(path: Path) -> None:
    """A conv trunk with a box head (pixels, 0..640) and a sigmoid score head, concatenated on axis 1 into
    [N, 6, 64] as YOLOv8 lays it out."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        scale = 1 / np.sqrt(np.prod(shape[1:]))
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        weight("w0", 16, 3, 3, 3),
        weight("w1", 16, 16, 3, 3),
        weight("w_box", 4, 16, 1, 1),
        weight("w_score", 2, 16, 1, 1),
        numpy_helper.from_array(np.array([640.0], np.float32), "pixels"),
        numpy_helper.from_array(np.array([0, 0, -1], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w_box"], ["b0"]),
        helper.make_node("Sigmoid", ["b0"], ["b1"]),
        helper.make_node("Mul", ["b1", "pixels"], ["b2"]),
        helper.make_node("Reshape", ["b2", "flat"], ["boxes"]),
        helper.make_node("Conv", ["r1", "w_score"], ["s0"]),
        helper.make_node("Sigmoid", ["s0"], ["s1"]),
        helper.make_node("Reshape", ["s1", "flat"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["output0"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 6, 64])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_a_detector_never_passes_with_dead_scores(tmp_path):
    model = tmp_path / "detector.onnx"
    detector(model)
    rng = np.random.default_rng(0)
    images = rng.random((48, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "photos.npz", x=images)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["run", str(model), "--plugins", "fuse,quant", "--data", str(tmp_path / "photos.npz"),
         "--output-dir", str(out), "--quiet"],
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    if result.exit_code == 0:
        final = ort.InferenceSession(str(out / "detector.onnx")).run(None, {"x": images[:8]})[0]
        reference = ort.InferenceSession(str(model)).run(None, {"x": images[:8]})[0]
        assert np.ptp(final[:, 4:], axis=(0, 2)).min() > 0  # both score rows still vary
        assert np.abs(final[:, 4:] - reference[:, 4:]).max() < 0.25 * np.ptp(reference[:, 4:])
    else:
        assert result.exit_code == 1, result.output
        assert "axis 1 indices 4-5 (of 6) constant" in result.output or "axis 1 index" in result.output
        assert report["status"] == "failed"


@pytest.mark.parametrize("axis_size", [1, 5000])
def test_axes_outside_2_to_4096_are_not_sliced(axis_size):
    ref = np.random.default_rng(0).random((2, axis_size))
    assert slices(ref, np.zeros_like(ref)) == {}
