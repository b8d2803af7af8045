"""Quantization-aware training of tf_keras (Keras 2) models with tensorflow-model-optimization, exported
to ONNX (QDQ) with tf2onnx. TensorFlow is the optional extra `edgeplug-quantize[keras]`, imported lazily."""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from edgeplug.plugin_api import (
    DataError,
    MissingDependencyError,
    Model,
    ModelError,
    PluginError,
    RunContext,
    session,
    set_metadata,
)

from .int8_weights import pack_qat_weights

EXTRA = "pip install 'edgeplug-quantize[keras]'"
EXPORT_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear


@dataclass
class TrainingData:
    name: str
    inputs: np.ndarray
    labels: np.ndarray


def _imports() -> tuple[Any, Any, Any, Any]:
    """tensorflow, tf_keras, tfmot and tf2onnx, or a MissingDependencyError naming the extra."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        import tensorflow_model_optimization as tfmot
        import tf2onnx
        import tf_keras
    except ImportError as exc:
        raise MissingDependencyError(
            f"quantization-aware training of Keras models needs tensorflow, tf-keras, "
            f"tensorflow-model-optimization and tf2onnx ({exc.name} is missing): {EXTRA}"
        ) from None
    return tf, tf_keras, tfmot, tf2onnx


def saved_keras_version(path: Path) -> str | None:
    """The Keras version that saved `path` (.keras zip, .h5 attribute), or None when unknown."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".keras" and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if "metadata.json" in archive.namelist():
                    return str(json.loads(archive.read("metadata.json")).get("keras_version") or "") or None
        elif suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as handle:
                value = handle.attrs.get("keras_version")
                return (
                    value.decode()
                    if isinstance(value, bytes)
                    else (str(value) if value is not None else None)
                )
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    return None


def refuse_keras3(path: Path) -> None:
    version = saved_keras_version(path)
    if version and version.startswith("3"):
        raise ModelError(
            f"{path} was saved by Keras {version}; tensorflow-model-optimization trains only tf_keras (Keras 2) "
            "models: rebuild and save it with `import tf_keras as keras` (or TF_USE_LEGACY_KERAS=1)"
        )
    if path.is_dir() and not (path / "keras_metadata.pb").exists():
        raise ModelError(
            f"{path} is a SavedModel without keras_metadata.pb (not saved by tf_keras' model.save; Keras 3's "
            "model.export() writes inference-only SavedModels); QAT needs a tf_keras model saved with model.save"
        )


def read_training_data(ctx: RunContext, model: Any) -> TrainingData:
    """The training inputs and labels from --data (a .npz with the input array and `labels`)."""
    if not ctx.data_path or ctx.data_path == "random":
        raise DataError(
            "quant: quantization-aware training needs labelled training data: "
            "pass --data TRAIN.npz holding the input array and 'labels'"
        )
    path = Path(ctx.data_path)
    if path.suffix != ".npz" or not path.is_file():
        raise DataError(f"quant: QAT reads its training data from a .npz file; {path} is not one")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"quant: cannot read {path}: {exc}") from None
    labels = arrays.pop("labels", None)
    if labels is None:
        raise DataError(f"quant: {path} holds no 'labels' array; QAT needs labels to fine-tune")
    if len(model.inputs) != 1:
        raise PluginError("quant: QAT supports single-input Keras models")
    wanted = model.inputs[0].name.split(":")[0]
    if len(arrays) == 1:
        name, inputs = next(iter(arrays.items()))
    elif wanted in arrays:
        name, inputs = wanted, arrays[wanted]
    else:
        raise DataError(
            f"quant: {path} holds {', '.join(arrays)}; name the input array {wanted!r} or keep one"
        )
    expected = tuple(model.inputs[0].shape)
    if inputs.ndim != len(expected) or any(
        e is not None and e != g for e, g in zip(expected[1:], inputs.shape[1:])
    ):
        raise DataError(
            f"quant: {path} input {name} has shape {list(inputs.shape)}, the Keras model expects "
            f"{['N' if d is None else d for d in expected]} (Keras is channels-last)"
        )
    if len(labels) != len(inputs):
        raise DataError(f"quant: {path} holds {len(inputs)} inputs but {len(labels)} labels")
    return TrainingData(name, inputs.astype(np.float32), labels)


def loss_for(model: Any, labels: np.ndarray, keras: Any) -> tuple[Any, list[str]]:
    """A loss matching the head: cross-entropy (from logits unless the last activation is softmax/sigmoid)."""
    activation = getattr(getattr(model.layers[-1], "activation", None), "__name__", "linear")
    width = int(model.outputs[0].shape[-1] or 1)
    if labels.dtype.kind in "iub" and labels.ndim == 1 and width > 1:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=activation != "softmax"), ["accuracy"]
    if labels.ndim == 2 and labels.shape[1] == width and width > 1 and np.allclose(labels.sum(1), 1):
        return keras.losses.CategoricalCrossentropy(from_logits=activation != "softmax"), ["accuracy"]
    if width == 1 and set(np.unique(labels)) <= {0, 1}:
        return keras.losses.BinaryCrossentropy(from_logits=activation != "sigmoid"), ["accuracy"]
    return keras.losses.MeanSquaredError(), []


