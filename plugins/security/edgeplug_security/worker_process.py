"""The code that runs inside the isolated inference worker, started by sandbox.py as `python -I -B -c
BOOTSTRAP ROOT FD MODEL SHA256 MEMORY_MB THREADS EXTERNAL EXTERNAL_SHA256`, FD being its end of a
multiprocessing Pipe and EXTERNAL_SHA256 a JSON object {external data file: sha256} of the files checked
by the guard.

Only numpy and onnxruntime are imported here, so the worker starts fast. Protocol over a Pipe:
parent -> ("run", inputs, cpu_seconds) | None (exit); worker -> ("ready", info) | ("ok", outputs) |
("error", kind, text) with kind in "oom", "model", "run". Before each request the worker moves its
RLIMIT_CPU soft limit to what it has used plus `cpu_seconds`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import sys
from multiprocessing.connection import Connection
from typing import Any

OOM_MARKERS = ("bad_alloc", "failed to allocate", "out of memory", "cannot allocate", "memoryerror")


def serve(
    conn: Connection,
    model_path: str,
    sha256: str | None,
    memory_mb: int,
    threads: int,
    external: bool,
    external_sha256: dict[str, str] | None = None,
) -> None:
    """Load the model under an address-space limit, then answer run requests until told to stop.

    The model is read once, checked against `sha256`, and the session is built from those very bytes (no
    window to swap the file); a model with external data is loaded from its path instead, after its
    external data files are hashed again against `external_sha256`."""
    import onnxruntime as ort

    if memory_mb > 0:
        limit = memory_mb * 2**20
        baseline = _vm_size()
        if baseline >= limit:
            conn.send(
                (
                    "error",
                    "oom",
                    f"memory_mb={memory_mb} is below what the runtime alone needs "
                    f"({baseline // 2**20} MiB of address space)",
                )
            )
            return
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        with open(model_path, "rb") as fh:
            data = fh.read()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            conn.send(("error", "model", f"{model_path} changed on disk after it was checked"))
            return
        changed = changed_external_data(model_path, external_sha256 or {})
        if changed:
            conn.send(
                (
                    "error",
                    "model",
                    f"external data file {changed} of {model_path} changed on disk after it was checked",
                )
            )
            return
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if external:
            sess = ort.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])
        else:
            sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        del data
    except BaseException as exc:
        conn.send(("error", _kind(exc, "model"), _first_line(exc)))
        return
    names = [o.name for o in sess.get_outputs()]
    batch_one = any(i.shape and i.shape[0] == 1 for i in sess.get_inputs())
    conn.send(("ready", {"vm_mib": _vm_size() // 2**20, "sys_path": list(sys.path), "cwd": os.getcwd()}))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        _, feed, cpu_seconds = message
        try:
            _allow_cpu(cpu_seconds)
            conn.send(("ok", run_session(sess, names, feed, batch_one)))
        except BaseException as exc:
            conn.send(("error", _kind(exc, "run"), _first_line(exc)))


def changed_external_data(model_path: str | os.PathLike[str], expected: dict[str, str]) -> str | None:
    """The first external data file beside the model whose sha256 is no longer `expected[name]`, or None."""
    folder = os.path.dirname(os.fspath(model_path))
    for name, digest in sorted(expected.items()):
        sha = hashlib.sha256()
        try:
            with open(os.path.join(folder, name), "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    sha.update(block)
        except OSError:
            return name
        if sha.hexdigest() != digest:
            return name
    return None


def run_session(sess: Any, names: list[str], feed: dict[str, Any], batch_one: bool) -> dict[str, Any]:
    """Run like the core's runner: one sample at a time when the model fixes its batch to 1."""
    import numpy as np

    samples = [feed]
    if batch_one:
        count = len(next(iter(feed.values())))
        samples = [{k: v[i : i + 1] for k, v in feed.items()} for i in range(count)]
    collected: dict[str, list[Any]] = {n: [] for n in names}
    for sample in samples:
        for name, value in zip(names, sess.run(names, sample)):
            collected[name].append(np.asarray(value))
    return {n: np.concatenate(v, axis=0) if v[0].ndim else np.stack(v) for n, v in collected.items()}


def _kind(exc: BaseException, default: str) -> str:
    text = f"{type(exc).__name__} {exc}".lower()
    return "oom" if isinstance(exc, MemoryError) or any(m in text for m in OOM_MARKERS) else default


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    # onnxruntime: "[ONNXRuntimeError] : 1 : FAIL : ... Status Message: /src/x.cc:360 void* f(...) What happened"
    text = re.sub(r"^.*Status Message: ", "", text)
    text = re.sub(r"^\S+\.(cc|h|cpp):\d+ .*?\) ", "", text)
    return text or type(exc).__name__


def _vm_size() -> int:
    """This process's virtual memory size in bytes (what RLIMIT_AS limits)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _allow_cpu(seconds: int) -> None:
    """RLIMIT_CPU soft limit: the CPU time used so far plus `seconds` (SIGXCPU past it)."""
    used = sum(os.times()[:2])
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(used) + 1 + int(seconds)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def main(argv: list[str]) -> None:
    fd, model_path, sha256, memory_mb, threads, external, external_sha256 = argv
    serve(
        Connection(int(fd)),
        model_path,
        sha256 or None,
        int(memory_mb),
        int(threads),
        external == "1",
        json.loads(external_sha256),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
