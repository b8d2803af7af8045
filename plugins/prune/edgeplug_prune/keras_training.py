"""Training-time pruning of tf_keras (Keras 2) models with tensorflow-model-optimization, exported with tf2onnx.

prune_low_magnitude wraps the prunable layers, a PolynomialDecay schedule raises their sparsity from 0
to the target while the model fine-tunes on the user's labelled data, strip_pruning removes the
wrappers, and tf2onnx turns the result into the ONNX model the rest of the chain works on.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from edgeplug import DataError, MissingDependencyError, Model, ModelError, PluginError, RunContext
from edgeplug.plugin_api import set_metadata

from .settings import DEFAULT_SPARSITY, PruneSettings

INSTALL = "pip install 'edgeplug-prune[keras]'"
OPSET = 17
TRAINED_KEY = "edgeplug.prune.trained_sparsity"
TRAINED_STEP = "prune:tfmot"


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
            f"training-time pruning of Keras models needs tensorflow, tf-keras, tensorflow-model-optimization "
            f"and tf2onnx ({exc.name} is missing): {INSTALL}"
        ) from None
    return tf, tf_keras, tfmot, tf2onnx


def keras3_file(path: Path) -> bool:
    """True for a `.keras` archive written by Keras 3 (tf_keras and tfmot cannot read or prune it)."""
    if path.suffix.lower() != ".keras" or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        if "metadata.json" not in archive.namelist():
            return False
        meta = json.loads(archive.read("metadata.json"))
    return str(meta.get("keras_version", "")).startswith("3")


def training_data(ctx: RunContext) -> tuple[str, np.ndarray, np.ndarray]:
    """(input name, inputs, labels) from --data, which must be a .npz with one input array and `labels`."""
    if not ctx.data_path or not str(ctx.data_path).endswith(".npz") or not Path(ctx.data_path).is_file():
        raise DataError(
            "prune: training-time pruning of a Keras model needs labelled training data: "
            "--data FILE.npz with the input array and `labels`"
        )
    with np.load(ctx.data_path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    labels = arrays.pop("labels", None)
    if labels is None or len(arrays) != 1:
        raise DataError(
            f"prune: {ctx.data_path} must hold exactly one input array and `labels` "
            f"(found {', '.join(sorted(npz.files))})"
        )
    name, inputs = next(iter(arrays.items()))
    if len(inputs) != len(labels):
        raise DataError(f"prune: {ctx.data_path} has {len(inputs)} inputs but {len(labels)} labels")
    return name, inputs.astype(np.float32), labels


def prune_keras(path: Path, ctx: RunContext, cfg: PruneSettings) -> Model:
    """Fine-tune with magnitude pruning to the target sparsity, strip the wrappers, export to ONNX."""
    if keras3_file(path):
        raise PluginError(
            f"{path} was saved by Keras 3; tfmot prunes tf_keras (Keras 2) models only: load and re-save it "
            "with tf_keras, or export it to ONNX and prune that (prune.mode=unstructured|nm|structured)"
        )
    if cfg.mode != "unstructured":
        raise PluginError(
            "prune: Keras models are pruned with tfmot, which is unstructured; use "
            "prune.mode=unstructured (export to ONNX first for nm or structured pruning)"
        )
    name, x, y = training_data(ctx)
    tf, tf_keras, tfmot, tf2onnx = _imports()
    try:
        model = tf_keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # Keras raises many types for unreadable files
        raise ModelError(
            f"tf_keras cannot load {path} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "Keras 3 models must be re-saved with tf_keras"
        ) from None
    sparsity = DEFAULT_SPARSITY if cfg.sparsity is None else cfg.sparsity
    tf_keras.utils.set_random_seed(ctx.seed)
    steps = math.ceil(len(x) / cfg.batch_size) * cfg.epochs
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=sparsity,
        begin_step=0,
        end_step=max(1, int(steps * 0.75)),
        frequency=1,
    )
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    logits = _outputs_logits(model)
    integer_labels = y.dtype.kind in "iu" and y.ndim == 1
    loss = (
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=logits)
        if integer_labels
        else tf_keras.losses.MeanSquaredError()
    )
    pruned.compile(
        optimizer=tf_keras.optimizers.Adam(1e-3), loss=loss, metrics=["accuracy"] if integer_labels else []
    )
    ctx.log(f"fine-tuning {path.name} for {cfg.epochs} epochs while pruning to {sparsity:.0%} (tfmot)")
    history = pruned.fit(
        x,
        y,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        verbose=0,
        shuffle=True,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    layers = _kernel_sparsity(stripped)
    signature = (tf.TensorSpec((None, *x.shape[1:]), tf.float32, name=name),)
    proto, _ = tf2onnx.convert.from_keras(stripped, input_signature=signature, opset=OPSET)
    set_metadata(proto, TRAINED_KEY, f"{sparsity:g}")
    ctx.record(
        "training",
        {
            "framework": f"tf_keras {tf_keras.__version__}, tfmot {tfmot.__version__}, tf2onnx {tf2onnx.__version__}",
            "schedule": {
                "type": "PolynomialDecay",
                "initial_sparsity": 0.0,
                "final_sparsity": sparsity,
                "end_step": max(1, int(steps * 0.75)),
                "steps": steps,
            },
            "epochs": cfg.epochs,
            "final_loss": float(history.history["loss"][-1]),
            "final_accuracy": float(history.history["accuracy"][-1])
            if "accuracy" in history.history
            else None,
            "layers": layers,
        },
    )
    with tempfile.TemporaryDirectory(prefix="edgeplug-prune-") as tmp:
        onnx_path = Path(tmp) / f"{path.stem}.onnx"
        onnx_path.write_bytes(proto.SerializeToString())
        loaded = Model.load(onnx_path)
    return Model(loaded.proto, (TRAINED_STEP,), source=path)


def _outputs_logits(model: Any) -> bool:
    """False when the last layer ends in a softmax (the loss then takes probabilities)."""
    activation = getattr(model.layers[-1], "activation", None)
    return getattr(activation, "__name__", "") != "softmax"


def _kernel_sparsity(model: Any) -> list[dict[str, Any]]:
    rows = []
    for layer in model.layers:
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            continue
        values = kernel.numpy()
        rows.append(
            {
                "layer": layer.name,
                "parameters": int(values.size),
                "sparsity": round(1.0 - np.count_nonzero(values) / values.size, 6),
            }
        )
    return rows
