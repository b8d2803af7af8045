"""The models of the performance table, their data, and the task metric that scores each variant.

Each zoo evaluation split is cut in two: the first half is the validation data edgeplug verifies and chooses
with (and onnxruntime's documented recipe picks its calibration method with), the second half, seen by nobody,
scores every variant. Calibration samples are the same for every quantizer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Sample = dict[str, np.ndarray]


@dataclass(frozen=True)
class Spec:
    """One model of the table: what scores it, how many samples of each split it gets, what it is."""

    name: str
    kind: str  # "conv" or "transformer": which static recipe onnxruntime's docs give it
    metrics: tuple[str, ...]  # computed for every variant on the held-out samples
    judged_by: tuple[str, ...]  # the task metric(s) "equal or better" is decided on; the first decides ties
    counts: tuple[int, int, int]  # calibration, validation, held-out samples (at most)
    about: str

    @property
    def random_weights(self) -> bool:
        return self.name in RANDOM_WEIGHTS


# tests/zoo.py's random-weight architectures, and the zoo entry whose data each is fed
RANDOM_WEIGHTS = {"resnet50": "imagenet_photos", "yolov5s": "yolov8n", "bert_base": "minilm"}
CLASSIFIER = ("top1", "top5", "cosine")  # the photo crops have no labels: agreement with FP32
DETECTOR = ("detection", "cosine")
EMBEDDING = ("cosine", "embedding")
LABELLED = ("accuracy", "top1", "cosine")
FIDELITY = ("cosine",)
SPECS: dict[str, Spec] = {
    spec.name: spec
    for spec in (
        Spec("mobilenetv2", "conv", CLASSIFIER, ("top1",), (64, 90, 90), "ImageNet weights, photo crops"),
        Spec("yolov8n", "conv", DETECTOR, ("detection",), (69, 45, 46), "detector, 320x320, photos"),
        Spec(
            "minilm", "transformer", EMBEDDING, EMBEDDING, (128, 128, 128), "sentence embeddings, length 128"
        ),
        Spec("fashion_cnn", "conv", LABELLED, ("accuracy",), (128, 500, 2000), "Fashion-MNIST, trained here"),
        Spec("resnet50", "conv", FIDELITY, FIDELITY, (32, 16, 32), "random weights, fed the photo crops"),
        Spec(
            "yolov5s",
            "conv",
            FIDELITY,
            FIDELITY,
            (32, 16, 32),
            "random weights, 640x640, photos upsampled 2x",
        ),
        Spec(
            "bert_base", "transformer", FIDELITY, FIDELITY, (32, 32, 32), "random weights, MiniLM's sentences"
        ),
    )
}
METRIC_NAMES = {
    "top1": "top-1",
    "top5": "top-5",
    "accuracy": "accuracy",
    "detection": "mAP@0.5",
    "cosine": "worst cosine",
    "embedding": "NN agreement",
}


def ties(spec: Spec, held_out: int) -> dict[str, float]:
    """The resolution of each metric on the held-out samples: two values closer than this are equal. A
    share of samples moves by one sample (top-5 overlap by a fifth of one); mAP by 0.01; a worst cosine by
    0.001."""
    one = 1.0 / max(held_out, 1)
    table = {
        "top1": one,
        "accuracy": one,
        "embedding": one,
        "top5": one / 5,
        "detection": 0.01,
        "cosine": 0.001,
    }
    return {m: table[m] for m in spec.metrics}


# -- data ------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    model: Path
    calibration: Path  # .npz files as edgeplug takes them
    validation: Path
    validation_samples: list[Sample]
    validation_labels: np.ndarray | None
    held_out: list[Sample]
    labels: np.ndarray | None
    data: dict[str, Any]  # where the samples come from and how many of each


def zoo_problem(name: str) -> str | None:
    """Why the model `name` cannot be measured from the zoo cache as it is (the zoo's one line, naming the
    command that builds it), else None. The table never builds (or trains) a zoo entry itself."""
    from benchmarks.zoo import ZooError, get

    try:
        get(RANDOM_WEIGHTS.get(name, name), build=False)
    except ZooError as exc:
        return str(exc)
    return None


def load_npz(
    path: Path, start: int = 0, stop: int | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    with np.load(path) as npz:
        arrays = {k: npz[k][start:stop] for k in npz.files if k != "labels"}
        labels = npz["labels"][start:stop] if "labels" in npz.files else None
    return arrays, labels


def samples_of(arrays: Mapping[str, np.ndarray]) -> list[Sample]:
    count = len(next(iter(arrays.values())))
    return [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(count)]


def prepare(spec: Spec, folder: Path) -> Prepared:
    """The model and its data: calibration, validation (first half of the evaluation split) and held-out
    samples (second half), the first two written as the .npz files edgeplug takes."""
    from benchmarks.zoo import get

    data_entry = RANDOM_WEIGHTS.get(spec.name, spec.name)
    entry = get(data_entry, build=False)
    cal_count, val_count, held_count = spec.counts
    if spec.random_weights:
        from tests import zoo as random_zoo

        model = random_zoo.cached(spec.name)
    else:
        model = entry.model
    calibration, _ = load_npz(entry.data["calibration"], 0, cal_count)
    evaluation, labels = load_npz(entry.data["evaluation"])
    half = len(next(iter(evaluation.values()))) // 2
    validation = {k: v[: min(half, val_count)] for k, v in evaluation.items()}
    held_out = {k: v[half : half + held_count] for k, v in evaluation.items()}
    val_labels = None if labels is None else labels[: min(half, val_count)]
    held_labels = None if labels is None else labels[half : half + held_count]
    if spec.name == "yolov5s":  # 320x320 photos to the 640x640 input
        calibration, validation, held_out = (
            {k: v.repeat(2, axis=2).repeat(2, axis=3) for k, v in part.items()}
            for part in (calibration, validation, held_out)
        )
    cal_path, val_path = folder / "calibration.npz", folder / "validation.npz"
    np.savez(cal_path, **calibration)
    np.savez(val_path, **validation, **({"labels": val_labels} if val_labels is not None else {}))
    data = {
        "source": f"zoo entry {data_entry!r}" + (" (upsampled 2x)" if spec.name == "yolov5s" else ""),
        "calibration": len(next(iter(calibration.values()))),
        "validation": len(next(iter(validation.values()))),
        "held_out": len(next(iter(held_out.values()))),
    }
    return Prepared(
        Path(model).resolve(),
        cal_path,
        val_path,
        samples_of(validation),
        val_labels,
        samples_of(held_out),
        held_labels,
        data,
    )


# -- task metrics ----------------------------------------------------------------------------------
def outputs_of(model: Path, samples: Sequence[Sample], threads: int) -> dict[str, Any]:
    """Every sample through the model, one at a time (batch 1), with edgeplug's own session settings."""
    from edgeplug.runtime import run_all, session

    return run_all(session(model, threads), samples)


def task_metrics(
    spec: Spec, reference: Mapping[str, Any], candidate: Mapping[str, Any], labels: np.ndarray | None
) -> dict[str, Any]:
    """The spec's metrics with the core's definitions (the numbers `edgeplug run --metric` reports),
    against FP32's outputs; accuracy against the labels, with FP32's own beside it."""
    from edgeplug.metrics import Evidence, builtin_specs

    builtins = builtin_specs()
    count = len(next(iter(reference.values())))
    found: dict[str, Any] = {}
    for name in spec.metrics:
        value = builtins[name].compute(Evidence(reference, candidate, labels, count))
        found[name] = None if value.value is None or not math.isfinite(value.value) else round(value.value, 6)
        if name == "accuracy" and value.reference is not None:
            found["accuracy_fp32"] = round(value.reference, 6)
    return found
