"""Quantization-aware training of a small tf_keras CNN trained here on digits, exported with tf2onnx."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import edgeplug
import numpy as np
import pytest
from edgeplug import DataError, MissingDependencyError, ModelError

from .conftest import DIGITS_TEST, DIGITS_TRAIN, accuracy, make_ctx, run_cli

FLOAT_EPOCHS = 12
QAT_EPOCHS = 3
ONE_IMAGE = 1 / 450  # digits_test.npz holds 450 images


def _nhwc(src: Path, dst: Path) -> Path:
    with np.load(src) as npz:
        np.savez(dst, input=npz["input"].transpose(0, 2, 3, 1), labels=npz["labels"])
    return dst


@pytest.fixture(scope="module")
def keras_digits(tmp_path_factory) -> dict[str, Path]:
    """A Conv-BN-ReLU CNN trained to convergence on digits (tf_keras; 12 epochs: 3 more epochs of
    fine-tuning no longer change its held-out accuracy), saved as .h5, plus channels-last data."""
    keras = pytest.importorskip("tf_keras")
    pytest.importorskip("tensorflow_model_optimization")
    pytest.importorskip("tf2onnx")
    folder = tmp_path_factory.mktemp("keras")
    train, test = _nhwc(DIGITS_TRAIN, folder / "train.npz"), _nhwc(DIGITS_TEST, folder / "test.npz")
    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="input"),
            layers.Conv2D(16, 3, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.Conv2D(32, 3, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(10),
        ]
    )
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with np.load(train) as npz:
        model.fit(npz["input"], npz["labels"], epochs=FLOAT_EPOCHS, batch_size=32, verbose=0)
    path = folder / "digits.h5"
    model.save(path)
    return {"model": path, "train": train, "test": test, "folder": folder}


def _float_onnx(keras_path: Path, out: Path) -> Path:
    import tensorflow as tf
    import tf2onnx
    import tf_keras

    model = tf_keras.models.load_model(str(keras_path), compile=False)
    spec = (tf.TensorSpec((None, 8, 8, 1), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=13)
    out.write_bytes(proto.SerializeToString())
    return out


def _fine_tuned_float(keras_path: Path, train: Path, out: Path) -> Path:
    """The float network trained exactly as QAT fine-tunes it (Adam 1e-4, batch 32, same epochs and seed),
    without fake quantization: what the extra epochs alone buy."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.models.load_model(str(keras_path), compile=False)
    model.compile(
        tf_keras.optimizers.Adam(1e-4), tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    with np.load(train) as npz:
        model.fit(npz["input"], npz["labels"], epochs=QAT_EPOCHS, batch_size=32, shuffle=True, verbose=0)
    path = out / "fine_tuned.h5"
    model.save(path)
    return path


def _ptq(float_path: Path, paths: dict[str, Path], out: Path) -> float:
    """Static INT8 with this plugin's defaults, calibrated on the training images; held-out accuracy."""
    result = edgeplug.optimize(
        float_path, ["quant"], data=paths["test"], calibration_data=str(paths["train"]), output_dir=out
    )
    assert result.report["steps"][0]["status"] == "applied"
    return accuracy(out / float_path.name, paths["test"])


@pytest.mark.slow
def test_qat_against_ptq_of_the_same_float_network(keras_digits, tmp_path):
    """QAT and PTQ start from the SAME trained float network (digits.h5). On it 8-bit PTQ loses nothing
    (so QAT has nothing to recover): the test states float, PTQ and QAT accuracy, and the float network
    fine-tuned like QAT then quantized (the control for the extra epochs QAT trains)."""
    paths = keras_digits
    float_path = _float_onnx(paths["model"], tmp_path / "float.onnx")
    float_acc = accuracy(float_path, paths["test"])
    ptq_acc = _ptq(float_path, paths, tmp_path / "ptq")
    tuned = _float_onnx(_fine_tuned_float(paths["model"], paths["train"], tmp_path), tmp_path / "tuned.onnx")
    tuned_acc = accuracy(tuned, paths["test"])
    tuned_ptq_acc = _ptq(tuned, paths, tmp_path / "tuned_ptq")

    out = tmp_path / "qat"
    result = run_cli(
        "run",
        paths["model"],
        "--plugins",
        "quant",
        "--data",
        paths["train"],
        "-o",
        f"quant.qat_epochs={QAT_EPOCHS}",
        "--output-dir",
        out,
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    qat = report["steps"][0]["details"]["qat"]
    assert qat["epochs"] == QAT_EPOCHS and len(qat["loss"]) == QAT_EPOCHS
    assert qat["export"]["cosine"] > 0.999 and qat["export"]["top1_agreement"] >= 0.99
    assert qat["int8_weights_vs_keras"]["max_abs_error"] <= qat["export"]["max_abs_error"]
    packed = report["steps"][0]["details"]["qat_weights_packed"]
    assert len(packed) == 3  # 2 Conv + the Dense MatMul now hold INT8 weights
    final = out / "digits.onnx"
    import onnx

    proto = onnx.load(final)
    assert sum(n.op_type == "QuantizeLinear" for n in proto.graph.node) >= 3  # fake-quant became Q/DQ
    int8 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert len(int8) == 3
    assert report["steps"][0]["bought"]["size_ratio"] > 2
    qat_acc = accuracy(final, paths["test"])
    print(
        f"digits held-out accuracy of the same float network: float {float_acc:.4f}, PTQ INT8 {ptq_acc:.4f}, "
        f"QAT INT8 {qat_acc:.4f}; fine-tuned {QAT_EPOCHS} epochs without fake quantization: float "
        f"{tuned_acc:.4f}, PTQ INT8 {tuned_ptq_acc:.4f}; exported QAT model vs Keras: top-1 agreement "
        f"{qat['export']['top1_agreement']:.2f}, max |dlogit| {qat['int8_weights_vs_keras']['max_abs_error']:.3f} "
        f"with INT8 weights ({qat['export']['max_abs_error']:.3f} before packing)"
    )
    assert float_acc >= 0.98  # trained to convergence ...
    assert abs(tuned_acc - float_acc) <= 2 * ONE_IMAGE  # ... so the extra epochs alone change nothing
    assert ptq_acc >= float_acc - 2 * ONE_IMAGE, f"PTQ {ptq_acc:.4f} vs float {float_acc:.4f}"
    assert tuned_ptq_acc >= tuned_acc - 2 * ONE_IMAGE
    assert qat_acc >= ptq_acc - 2 * ONE_IMAGE, f"QAT {qat_acc:.4f} < PTQ {ptq_acc:.4f}"


def test_exported_onnx_matches_the_keras_qat_model_on_held_out_data(keras_digits, tmp_path):
    import tensorflow as tf
    import tf2onnx
    from edgeplug.runtime import session
    from edgeplug_quantize import qat
    from edgeplug_quantize.int8_weights import pack_qat_weights

    paths = keras_digits
    ctx = make_ctx(
        edgeplug.Model.load(DIGITS_TEST.parent / "digits_cnn.onnx"), None, workdir=tmp_path, qat_epochs=1
    )
    ctx.data_path = str(paths["train"])
    trained = qat.fine_tune(paths["model"], ctx)
    proto = qat.export(trained.model, trained.data, tf, tf2onnx)
    with np.load(paths["test"]) as npz:
        inputs = npz["input"]
    keras_out = trained.model.predict(inputs, verbose=0)
    packed, names = pack_qat_weights(proto)
    assert len(names) == 3
    errors = []
    for candidate in (proto, packed):
        onnx_out = session(candidate.SerializeToString()).run(None, {"input": inputs})[0]
        assert np.mean(keras_out.argmax(1) == onnx_out.argmax(1)) >= 0.99
        errors.append(float(np.abs(keras_out - onnx_out).max()))
    scale = float(np.abs(keras_out).max())
    assert errors[1] < 0.05 * scale, errors  # INT8 weights with tfmot's per-channel scales: close to Keras
    assert errors[1] <= errors[0], errors  # closer than the float export onnxruntime re-quantizes per tensor


def test_qat_needs_labelled_npz(keras_digits, tmp_path):
    paths = keras_digits
    unlabeled = tmp_path / "x.npz"
    np.savez(unlabeled, input=np.zeros((4, 8, 8, 1), np.float32))
    result = run_cli(
        "run", paths["model"], "--plugins", "quant", "--data", unlabeled, "--output-dir", tmp_path / "o"
    )
    assert result.exit_code == 2
    assert "labels" in result.output
    nchw = run_cli(
        "run", paths["model"], "--plugins", "quant", "--data", DIGITS_TRAIN, "--output-dir", tmp_path / "p"
    )
    assert nchw.exit_code == 2
    assert "channels-last" in nchw.output


def test_keras3_models_are_refused_with_a_sentence(tmp_path):
    keras3 = pytest.importorskip("keras")
    if not keras3.__version__.startswith("3"):
        pytest.skip("Keras 3 is not installed")
    model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])
    path = tmp_path / "k3.keras"
    model.save(path)
    result = run_cli(
        "run", path, "--plugins", "quant", "--data", DIGITS_TRAIN, "--output-dir", tmp_path / "o"
    )
    assert result.exit_code == 2, result.output
    assert "Keras 3" in result.output and "tf_keras" in result.output


def test_keras_files_are_left_alone_when_quant_is_not_selected(tmp_path):
    from edgeplug_quantize import plugin

    ctx = make_ctx(edgeplug.Model.load(DIGITS_TEST.parent / "digits_cnn.onnx"), None, workdir=tmp_path)
    assert plugin.load_model(DIGITS_TEST.parent / "digits_cnn.onnx", ctx) is None  # not a Keras file


def test_missing_tensorflow_names_the_extra(monkeypatch, tmp_path):
    from edgeplug_quantize import qat

    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgeplug-quantize\[keras\]'"):
        qat._imports()


def test_keras3_detection_reads_the_saved_version(tmp_path):
    import zipfile

    from edgeplug_quantize.qat import refuse_keras3, saved_keras_version

    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
    assert saved_keras_version(path) == "3.15.1"
    with pytest.raises(ModelError, match=r"Keras 3\.15\.1"):
        refuse_keras3(path)
    with pytest.raises(DataError):
        from edgeplug_quantize.qat import read_training_data

        ctx = make_ctx(edgeplug.Model.load(DIGITS_TEST.parent / "digits_cnn.onnx"), None, workdir=tmp_path)
        ctx.data_path = None
        read_training_data(ctx, object())
