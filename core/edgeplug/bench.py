"""Latency and memory of ONNX models with onnxruntime, each measured in a fresh process.

`python -m edgeplug.bench MODEL --threads N --runs N [--inputs X.npz]` prints one JSON object:
p50/p90/mean latency in ms, and the resident memory the model costs the process (after loading it
and one run, minus the resident memory before loading).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EdgeplugError


def measure(
    model_path: Path,
    threads: int = 1,
    runs: int = 50,
    warmup: int = 5,
    inputs: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Measure one model in a child process so that its memory and threads are its own."""
    with tempfile.TemporaryDirectory(prefix="edgeplug-bench-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "edgeplug.bench",
            str(model_path),
            "--threads",
            str(threads),
            "--runs",
            str(runs),
            "--warmup",
            str(warmup),
        ]
        if inputs is not None:
            npz = Path(tmp) / "inputs.npz"
            np.savez(npz, **inputs)
            cmd += ["--inputs", str(npz)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise EdgeplugError(f"benchmark of {model_path} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(
    paths: Sequence[Path],
    threads: int = 1,
    runs: int = 50,
    warmup: int = 5,
    progress: bool = True,
    inputs: dict[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Measure several models one after the other; ratios are against the first."""
    from .progress import progress as bar

    rows = []
    for path in bar(paths, "benchmark", quiet=not progress):
        result = measure(Path(path), threads, runs, warmup, inputs=inputs)
        result["model"] = str(path)
        result["size_bytes"] = Path(path).stat().st_size
        rows.append(result)
    base = rows[0]
    for row in rows:
        row["speedup_p50"] = base["p50_ms"] / row["p50_ms"] if row["p50_ms"] else None
        row["memory_ratio"] = base["memory_bytes"] / row["memory_bytes"] if row["memory_bytes"] > 0 else None
        row["size_ratio"] = base["size_bytes"] / row["size_bytes"]
    return rows


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _worker(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m edgeplug.bench")
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--inputs")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from .data import generate_inputs
    from .model import Model

    if args.inputs:
        with np.load(args.inputs) as npz:
            feed = {k: npz[k] for k in npz.files}
    else:
        # the spec is read without loading weights into this process, so they do not count
        import onnx

        proto = onnx.load(args.model, load_external_data=False)
        feed = generate_inputs(Model(proto), 1, seed=0)[0]
        del proto
    import gc

    gc.collect()
    before = _rss()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(args.model, sess_options=opts, providers=["CPUExecutionProvider"])
    sess.run(None, feed)
    after = _rss()
    for _ in range(args.warmup):
        sess.run(None, feed)
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - start) * 1000)
    arr = np.array(times)
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p90_ms": float(np.percentile(arr, 90)),
        "mean_ms": float(arr.mean()),
        "runs": args.runs,
        "threads": args.threads,
        "memory_bytes": int(after - before),
    }


if __name__ == "__main__":
    print(json.dumps(_worker()))
