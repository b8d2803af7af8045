"""Which channels structured pruning keeps under each `prune.criterion`: `l1` and `l2` norms of the producing
conv's filters, `bn` the |gamma| of the BatchNormalization after it (on an unfused model)."""

from __future__ import annotations

import json
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from edgeplug.cli import main
from onnx import TensorProto, helper, numpy_helper

from tests.prune.conftest import DIGITS, TEST_DATA, TRAIN_DATA, digits_accuracy


def _arrays(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def kept_rows(original: np.ndarray, pruned: np.ndarray) -> list[int]:
    """Indices of the original's rows (output channels) that the pruned tensor holds, in order."""
    flat, rows = original.reshape(len(original), -1), pruned.reshape(len(pruned), -1)
    kept = []
    for row in rows:
        hits = [i for i in range(len(flat)) if flat[i].shape == row.shape and np.array_equal(flat[i], row)]
        assert len(hits) == 1, "every row of the pruned tensor comes from one original row"
        kept.append(hits[0])
    return kept


def top(scores: np.ndarray, count: int) -> list[int]:
    return sorted(np.argsort(-scores, kind="stable")[:count].tolist())


# -- a hand-built net where l1, l2 and bn each keep a different pair of channels -------------------------

# conv "mid" (4 output channels, 2 inputs, 3x3): per channel L1 / L2 norm
#   0: all 18 weights 0.1  -> 1.8 / 0.42      1: one weight 1.0 -> 1.0 / 1.0
#   2: all 18 weights 0.05 -> 0.9 / 0.21      3: one weight 0.6 -> 0.6 / 0.6
# and the BatchNorm after it has gamma [0.1, 0.2, 2.0, 1.5]
MID = np.zeros((4, 2, 3, 3), np.float32)
MID[0] = 0.1
MID[1, 0, 1, 1] = 1.0
MID[2] = 0.05
MID[3, 1, 1, 1] = 0.6
GAMMA = np.array([0.1, 0.2, 2.0, 1.5], np.float32)
EXPECTED = {"l1": [0, 1], "l2": [1, 3], "bn": [2, 3]}


def criteria_net(path: Path) -> Path:
    """first conv (spared) -> Relu -> mid conv -> BN -> Relu -> conv -> Relu -> GAP -> Flatten -> Gemm (spared)."""
    rng = np.random.default_rng(0)
    inits = {
        "w_first": rng.standard_normal((2, 1, 3, 3)).astype(np.float32),
        "w_mid": MID,
        "gamma": GAMMA,
        "beta": np.array([0.1, 0.2, 0.3, 0.4], np.float32),
        "mean": np.zeros(4, np.float32),
        "var": np.ones(4, np.float32),
        "w_last_conv": rng.standard_normal((6, 4, 3, 3)).astype(np.float32),
        "fc": rng.standard_normal((3, 6)).astype(np.float32),
        "fc_b": np.zeros(3, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w_first"], ["c1"], pads=[1, 1, 1, 1], name="first"),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "w_mid"], ["c2"], pads=[1, 1, 1, 1], name="mid"),
        helper.make_node("BatchNormalization", ["c2", "gamma", "beta", "mean", "var"], ["b2"], name="bn"),
        helper.make_node("Relu", ["b2"], ["r2"], name="r2"),
        helper.make_node("Conv", ["r2", "w_last_conv"], ["c3"], pads=[1, 1, 1, 1], name="last_conv"),
        helper.make_node("Relu", ["c3"], ["r3"], name="r3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "criteria",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn"])
def test_each_criterion_keeps_its_own_channels(tmp_path: Path, criterion: str) -> None:
    model = criteria_net(tmp_path / "criteria.onnx")
    result = edgeplug.optimize(
        model,
        ["prune"],
        output_dir=tmp_path / "out",
        options={
            "prune": {
                "mode": "structured",
                "sparsity": 0.5,
                "criterion": criterion,
                "reconstruct": False,
                "min_cosine": -1,  # what is kept is the subject here, not the fidelity
            }
        },
    )
    step = result.report["steps"][0]
    assert step["status"] == "applied", step.get("error")
    (group,) = [g for g in step["details"]["groups"] if g["producers"] == ["mid"]]
    assert group["criterion"] == criterion and (group["channels"], group["kept"]) == (4, 2)
    pruned = _arrays(onnx.load(result.output_dir / "criteria.onnx"))
    assert kept_rows(MID, pruned["w_mid"]) == EXPECTED[criterion]
    np.testing.assert_array_equal(pruned["gamma"], GAMMA[EXPECTED[criterion]])


def test_expected_sets_follow_the_definitions() -> None:
    """The table above is what the three definitions give (so the test above checks the criteria)."""
    flat = MID.reshape(4, -1).astype(np.float64)
    assert top(np.abs(flat).sum(1), 2) == EXPECTED["l1"]
    assert top(np.sqrt((flat**2).sum(1)), 2) == EXPECTED["l2"]
    assert top(np.abs(GAMMA), 2) == EXPECTED["bn"]
    assert len({tuple(v) for v in EXPECTED.values()}) == 3


# -- the trained example CNN (Conv -> BatchNormalization -> Relu, not fused) ------------------------------


def _prune_digits(tmp_path: Path, criterion: str) -> tuple[dict, dict[str, np.ndarray]]:
    out = tmp_path / criterion
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(DIGITS),
            "--plugins",
            "prune",
            "--data",
            str(TEST_DATA),
            "--calibration-data",
            str(TRAIN_DATA),
            "--output-dir",
            str(out),
            "-o",
            "prune.mode=structured",
            "-o",
            "prune.sparsity=0.3",
            "-o",
            f"prune.criterion={criterion}",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    return report, _arrays(onnx.load(out / "digits_cnn.onnx"))


BN_AFTER = {
    "/0/Conv": ("0.weight", "1.weight"),
    "/3/Conv": ("3.weight", "4.weight"),
    "/7/Conv": ("7.weight", "8.weight"),
}


def kept_by_gamma(original: np.ndarray, pruned: np.ndarray) -> list[int]:
    """The channels a BatchNorm kept, named by its gamma values (distinct in the trained example; the
    least-squares reconstruction refits conv weights, never BatchNorm parameters)."""
    position = {float(v): i for i, v in enumerate(original)}
    assert len(position) == original.size
    return [position[float(v)] for v in pruned]


def pruned_groups(report: dict) -> dict[str, dict]:
    groups = {g["producers"][0]: g for g in report["steps"][0]["details"]["groups"]}
    chosen = {conv: g for conv, g in groups.items() if g["kept"] < g["channels"]}
    assert chosen and set(chosen) <= set(BN_AFTER), groups
    return chosen


def test_bn_criterion_on_the_unfused_example_keeps_the_largest_gammas(tmp_path: Path) -> None:
    original = _arrays(onnx.load(DIGITS))
    report, pruned = _prune_digits(tmp_path, "bn")
    differs_from_l1 = False
    for conv, group in pruned_groups(report).items():
        weight, gamma = BN_AFTER[conv]
        assert group["criterion"] == "bn"
        kept = kept_by_gamma(original[gamma], pruned[gamma])
        assert kept == top(np.abs(original[gamma].astype(np.float64)), group["kept"]), conv
        flat = original[weight].reshape(len(original[weight]), -1).astype(np.float64)
        differs_from_l1 |= kept != top(np.abs(flat).sum(1), group["kept"])
    assert differs_from_l1  # on this network the criterion changes the choice
    assert report["steps"][0]["status"] == "applied"
    assert digits_accuracy(tmp_path / "bn" / "digits_cnn.onnx") >= 0.95


def test_l2_criterion_on_the_example_keeps_the_largest_filter_norms(tmp_path: Path) -> None:
    original = _arrays(onnx.load(DIGITS))
    report, pruned = _prune_digits(tmp_path, "l2")
    for conv, group in pruned_groups(report).items():
        weight, gamma = BN_AFTER[conv]
        assert group["criterion"] == "l2"
        flat = original[weight].reshape(len(original[weight]), -1).astype(np.float64)
        kept = kept_by_gamma(original[gamma], pruned[gamma])
        assert kept == top(np.sqrt((flat**2).sum(1)), group["kept"]), conv
    assert digits_accuracy(tmp_path / "l2" / "digits_cnn.onnx") >= 0.95
