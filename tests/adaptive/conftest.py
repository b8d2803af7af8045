"""Shared fixtures of the adaptive tests: held-out digits data, one calibrated cascade of the digits CNN and
a strongly pruned copy of it, and tiny hand-built models whose gate scores are known."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from edgeplug.plugin_api import Artifact
from edgeplug_adaptive.cascade import KIND
from edgeplug_adaptive.gates import Gate
from edgeplug_adaptive.manifest import FOLDER, NAME, Entry, Manifest, sha256
from edgeplug_adaptive.members import ROUTE_OUTPUT
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DIGITS = EXAMPLES / "digits_cnn.onnx"
BUDGET = 0.98
# The two models' costs per input, given rather than measured so that no assertion depends on the clock:
# the MAC counts the prune step reports for this model (310,880 after structured pruning at 0.6, 913,408
# before), in ms per million MACs.
COSTS = (0.31088, 0.913408)


@pytest.fixture(scope="session")
def digits_split(tmp_path_factory) -> tuple[Path, Path]:
    """The digits held-out set (the model never trained on it), split 250 calibration / 200 validation:
    the training split would not do, both models agree on every training image."""
    folder = tmp_path_factory.mktemp("digits")
    with np.load(EXAMPLES / "digits_test.npz") as npz:
        x, y = npz["input"], npz["labels"]
    order = np.random.default_rng(0).permutation(len(x))
    calibration, validation = folder / "calibration.npz", folder / "validation.npz"
    np.savez(calibration, input=x[order[:250]], labels=y[order[:250]])
    np.savez(validation, input=x[order[250:]], labels=y[order[250:]])
    return calibration, validation


def cascade_run(
    out: Path, calibration: Path, validation: Path, **adaptive: str
) -> edgeplug.pipeline.RunResult:
    """fuse, structured pruning of 60% of the channels (a small model that misses the budget alone), then
    the cascade of the pruned model and the original."""
    options = {"costs": ",".join(str(c) for c in COSTS), "min_top1": str(BUDGET), **adaptive}
    return edgeplug.optimize(
        DIGITS,
        "fuse,prune,adaptive",
        data=validation,
        calibration_data=calibration,
        options={
            "prune": {"mode": "structured", "sparsity": "0.6", "min_cosine": "0.5"},
            "adaptive": options,
        },
        output_dir=out,
    )


@pytest.fixture(scope="session")
def cascade(tmp_path_factory, digits_split):
    """One calibrated cascade run (shared: tests that change its files work on a copy)."""
    out = tmp_path_factory.mktemp("cascade") / "out"
    result = cascade_run(out, *digits_split)
    return result


@pytest.fixture
def cascade_copy(cascade, tmp_path) -> Path:
    """A private copy of the cascade run's output folder, to tamper with."""
    target = tmp_path / "out"
    shutil.copytree(cascade.output_dir, target)
    return target


def details(result) -> dict:
    return result.report["compile"]["details"]


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "cascade" / "cascade.json").read_text())


# -- tiny models whose gate scores are known ----------------------------------------------------------
def offset_model(
    offset: float, classes: int = 3, output: str = "logits", batch: int | str = "N"
) -> onnx.ModelProto:
    """logits = x + offset: every model of a cascade of these sees the same confidences, and the offset in
    its answer says which model answered."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "offset"], [output])],
        f"offset_{offset:g}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, classes])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(np.full(classes, offset, np.float32), "offset")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def image_model(scale: float, shape: Sequence[int] = (1, 4, 4)) -> onnx.ModelProto:
    """A model of an image input [N, C, H, W] whose output is not logits: y = x * scale."""
    dims = ["N", *shape]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"])],
        f"image_{scale:g}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        [numpy_helper.from_array(np.array(scale, np.float32), "scale")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def save(proto: onnx.ModelProto, path: Path) -> Path:
    onnx.save(proto, path)
    return path


def confident_rows(confidences: Sequence[float], classes: int = 3) -> np.ndarray:
    """Logit rows [a, 0, 0, ...] whose softmax top-1 probability is each given confidence."""
    rows = np.zeros((len(confidences), classes), np.float32)
    for i, c in enumerate(confidences):
        rows[i, 0] = np.log(c * (classes - 1) / (1 - c))
    return rows


def write_cascade(
    folder: Path,
    models: Sequence[onnx.ModelProto],
    gate: Gate,
    thresholds: Sequence[float],
    extra: Sequence[Path] = (),
) -> Artifact:
    """A cascade artifact written by hand (models, then manifest), as compile writes one."""
    cascade = folder / FOLDER
    cascade.mkdir(parents=True, exist_ok=True)
    paths = [save(proto, cascade / f"{i}-m{i}.onnx") for i, proto in enumerate(models)]
    copied = [Path(shutil.copy(p, cascade / p.name)) for p in extra]
    manifest = Manifest(
        models=[Entry(p.name, sha256(p.read_bytes()), 1.0 + i) for i, p in enumerate(paths)],
        gate=gate,
        thresholds=list(thresholds),
        route_output=ROUTE_OUTPUT,
        files={p.name: sha256(p.read_bytes()) for p in copied},
    )
    files = [manifest.write(cascade / NAME), *paths, *copied]
    return Artifact.of(KIND, files)
