"""The built-in task metrics on hand-made arrays with known answers, user metrics, and budgets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from edgeplug import Model, Option, OptionError, RunContext, Tolerance, hookimpl
from edgeplug.cli import main
from edgeplug.detection import Boxes, DetectionSettings, decode, mean_average_precision
from edgeplug.metrics import Evidence, builtin_specs, resolve
from edgeplug.verify import judge
from onnx import numpy_helper

from ..conftest import registered

SPECS = builtin_specs()


def value(metric: str, ref: dict, got: dict, labels=None, samples=None) -> float | None:
    count = samples or len(next(iter(ref.values())))
    return SPECS[metric].compute(Evidence(ref, got, labels, count)).value


def test_cosine_is_the_worst_sample_of_the_worst_output():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    got = ref.copy()
    got[1] = [1.0, 0.0]  # orthogonal to its reference: cosine 0 on sample 1 only
    whole = SPECS["cosine"].compute(Evidence({"y": ref}, {"y": got}, None, 3))
    assert whole.value == pytest.approx(0.0)
    assert whole.per_sample == pytest.approx([1.0, 0.0, 1.0])
    assert value("cosine", {"y": ref, "z": ref}, {"y": ref, "z": ref}) == pytest.approx(1.0)


def test_top1_and_top5_on_known_logits():
    ref = np.array([[5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]], float)
    got = np.array([[4, 5, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]], float)  # sample 0: argmax moves, top-5 set kept
    assert value("top1", {"y": ref}, {"y": got}) == 0.5
    assert value("top5", {"y": ref}, {"y": got}) == 1.0
    got[1] = [5, 4, 3, 2, 1, 0]  # sample 1: top-5 {5,4,3,2,1} -> {0,1,2,3,4}: 4 of 5 shared
    assert value("top5", {"y": ref}, {"y": got}) == pytest.approx((1.0 + 0.8) / 2)
    assert value("top1", {"y": np.zeros((2, 3, 4))}, {"y": np.zeros((2, 3, 4))}) is None  # no logits


def test_accuracy_against_labels_reports_the_reference_score_too():
    ref = np.eye(4)
    got = np.eye(4)[[0, 1, 2, 0]]
    result = SPECS["accuracy"].compute(Evidence({"y": ref}, {"y": got}, np.array([0, 1, 2, 3]), 4))
    assert result.value == 0.75 and result.reference == 1.0
    assert value("accuracy", {"y": ref}, {"y": ref}) is None  # no labels: does not apply


def test_embedding_nearest_neighbour_agreement():
    ref = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert value("embedding", {"e": ref}, {"e": ref}) == 1.0
    got = ref[[0, 2, 1, 3]]  # samples 1 and 2 swapped: their neighbours change
    assert value("embedding", {"e": ref}, {"e": got}) < 1.0


def boxes(*rows: tuple[float, float, float, float, float, int]) -> Boxes:
    arr = np.array(rows, float).reshape(-1, 6)
    return Boxes(arr[:, :4], arr[:, 4], arr[:, 5].astype(int))


def test_map_on_boxes_placed_by_hand():
    truth = [boxes((0, 0, 10, 10, 0.9, 0), (20, 20, 30, 30, 0.8, 1))]
    perfect = mean_average_precision(truth, truth)
    assert perfect["map"] == 1.0 and perfect["recall"] == 1.0
    # class 0 found, class 1 missed entirely: AP 1 and 0, mAP 0.5
    half = mean_average_precision(truth, [boxes((0, 0, 10, 10, 0.9, 0))])
    assert half["map"] == pytest.approx(0.5) and half["per_class_ap"] == {"0": 1.0, "1": 0.0}
    # a box shifted to IoU 1/3 does not match at 0.5
    shifted = mean_average_precision(truth[:1], [boxes((5, 0, 15, 10, 0.9, 0))], match_iou=0.5)
    assert shifted["map"] == 0.0
    # a confident false positive ranked above the true box halves class 0's precision at full recall
    fp_first = mean_average_precision(
        [boxes((0, 0, 10, 10, 0.9, 0))], [boxes((50, 50, 60, 60, 0.95, 0), (0, 0, 10, 10, 0.9, 0))]
    )
    assert fp_first["map"] == pytest.approx(0.5)


def yolov8_output(score: float = 0.9) -> np.ndarray:
    """[1, 4+2, 8] with two boxes of class 0 and 1 and low scores elsewhere."""
    out = np.zeros((1, 6, 8), np.float32)
    out[0, :4, :] = [[50], [50], [10], [10]]
    out[0, :4, 0] = [20, 20, 10, 10]
    out[0, :4, 1] = [80, 80, 20, 20]
    out[0, 4, 0] = score
    out[0, 5, 1] = score
    out[0, 4:, 2:] = 0.01
    return out


def test_yolo_layouts_decode_and_detection_metric():
    out = yolov8_output()
    decoded = decode(out, DetectionSettings())
    assert len(decoded) == 1 and sorted(decoded[0].classes.tolist()) == [0, 1]
    v5 = np.zeros((1, 8, 7), np.float32)  # [N, anchors, 5 + C]: objectness x class score
    v5[0, :, :4] = out[0, :4, :].T
    v5[0, :, 4] = 1.0
    v5[0, :, 5:] = out[0, 4:, :].T
    assert sorted(decode(v5, DetectionSettings())[0].classes.tolist()) == [0, 1]
    assert value("detection", {"y": out}, {"y": out}) == 1.0
    dead = out.copy()
    dead[0, 4:] = 0.0  # every score zero: nothing found
    assert value("detection", {"y": out}, {"y": dead}) == 0.0


def test_user_metric_from_a_file_and_nan_fails_verification(tmp_path: Path):
    source = tmp_path / "my_metric.py"
    source.write_text(
        "import numpy as np\n"
        "def always_nan(reference, candidate, labels):\n    return float('nan')\n"
        "def half(reference, candidate, labels):\n    return 0.5\n"
    )
    specs = resolve([f"{source}:always_nan", f"{source}:half"])
    ref = {"y": np.ones((2, 3), np.float32)}
    verdict = judge(ref, ref, Tolerance(rtol=1e-4, atol=1e-5), specs=specs)
    assert not verdict.passed and any("always_nan is NaN" in f for f in verdict.failures)
    budgeted = judge(ref, ref, Tolerance(rtol=1e-4, atol=1e-5, budgets={"half": 0.6}), specs=specs)
    assert any("half 0.5 < 0.6" in f for f in budgeted.failures)


def test_unknown_metric_is_refused_with_suggestions():
    with pytest.raises(OptionError, match="did you mean top1"):
        resolve(["topp1"])


def run_cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_metric_and_budget_on_the_command_line(example_model, example_test_data, tmp_path):
    out = tmp_path / "out"
    code, text = run_cli(
        "run", example_model, "--plugins", "fuse", "--data", example_test_data, "--metric", "accuracy",
        "--metric", "top5", "--budget", "top1=0.99", "--output-dir", out, "--quiet",
    )  # fmt: skip
    assert code == 0, text
    report = json.loads((out / "report.json").read_text())
    ver = report["steps"][0]["verification"]
    assert set(ver["metrics"]) == {"cosine", "accuracy", "top5", "top1"}  # cosine and top1: always reported
    assert ver["budgets"]["top1"]["against"] == "original" and ver["budgets"]["top1"]["min"] == 0.99
    # accuracy was named without a budget: its declared default, 0.9 x the original's accuracy
    accuracy = report["reference_scores"]["accuracy"]
    assert ver["budgets"]["accuracy"]["min"] == pytest.approx(0.9 * accuracy)
    assert ver["metrics"]["accuracy"]["per_sample"]  # per-sample where the metric is per-sample
    assert "NaN" not in (out / "report.json").read_text()


def test_a_metric_that_does_not_apply_is_refused_before_any_step(example_model, example_test_data, tmp_path):
    code, text = run_cli(
        "run", example_model, "--plugins", "fuse", "--data", example_test_data, "--metric", "detection",
        "--output-dir", tmp_path / "out",
    )  # fmt: skip
    assert code == 2 and "metric 'detection' does not apply to this model" in text


class Noisy:
    """A lossy step: adds seeded noise to float weights; its declared default budget accepts anything."""

    @hookimpl
    def plugin_options(self) -> list[Option]:
        return [Option("noise", "float", 0.0, "noise scale"), Option("min_cosine", "float", -1.0, "default")]

    @hookimpl
    def transform_graph(self, model: Model, ctx: RunContext) -> Model:
        proto = model.copy_proto()
        rng = np.random.default_rng(0)
        for tensor in proto.graph.initializer:
            array = numpy_helper.to_array(tensor)
            if array.dtype == np.float32 and array.ndim >= 2:  # conv and dense weights, not BatchNorm's
                noisy = array + rng.standard_normal(array.shape).astype(np.float32) * ctx.options["noise"]
                tensor.CopyFrom(numpy_helper.from_array(noisy, tensor.name))
        return model.replace(proto)


def test_a_missed_user_budget_fails_the_step_against_the_original(example_model, example_test_data, tmp_path):
    with registered((Noisy(), "noisy")):
        code, text = run_cli(
            "run", example_model, "--plugins", "noisy", "-o", "noisy.noise=0.3", "--data", example_test_data,
            "--output-dir", tmp_path / "plain", "--quiet",
        )  # fmt: skip
        assert code == 0, text  # the plugin's own default budget passes it
        code, text = run_cli(
            "run", example_model, "--plugins", "noisy", "-o", "noisy.noise=0.3", "--data", example_test_data,
            "--budget", "top1=0.999", "--output-dir", tmp_path / "out", "--quiet",
        )  # fmt: skip
    assert code == 1
    assert "top1" in text and "< 0.999 (vs the original)" in text.strip().splitlines()[-1]


def test_budgets_in_the_config_file(example_model, example_test_data, tmp_path):
    config = tmp_path / "edgeplug.toml"
    config.write_text('[core]\nmetric = ["top5"]\nbudget = { top1 = 0.95 }\n')
    out = tmp_path / "out"
    code, text = run_cli(
        "run", example_model, "--plugins", "fuse", "--data", example_test_data, "--config", config,
        "--output-dir", out, "--quiet",
    )  # fmt: skip
    assert code == 0, text
    budgets = json.loads((out / "report.json").read_text())["steps"][0]["verification"]["budgets"]
    assert budgets["top1"]["min"] == 0.95 and budgets["top5"]["min"] == 0.9
