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
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import EdgeplugError

PARENT_ENV = "EDGEPLUG_BENCH_PARENT"  # set for the measuring child: the pid it must not outlive


def measure(
    model_path: Path,
    threads: int = 1,
    runs: int = 50,
    warmup: int = 5,
    inputs: dict[str, np.ndarray] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Measure one model in a child process so that its memory and threads are its own. The child dies
    with this process (a killed `edgeplug bench` leaves nothing measuring), and with `timeout` (seconds)
    a model that does not finish is stopped with an EdgeplugError."""
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
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), **{PARENT_ENV: str(os.getpid())})
        with open(Path(tmp) / "out", "w+") as out, open(Path(tmp) / "err", "w+") as err:
            code = _run_child(cmd, env, out, err, timeout, model_path)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read(), err.read()
    if code != 0:
        raise EdgeplugError(f"benchmark of {model_path} failed: {stderr.strip().splitlines()[-1:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def _run_child(
    cmd: list[str], env: dict[str, str], out: IO[str], err: IO[str], timeout: float | None, model: Path
) -> int:
    """Run the measuring child; its stdin is a pipe this process holds open, so the child sees EOF (and
    exits) when this process dies however it dies; it is killed on any exception here."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, env=env)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EdgeplugError(
            f"benchmark of {model} did not finish within {timeout:g} s; the model may never end on these "
            "inputs (raise the timeout, or pass --inputs)"
        ) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()


def die_with_parent() -> None:
    """In the measuring child: exit when the parent that started it exits, killed or not (Linux:
    PR_SET_PDEATHSIG; everywhere: EOF on the stdin pipe the parent holds)."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if str(os.getppid()) != parent:  # the parent died before the line above
        os._exit(1)

    def watch() -> None:
        try:  # the raw descriptor: a daemon thread blocked in a buffered read would break shutdown
            while os.read(0, 1 << 12):
                pass
        except OSError:
            pass
        os._exit(1)

    threading.Thread(target=watch, name="edgeplug-bench-parent", daemon=True).start()


def compare(
    paths: Sequence[Path],
    threads: int = 1,
    runs: int = 50,
    warmup: int = 5,
    progress: bool = True,
    inputs: dict[str, np.ndarray] | None = None,
    timeout: float | None = None,
    rounds: int = 3,
    labels: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Measure several models alternated, `rounds` times each (model A, B, A, B, ...: each in a fresh
    process), so a slow spell of the machine hits every model alike. A row's p50 is the median of its
    rounds' p50s, `spread` the range of those; ratios are against the first model. Each row is labelled by
    its path relative to the models' common folder (or by `labels`)."""
    from .model import file_size
    from .progress import progress as bar

    paths = [Path(p) for p in paths]
    names = list(labels) if labels else relative_labels(paths)
    results: list[list[dict[str, Any]]] = [[] for _ in paths]
    plan = [(r, i) for r in range(rounds) for i in range(len(paths))]
    for _, index in bar(plan, f"benchmark ({rounds} rounds x {len(paths)} models)", quiet=not progress):
        results[index].append(measure(paths[index], threads, runs, warmup, inputs=inputs, timeout=timeout))
    rows = []
    for path, name, measured in zip(paths, names, results):
        p50s = [m["p50_ms"] for m in measured]
        rows.append(
            {
                "model": str(path),
                "label": name,
                "p50_ms": float(np.median(p50s)),
                "p90_ms": float(np.median([m["p90_ms"] for m in measured])),
                "spread_ms": float(max(p50s) - min(p50s)),
                "rounds": [round(v, 6) for v in p50s],
                "memory_bytes": int(np.median([m["memory_bytes"] for m in measured])),
                "size_bytes": file_size(path),
                "runs": runs,
                "threads": threads,
            }
        )
    base = rows[0]
    for row in rows:
        row["speedup_p50"] = base["p50_ms"] / row["p50_ms"] if row["p50_ms"] else None
        row["memory_ratio"] = base["memory_bytes"] / row["memory_bytes"] if row["memory_bytes"] > 0 else None
        row["size_ratio"] = base["size_bytes"] / row["size_bytes"] if row["size_bytes"] else None
        difference = abs(row["p50_ms"] - base["p50_ms"])
        row["within_spread"] = row is not base and difference <= max(row["spread_ms"], base["spread_ms"])
    return rows


def relative_labels(paths: Sequence[Path]) -> list[str]:
    """Each path relative to the paths' common folder (distinct labels for same-named files)."""
    resolved = [p.resolve() for p in paths]
    try:
        common = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    except ValueError:
        return [str(p) for p in paths]
    labels = [str(p.relative_to(common)) for p in resolved]
    return labels if len(set(labels)) == len(labels) else [str(p) for p in paths]


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
    die_with_parent()

    import onnxruntime as ort

    from .generated_inputs import generate_inputs
    from .model import Model

    if args.inputs:
        with np.load(args.inputs) as npz:
            feed = {k: npz[k] for k in npz.files}
    else:
        # the spec is read without loading weights into this process, so they do not count
        import onnx

        proto = onnx.load(args.model, load_external_data=False)
        feed = generate_inputs(Model(proto).infer_shapes(), 1, seed=0)[0]
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
