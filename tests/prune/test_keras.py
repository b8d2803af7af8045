"""Training-time pruning of a small tf_keras model with tfmot, exported through tf2onnx (slow)."""

from __future__ import annotations

import os
from pathlib import Path

import edgeplug
import numpy as np
import pytest
from click.testing import CliRunner
from edgeplug.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _nhwc(path: Path, out: Path, limit: int | None = None) -> Path:
    with np.load(path) as npz:
        x, y = npz["input"], npz["labels"]
    if limit:
        x, y = x[:limit], y[:limit]
    np.savez(out, input=x.transpose(0, 2, 3, 1).astype(np.float32), labels=y)
    return out


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tensorflow_model_optimization")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tf_keras

    folder = tmp_path_factory.mktemp("keras")
    train = _nhwc(EXAMPLES / "digits_train.npz", folder / "train.npz")
    with np.load(train) as npz:
        x, y = npz["input"], npz["labels"]
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential(
        [
            tf_keras.layers.Input((8, 8, 1)),
            tf_keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            tf_keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(64, activation="relu"),
            tf_keras.layers.Dense(10),
        ]
    )
    model.compile(
        "adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    path = folder / "digits_keras.h5"
    model.save(path)
    return path


@pytest.mark.slow
def test_tfmot_pruning_reaches_target_and_exports(keras_model: Path, tmp_path: Path) -> None:
    train = _nhwc(EXAMPLES / "digits_train.npz", tmp_path / "train.npz")
    result = edgeplug.optimize(
        keras_model,
        ["prune"],
        data=train,
        output_dir=tmp_path / "out",
        options={"prune": {"sparsity": 0.6, "epochs": 2}},
    )
    step = result.report["steps"][0]
    assert step["status"] == "applied"
    assert step["details"]["mode"] == "tfmot"  # pruned while training, not pruned again by magnitude
    training = step["details"]["training"]
    kernels = {row["layer"]: row["sparsity"] for row in training["layers"]}
    assert len(kernels) == 4
    for name, sparsity in kernels.items():
        assert abs(sparsity - 0.6) < 0.01, (name, sparsity)
    # the exported ONNX carries the zeros: every weight matrix/kernel is ~60% zero
    final = edgeplug.Model.load(result.output_dir / "digits_keras.onnx")
    weights = [a for _, a in final.weights() if a.ndim >= 2 and a.size >= 144]
    assert len(weights) == 4
    for array in weights:
        assert abs(1 - np.count_nonzero(array) / array.size - 0.6) < 0.01
    assert training["final_accuracy"] > 0.8
    assert result.report["steps"][0]["metrics"]["accuracy"] > 0.8


@pytest.mark.slow
def test_keras3_file_is_refused_with_a_sentence(tmp_path: Path) -> None:
    keras = pytest.importorskip("keras")
    if not keras.__version__.startswith("3"):
        pytest.skip("Keras 3 is not installed")
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(2)])
    path = tmp_path / "k3.keras"
    model.save(path)
    data = tmp_path / "d.npz"
    np.savez(data, input=np.zeros((4, 4), np.float32), labels=np.zeros(4, np.int64))
    run = CliRunner().invoke(
        main,
        ["run", str(path), "--plugins", "prune", "--data", str(data), "--output-dir", str(tmp_path / "o")],
    )
    assert run.exit_code == 2
    assert "Keras 3" in run.output and "tf_keras" in run.output


def test_keras_without_labels_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "model.h5"
    path.write_bytes(b"not really a model")
    data = tmp_path / "d.npz"
    np.savez(data, input=np.zeros((4, 8, 8, 1), np.float32))
    run = CliRunner().invoke(
        main,
        ["run", str(path), "--plugins", "prune", "--data", str(data), "--output-dir", str(tmp_path / "o")],
    )
    assert run.exit_code == 2, run.output
    assert "labels" in run.output


def test_missing_tensorflow_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "tensorflow", None)  # as if it were not installed
    path = tmp_path / "model.h5"
    path.write_bytes(b"\x89HDF\r\n")
    data = tmp_path / "d.npz"
    np.savez(data, input=np.zeros((4, 8, 8, 1), np.float32), labels=np.zeros(4, np.int64))
    with pytest.raises(edgeplug.MissingDependencyError, match=r"edgeplug-prune\[keras\]"):
        edgeplug.optimize(path, ["prune"], data=data, output_dir=tmp_path / "o")
