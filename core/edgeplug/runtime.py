"""onnxruntime sessions: the default way edgeplug runs a model."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .errors import EdgeplugError
from .metrics import Ragged

PROVIDER = "CPUExecutionProvider"
ort.set_default_logger_severity(3)  # errors reach the user as one line; onnxruntime's own log stays quiet


def session(
    model: str | os.PathLike[str] | bytes,
    threads: int = 1,
    optimize: bool = True,
    qdq_as_float: bool = False,
) -> ort.InferenceSession:
    """A CPU session with fixed intra-op threads; `optimize=False` keeps every node (for intermediate
    outputs); `qdq_as_float` runs QuantizeLinear/DequantizeLinear as separate float operators instead of
    onnxruntime's int8 kernels, which computes what an engine with exact int8 arithmetic computes (the
    x86 kernels without VNNI saturate 16-bit pair sums of u8*s8 products)."""
    opts = ort.SessionOptions()
    if qdq_as_float:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model if isinstance(model, bytes) else str(Path(model))
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=[PROVIDER])
    except Exception as exc:
        raise EdgeplugError(
            f"onnxruntime cannot load the model: {str(exc).strip().splitlines()[0]}"
        ) from None


def run_all(sess: ort.InferenceSession, samples: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Run every sample through an onnxruntime session and concatenate each output along the batch axis
    (a Ragged list of the per-sample arrays where their shapes differ)."""
    names = [o.name for o in sess.get_outputs()]

    def run(sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return dict(zip(names, sess.run(names, sample)))
        except Exception as exc:
            raise EdgeplugError(
                f"onnxruntime failed to run the model: {str(exc).strip().splitlines()[0]}"
            ) from None

    return run_each(run, samples)


def run_each(
    runner: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
    samples: Sequence[dict[str, np.ndarray]],
) -> dict[str, Any]:
    """Call `runner` (a session, or a compiled artifact's runner) on each sample; concatenate the outputs."""
    collected: dict[str, list[np.ndarray]] = {}
    for sample in samples:
        for name, value in runner(sample).items():
            collected.setdefault(name, []).append(np.asarray(value))
    return {n: stack(v) for n, v in collected.items()}


def stack(parts: list[np.ndarray]) -> Any:
    """Per-sample arrays into one along the batch axis; a Ragged list when their shapes cannot be joined."""
    if not parts:
        return np.empty(0)
    if len({p.shape[1:] if p.ndim else () for p in parts}) != 1 or len({p.ndim for p in parts}) != 1:
        return Ragged(parts)
    if parts[0].ndim == 0:
        return np.stack(parts)
    return np.concatenate(parts, axis=0)
