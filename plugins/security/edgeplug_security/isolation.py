"""Isolated execution: a persistent worker process per model, started isolated from the caller
(sandbox.py), with a wall-clock timeout per call (starting the worker included) and an address-space
limit (RLIMIT_AS). A hang is killed, a crash or OOM is reported, and the next request gets a fresh worker;
the caller never goes down with the model."""

from __future__ import annotations

import atexit
import contextlib
import json
import multiprocessing
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from edgeplug import GuardRefusal

from . import sandbox

MAX_WORKERS = 4  # persistent workers kept alive (least recently used ones are closed)
TIMEOUT_S = 30.0  # security.timeout_s when not given
MEMORY_MB = 4096  # security.memory_mb when not given
SIGNAL_CAUSES = {
    signal.SIGKILL: "the kernel's OOM killer or an external kill",
    signal.SIGXCPU: "its CPU-time limit, timeout_s x threads",
    signal.SIGXFSZ: "its file-size limit",
}


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

    Started with `subprocess` as `python -I -B -c BOOTSTRAP` (a fresh interpreter, as multiprocessing's
    'spawn' does, but without re-importing the caller's __main__, so `edgeplug.infer` also works from
    scripts that lack an `if __name__ == "__main__"` guard), talking over a multiprocessing Pipe. It must
    start and load its model within `wait_s`."""

    def __init__(self, key: WorkerKey, wait_s: float, timeout_s: float) -> None:
        self.key = key
        self.lock = threading.Lock()
        self.home = sandbox.working_directory()
        self.conn, child = multiprocessing.Pipe(duplex=True)
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker, closed in kill()
        args = [
            str(child.fileno()),
            key.path,
            key.sha256,
            str(key.memory_mb),
            str(key.threads),
            "1" if key.external else "0",
            json.dumps(dict(key.external_sha256)),
        ]
        try:
            self.process = subprocess.Popen(
                sandbox.command(args),
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self.stderr,
                cwd=self.home,
                env=sandbox.environment(self.home),
                preexec_fn=sandbox.preexec(sandbox.limits_for(timeout_s, key.threads)),
                start_new_session=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            child.close()
            self.conn.close()
            self.stderr.close()
            shutil.rmtree(self.home, ignore_errors=True)
            raise GuardRefusal(f"the inference worker could not be started: {exc}") from None
        child.close()
        self.info: dict[str, Any] = {}
        reply = self._receive(wait_s, "starting", timeout_s)
        if reply[0] != "ready":
            self.kill()
            raise GuardRefusal(self._error_text(reply, "loading the model"))
        self.info = reply[1]

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def run(self, feed: dict[str, np.ndarray], wait_s: float, timeout_s: float) -> dict[str, np.ndarray]:
        """Run one request within `wait_s` (what is left of the call's timeout_s); GuardRefusal on a
        timeout (worker killed), a death or an error in the worker."""
        try:
            self.conn.send(("run", feed, sandbox.cpu_budget(timeout_s, self.key.threads)))
        except (BrokenPipeError, OSError):
            raise GuardRefusal(self._died()) from None
        reply = self._receive(wait_s, "running", timeout_s)
        if reply[0] == "ok":
            return reply[1]
        if reply[1] == "oom":
            self.kill()  # an allocation failure can leave the runtime in a bad state: start afresh
        raise GuardRefusal(self._error_text(reply, "running the model"))

    def _receive(self, wait_s: float, doing: str, timeout_s: float) -> tuple[Any, ...]:
        ready = self.conn.poll(max(wait_s, 0.0))
        if not ready:
            self.kill()
            if doing == "starting":
                raise GuardRefusal(
                    f"the inference worker did not start and load the model within security.timeout_s="
                    f"{timeout_s:g}s; worker killed (a large model needs a larger timeout_s)"
                )
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
            if -code in SIGNAL_CAUSES:
                how += f" ({SIGNAL_CAUSES[signal.Signals(-code)]})"
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
        shutil.rmtree(self.home, ignore_errors=True)


class WorkerPool:
    """Workers by model and limits, reused across requests; a dead or killed worker is replaced on demand."""

    def __init__(self, size: int = MAX_WORKERS) -> None:
        self.size = size
        self.workers: OrderedDict[WorkerKey, Worker] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: WorkerKey, deadline: float, timeout_s: float) -> Worker:
        with self.lock:
            worker = self.workers.get(key)
            if worker is not None and worker.alive:
                self.workers.move_to_end(key)
                return worker
            if worker is not None:  # died or was killed: release its pipe, log and folder
                del self.workers[key]
                worker.kill()
            worker = Worker(key, deadline - time.monotonic(), timeout_s)
            self.workers[key] = worker
            while len(self.workers) > self.size:
                _, oldest = self.workers.popitem(last=False)
                oldest.close()
            return worker

    def run(self, key: WorkerKey, feed: dict[str, np.ndarray], timeout_s: float) -> dict[str, np.ndarray]:
        """One call: starting a worker when none is alive, and running the request, within timeout_s."""
        deadline = time.monotonic() + timeout_s
        for _ in range(2):
            worker = self.get(key, deadline, timeout_s)
            with worker.lock:
                if worker.alive:  # else another thread's request killed it meanwhile: get a fresh one
                    return worker.run(feed, deadline - time.monotonic(), timeout_s)
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
