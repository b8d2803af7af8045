"""yolov8n: NudeNet's detector, unchanged; the float model finds faces on the evaluation photos."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import zoo
from benchmarks.zoo.entries import YOLOV8N
from benchmarks.zoo.onnx_export import run_batched
from benchmarks.zoo.sources import sha256_file
from benchmarks.zoo.yolov8n import CLASSES, detections

pytestmark = pytest.mark.slow  # about half a minute from a cold cache


def test_copied_unchanged(yolov8n: zoo.ZooModel) -> None:
    assert sha256_file(yolov8n.model) == YOLOV8N.sha256
    assert yolov8n.metric == "detection"


def test_float_model_finds_boxes_on_evaluation_photos(yolov8n: zoo.ZooModel) -> None:
    images = np.load(yolov8n.data["evaluation"])["images"]
    assert images.dtype == np.float32 and images.shape[1:] == (3, 320, 320)
    assert images.min() >= 0 and images.max() <= 1
    found = detections(run_batched(yolov8n.model, {"images": images}, batch=16))
    assert sum(len(b) for b in found) == yolov8n.properties["evaluation"]["boxes"] >= 20
    rows = json.loads(yolov8n.files["photos"].read_text())["evaluation"]
    for person in ("astronaut", "grace_hopper"):
        whole = next(i for i, r in enumerate(rows) if r["photo"] == person and r["view"] == "whole photo")
        assert CLASSES.index("FACE_FEMALE") in found[whole][:, 5], person
    faces = [b for r, b in zip(rows, found) if r["photo"] == "lfw_subset"]
    assert sum(len(b) for b in faces) >= len(faces)  # about one face found per grid or more
    cal = {r["photo"] for r in json.loads(yolov8n.files["photos"].read_text())["calibration"]}
    assert cal & {r["photo"] for r in rows} == {"lfw_subset"}  # only the LFW file is shared, split by face
