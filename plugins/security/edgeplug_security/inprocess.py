"""In-process execution from the verified bytes (isolate=false): the session is built from the very bytes
whose sha256 was checked, so a file swapped after the check is never run; one session per model and
thread count, reused across requests."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from edgeplug import GuardRefusal

from .worker_process import changed_external_data, run_session

_sessions: dict[tuple[str, str, int, tuple[tuple[str, str], ...]], tuple[Any, list[str], bool]] = {}
_lock = threading.Lock()


def runner(
    path: Path,
    sha256: str,
    threads: int,
    external: bool,
    external_sha256: tuple[tuple[str, str], ...] = (),
) -> Callable[[dict[str, np.ndarray]], Any]:
    """A replacement for `request.run` executing in this process on a session of the verified model."""
    key = (str(Path(path).resolve()), sha256, int(threads), tuple(external_sha256))
    with _lock:
        entry = _sessions.get(key)
        if entry is None:
            entry = _sessions[key] = _load(Path(path), sha256, int(threads), external, dict(external_sha256))
    sess, names, batch_one = entry

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return run_session(sess, names, feed, batch_one)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            lines = str(exc).strip().splitlines()
            raise GuardRefusal(f"onnxruntime failed to run the model: {lines[0] if lines else exc}") from None

    return run


def _load(
    path: Path, sha256: str, threads: int, external: bool, external_sha256: dict[str, str]
) -> tuple[Any, list[str], bool]:
    import onnxruntime as ort

    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise GuardRefusal(f"model {path} changed on disk after it was checked: tampered or replaced")
    changed = changed_external_data(path, external_sha256)
    if changed:
        raise GuardRefusal(
            f"external data file {changed} of model {path} changed on disk after it was checked"
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        source: Any = str(path) if external else data
        sess = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        raise GuardRefusal(f"onnxruntime cannot load model {path}: {lines[0] if lines else exc}") from None
    names = [o.name for o in sess.get_outputs()]
    batch_one = any(i.shape and i.shape[0] == 1 for i in sess.get_inputs())
    return sess, names, batch_one
