"""Isolated execution: a persistent worker process per model, with a wall-clock timeout per request and an
address-space limit (RLIMIT_AS). A hang is killed, a crash or OOM is reported, and the next request gets a
fresh worker; the caller never goes down with the model."""

from __future__ import annotations

import atexit
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from edgeplug import GuardRefusal

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
MAX_WORKERS = 4  # persistent workers kept alive (least recently used ones are closed)
STARTUP_S = 120.0  # time allowed for a worker to import onnxruntime and load its model


@dataclass(frozen=True)
class WorkerKey:
    path: str
    sha256: str
    memory_mb: int
    threads: int
    external: bool
    external_sha256: tuple[tuple[str, str], ...] = ()  # external data files and their verified sha256


class Worker:
    """One worker process serving one model. Not thread-safe by itself: the pool holds a lock per worker.

    Started as `python -m edgeplug_security.worker_process` (a fresh interpreter, as multiprocessing's
    'spawn' does) talking over a multiprocessing Pipe, but without re-importing the caller's __main__, so
    `edgeplug.infer` also works from scripts that lack an `if __name__ == "__main__"` guard."""

    def __init__(self, key: WorkerKey) -> None:
        self.key = key
        self.lock = threading.Lock()
        self.conn, child = multiprocessing.Pipe(duplex=True)
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker, closed in kill()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
        args = [
            sys.executable,
            "-m",
            "edgeplug_security.worker_process",
            str(child.fileno()),
            key.path,
            key.sha256,
            str(key.memory_mb),
            str(key.threads),
            "1" if key.external else "0",
            json.dumps(dict(key.external_sha256)),
        ]
        self.process = subprocess.Popen(
            args,
            pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            env=env,
        )
        child.close()
        self.info: dict[str, Any] = {}
        reply = self._receive(STARTUP_S, "starting")
        if reply[0] != "ready":
            self.kill()
            raise GuardRefusal(self._error_text(reply, "loading the model"))
        self.info = reply[1]

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def run(self, feed: dict[str, np.ndarray], timeout_s: float) -> dict[str, np.ndarray]:
        """Run one request; GuardRefusal on a timeout (worker killed), a death or an error in the worker."""
        try:
            self.conn.send(("run", feed))
        except (BrokenPipeError, OSError):
            raise GuardRefusal(self._died()) from None
        reply = self._receive(timeout_s, "running")
        if reply[0] == "ok":
            return reply[1]
        if reply[1] == "oom":
            self.kill()  # an allocation failure can leave the runtime in a bad state: start afresh
        raise GuardRefusal(self._error_text(reply, "running the model"))

    def _receive(self, timeout_s: float, doing: str) -> tuple[Any, ...]:
        ready = self.conn.poll(timeout_s)
        if not ready:
            self.kill()
            if doing == "starting":
                raise GuardRefusal(f"the inference worker did not start within {timeout_s:g}s; worker killed")
            raise GuardRefusal(f"inference timed out after {timeout_s:g}s; worker killed")
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            raise GuardRefusal(self._died()) from None

    def _died(self) -> str:
        """Reap a worker that closed its pipe, and say how it ended (read its stderr before closing it)."""
        text = self._death_text()
        self.kill()
        return text

    def _death_text(self) -> str:
        try:
            code = self.process.wait(2.0)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.returncode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            how = f"killed by {name}"
            if -code == signal.SIGKILL:
                how += " (the kernel's OOM killer or an external kill)"
        else:
            how = f"exited with code {code}"
            last = self._stderr_tail()
            if last:
                how += f": {last}"
        return f"the inference worker died ({how}); the next request gets a fresh worker"

    def _stderr_tail(self) -> str:
        try:
            self.stderr.seek(0)
            lines = self.stderr.read()[-4096:].decode(errors="replace").strip().splitlines()
        except (OSError, ValueError):
            return ""
        return lines[-1] if lines else ""

    def _error_text(self, reply: tuple[Any, ...], doing: str) -> str:
        _, kind, text = reply
        if kind == "oom":
            limit = f"memory_mb={self.key.memory_mb}" if self.key.memory_mb else "no limit set"
            return f"the inference worker ran out of memory ({limit}) {doing}: {text}; worker restarted"
        return f"the inference worker failed {doing}: {text}"

    def close(self) -> None:
        """Ask the worker to exit, then make sure it did."""
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send(None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(1.0)
        self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.conn.close()
        self.stderr.close()


class WorkerPool:
    """Workers by model and limits, reused across requests; a dead or killed worker is replaced on demand."""

    def __init__(self, size: int = MAX_WORKERS) -> None:
        self.size = size
        self.workers: OrderedDict[WorkerKey, Worker] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: WorkerKey) -> Worker:
        with self.lock:
            worker = self.workers.get(key)
            if worker is not None and worker.alive:
                self.workers.move_to_end(key)
                return worker
            if worker is not None:
                del self.workers[key]
            worker = Worker(key)
            self.workers[key] = worker
            while len(self.workers) > self.size:
                _, oldest = self.workers.popitem(last=False)
                oldest.close()
            return worker

    def run(self, key: WorkerKey, feed: dict[str, np.ndarray], timeout_s: float) -> dict[str, np.ndarray]:
        for _ in range(2):
            worker = self.get(key)
            with worker.lock:
                if worker.alive:  # else another thread's request killed it meanwhile: get a fresh one
                    return worker.run(feed, timeout_s)
        raise GuardRefusal("the inference worker died before it could take the request")

    def close(self) -> None:
        with self.lock:
            for worker in self.workers.values():
                worker.close()
            self.workers.clear()


POOL = WorkerPool()
atexit.register(POOL.close)


def runner(key: WorkerKey, timeout_s: float, pool: WorkerPool = POOL) -> Any:
    """A replacement for `request.run` that executes in the isolated worker."""

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return pool.run(key, {k: np.ascontiguousarray(v) for k, v in feed.items()}, timeout_s)

    return run


def model_key(
    path: Path,
    sha256: str,
    memory_mb: int,
    threads: int,
    external: bool,
    external_sha256: tuple[tuple[str, str], ...] = (),
) -> WorkerKey:
    return WorkerKey(
        str(Path(path).resolve()), sha256, int(memory_mb), int(threads), external, tuple(external_sha256)
    )