@dataclass
class Trained:
    model: Any  # the tfmot-quantized tf_keras model after fine-tuning
    data: TrainingData
    history: dict[str, list[float]]
    epochs: int


def fine_tune(path: Path, ctx: RunContext) -> Trained:
    """Load the tf_keras model, wrap it with tfmot's quantize_model and fine-tune it on --data."""
    tf, keras, tfmot, _ = _imports()
    refuse_keras3(path)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, ctx.threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TensorFlow already initialised in this process
    try:
        model = keras.models.load_model(str(path), compile=False)
    except Exception as exc:
        raise ModelError(
            f"{path} cannot be loaded by tf_keras: {type(exc).__name__}: {_first(exc)}"
        ) from None
    data = read_training_data(ctx, model)
    keras.utils.set_random_seed(ctx.seed)
    try:
        qat_model = tfmot.quantization.keras.quantize_model(model)
    except Exception as exc:
        raise PluginError(
            f"quant: tensorflow-model-optimization cannot quantize this model ({_first(exc)}); tfmot supports "
            "Sequential/functional models of built-in layers, and Conv2D -> BatchNormalization -> ReLU (not a Conv2D "
            "with a fused activation followed by BatchNormalization)"
        ) from None
    loss, metrics = loss_for(model, data.labels, keras)
    epochs, batch = ctx.options["qat_epochs"], ctx.options["qat_batch_size"]  # checked >= 1 by load_model
    qat_model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=metrics)
    ctx.log(
        f"quantization-aware training: {epochs} epoch(s) on {len(data.inputs)} samples of {ctx.data_path}"
    )
    history = qat_model.fit(
        data.inputs, data.labels, epochs=epochs, batch_size=batch, shuffle=True, verbose=0
    )
    return Trained(qat_model, data, dict(history.history), epochs)


def train_and_export(path: Path, ctx: RunContext) -> Model:
    """QAT with tfmot, then export to ONNX with tf2onnx, checked against the Keras model."""
    tf, _, _, tf2onnx = _imports()
    trained = fine_tune(path, ctx)
    proto = export(trained.model, trained.data, tf, tf2onnx)
    sample = trained.data.inputs[: min(256, len(trained.data.inputs))]
    check = compare_export(trained.model, proto, sample)
    packed = compare_export(trained.model, pack_qat_weights(proto)[0], sample)
    ctx.record(
        "qat",
        {
            "source": str(path),
            "epochs": trained.epochs,
            "samples": len(trained.data.inputs),
            "loss": [round(float(v), 6) for v in trained.history.get("loss", [])],
            "accuracy": [round(float(v), 6) for v in trained.history.get("accuracy", [])],
            "export": {"tool": f"tf2onnx {tf2onnx.__version__}", "opset": EXPORT_OPSET, **check},
            "int8_weights_vs_keras": packed,
        },
    )
    ctx.log(
        f"exported to ONNX with tf2onnx: cosine {check['cosine']:.6f} and max abs error "
        f"{check['max_abs_error']:.3g} against the Keras QAT model ({packed['max_abs_error']:.3g} once its "
        "weights are stored as INT8 by the quant step)"
    )
    if check["cosine"] < 0.99:
        raise PluginError(
            f"quant: the tf2onnx export differs from the Keras QAT model (cosine {check['cosine']:.4f})"
        )
    set_metadata(proto, "edgeplug.quant.qat", json.dumps({"epochs": trained.epochs, "source": path.name}))
    loaded = Model(proto, source=path)
    loaded.check()
    return loaded.infer_shapes()


def export(model: Any, data: TrainingData, tf: Any, tf2onnx: Any) -> onnx.ModelProto:
    spec = (tf.TensorSpec((None, *data.inputs.shape[1:]), tf.float32, name=data.name),)
    try:
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=EXPORT_OPSET)
    except Exception as exc:
        raise PluginError(
            f"quant: tf2onnx could not export the QAT model: {type(exc).__name__}: {_first(exc)}"
        ) from None
    return proto


def compare_export(model: Any, proto: onnx.ModelProto, inputs: np.ndarray) -> dict[str, float]:
    """How closely the exported ONNX model reproduces the Keras QAT model."""
    sess = session(proto.SerializeToString())
    got = np.asarray(sess.run(None, {sess.get_inputs()[0].name: inputs})[0], dtype=np.float64)
    ref = np.asarray(model.predict(inputs, verbose=0), dtype=np.float64)
    diff = np.abs(got - ref)
    cos = float(np.dot(got.ravel(), ref.ravel()) / (np.linalg.norm(got) * np.linalg.norm(ref) + 1e-12))
    agree = float(np.mean(got.argmax(-1) == ref.argmax(-1))) if ref.ndim == 2 and ref.shape[1] > 1 else None
    result = {"cosine": cos, "max_abs_error": float(diff.max()), "samples": len(inputs)}
    if agree is not None:
        result["top1_agreement"] = agree
    return result


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
