"""torch -> ONNX export (legacy TorchScript exporter, opset 17) and the check that ONNX computes what torch does."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ZooError

OPSET = 17


def export(
    module: Any,
    args: tuple[Any, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    keep_batchnorm: bool,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Export an eval-mode module with a dynamic first axis.

    keep_batchnorm=True keeps every BatchNormalization node (TrainingMode.PRESERVE, no constant folding):
    the model a `fuse` step starts from. False is the ordinary eval export, which folds BN into the convs.
    """
    import onnx
    import torch

    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*[Cc]onverting a tensor to a Python.*")
        warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={name: {0: "batch"} for name in (*input_names, *output_names)},
            training=torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL,
            do_constant_folding=not keep_batchnorm,
        )
    model = onnx.load(str(path))
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def op_count(path: Path, op_type: str) -> int:
    import onnx

    return sum(node.op_type == op_type for node in onnx.load(str(path)).graph.node)


def session(path: Path, threads: int = 0) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_batched(path: Path, feeds: Mapping[str, np.ndarray], batch: int = 32) -> np.ndarray:
    """The model's first output on `feeds`, run `batch` samples at a time and concatenated."""
    sess = session(path)
    count = len(next(iter(feeds.values())))
    parts = [
        sess.run(None, {k: v[i : i + batch] for k, v in feeds.items()})[0] for i in range(0, count, batch)
    ]
    return np.concatenate(parts)


def check_close(name: str, onnx_out: np.ndarray, torch_out: np.ndarray, atol: float = 1e-4) -> float:
    """Max |onnx - torch|; ZooError when some element differs by more than atol + 1e-4 * |torch|."""
    diff = np.abs(onnx_out.astype(np.float64) - torch_out.astype(np.float64))
    worst = float(diff.max())
    if not np.all(diff <= atol + 1e-4 * np.abs(torch_out)):
        raise ZooError(f"{name}: onnxruntime differs from torch by up to {worst:.3g} (allowed {atol:g})")
    return worst
