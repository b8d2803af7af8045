"""Real trained models through `fuse,quant` with default options, judged by their task metric: the
Fashion-MNIST CNN by labelled accuracy, YOLOv8n by detection mAP against the float model's boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from edgeplug.cli import main

from benchmarks import zoo

pytestmark = pytest.mark.slow  # a minute or more each


def run(model: Path, data: dict[str, Path], metric: str, out: Path, *extra: str) -> dict:
    result = CliRunner().invoke(
        main,
        [
            "run", str(model), "--plugins", "fuse,quant", "--data", str(data["evaluation"]),
            "--calibration-data", str(data["calibration"]), "--metric", metric, "--output-dir", str(out),
            "--quiet", *extra,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


def test_fashion_cnn_keeps_its_accuracy(fashion_cnn: zoo.ZooModel, tmp_path):
    data = dict(fashion_cnn.data)
    evaluation = np.load(data["evaluation"])
    subset = tmp_path / "evaluation.npz"  # 2,000 labelled test images keep the run short
    np.savez(subset, input=evaluation["input"][:2000], labels=evaluation["labels"][:2000])
    data["evaluation"] = subset
    report = run(fashion_cnn.models["model_bn"], data, "accuracy", tmp_path / "out")
    quant = report["steps"][-1]["verification"]["metrics_vs_original"]["accuracy"]
    assert quant["reference"] >= 0.90  # the float model, as trained by the zoo
    assert quant["value"] >= quant["reference"] - 0.01  # INT8 within a point of float on labelled data
    assert report["steps"][-1]["metrics"]["size_bytes"] < report["original"]["metrics"]["size_bytes"] / 2


def test_yolov8n_keeps_finding_what_the_float_model_finds(yolov8n: zoo.ZooModel, tmp_path):
    report = run(yolov8n.model, dict(yolov8n.data), "detection", tmp_path / "out")
    step = report["steps"][-1]
    assert step["plugin"] == "quant" and step["status"] == "applied"
    found = step["verification"]["metrics_vs_original"]["detection"]
    assert found["value"] >= 0.9 and found["details"]["reference_boxes"] >= 20
    assert not any(m.get("dead_slices") for m in step["verification"]["vs_previous"].values())
    assert step["metrics"]["size_bytes"] < report["original"]["metrics"]["size_bytes"]
