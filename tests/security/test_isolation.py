"""Isolated execution on real hostile models: a hang is killed at the timeout, an OOM or a dead worker is
reported without taking the caller down, and a fresh worker serves the next request."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import edgeplug
import numpy as np
import pytest
from edgeplug import GuardRefusal
from edgeplug_security.isolation import POOL

from .conftest import error_line, infer_cli
from .models import allocating_model, loop_reference, looping_model

FOREVER = 2**62
X = np.full((1, 16), 0.5, np.float32)  # n is [1]: the runner goes one sample at a time


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return looping_model(tmp_path_factory.mktemp("loop") / "loop.onnx")


@pytest.fixture(scope="module")
def alloc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return allocating_model(tmp_path_factory.mktemp("alloc") / "alloc.onnx")


def run_loop(model: Path, n: int, **options: object) -> edgeplug.InferenceResult:
    inputs = {"x": X, "n": np.array([n], np.int64)}
    return edgeplug.infer(
        model, inputs, guards=["security"], options={"security": {"require_hash": False, **options}}
    )


def workers_of(model: Path) -> list:
    return [w for k, w in POOL.workers.items() if k.path == str(model.resolve()) and w.alive]


def test_worker_is_persistent_and_correct(loop: Path) -> None:
    first = run_loop(loop, 3, timeout_s=10)
    pids = {w.process.pid for w in workers_of(loop)}
    second = run_loop(loop, 5, timeout_s=10)
    assert {w.process.pid for w in workers_of(loop)} == pids and len(pids) == 1  # reused, not respawned
    np.testing.assert_allclose(first.outputs["y"], loop_reference(X, 3), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(second.outputs["y"], loop_reference(X, 5), rtol=1e-5, atol=1e-6)
    assert os.getpid() not in pids


def test_hang_is_killed_at_the_timeout_and_the_next_request_succeeds(loop: Path) -> None:
    run_loop(loop, 1, timeout_s=10)
    (old,) = workers_of(loop)
    start = time.perf_counter()
    with pytest.raises(GuardRefusal, match=r"^inference timed out after 1.5s; worker killed$"):
        run_loop(loop, FOREVER, timeout_s=1.5)
    assert 1.5 <= time.perf_counter() - start < 10
    assert old.process.poll() == -signal.SIGKILL  # really killed, not left spinning
    result = run_loop(loop, 4, timeout_s=10)  # same model, same options: a fresh worker answers
    np.testing.assert_allclose(result.outputs["y"], loop_reference(X, 4), rtol=1e-5, atol=1e-6)
    (new,) = workers_of(loop)
    assert new.process.pid != old.process.pid


def test_hang_through_the_cli_is_one_line_exit_2(loop: Path, tmp_path: Path) -> None:
    result = infer_cli(
        loop, {"x": X, "n": np.array([FOREVER], np.int64)}, tmp_path, "require_hash=false", "timeout_s=1"
    )
    assert error_line(result) == "edgeplug: error: inference timed out after 1s; worker killed"


def test_out_of_memory_is_reported_and_the_next_request_succeeds(alloc: Path) -> None:
    x = np.ones((1, 1), np.float32)
    options = {"security": {"require_hash": False, "memory_mb": 768, "timeout_s": 30}}
    with pytest.raises(
        GuardRefusal, match=r"ran out of memory \(memory_mb=768\).*1073741824.*worker restarted"
    ):
        edgeplug.infer(alloc, {"x": x, "width": np.array([2**28], np.int64)}, ["security"], options)
    small = edgeplug.infer(alloc, {"x": x * 2, "width": np.array([1000], np.int64)}, ["security"], options)
    assert small.outputs["y"][0, 0] == pytest.approx(2000.0)


def test_memory_limit_below_the_runtime_is_refused(alloc: Path) -> None:
    options = {"security": {"require_hash": False, "memory_mb": 16}}
    with pytest.raises(GuardRefusal, match="memory_mb=16 is below what the runtime alone needs"):
        edgeplug.infer(
            alloc, {"x": np.ones((1, 1), np.float32), "width": np.array([4], np.int64)}, ["security"], options
        )


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_a_worker_killed_mid_request_does_not_take_the_caller_down(loop: Path, sig: signal.Signals) -> None:
    run_loop(loop, 1, timeout_s=60)
    (worker,) = workers_of(loop)
    caught: list[BaseException] = []

    def request() -> None:
        try:
            run_loop(loop, FOREVER, timeout_s=60)
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=request)
    thread.start()
    time.sleep(0.5)  # the request is now running inside the worker
    os.kill(worker.process.pid, sig)  # what the kernel's OOM killer does; what a native crash does
    thread.join(30)
    assert not thread.is_alive()
    assert len(caught) == 1 and isinstance(caught[0], GuardRefusal)
    assert f"the inference worker died (killed by {sig.name}" in str(caught[0])
    result = run_loop(loop, 2, timeout_s=10)
    np.testing.assert_allclose(result.outputs["y"], loop_reference(X, 2), rtol=1e-5, atol=1e-6)


def test_a_hung_worker_dies_with_its_caller(loop: Path, tmp_path: Path) -> None:
    """A caller that is killed mid-request leaves no worker behind (PR_SET_PDEATHSIG)."""
    script = tmp_path / "caller.py"
    script.write_text(
        "import os, sys, threading, time\n"
        "import numpy as np, edgeplug\n"
        "from edgeplug_security.isolation import POOL\n"
        "args = ({'x': np.ones((1, 16), np.float32), 'n': np.array([2**62], np.int64)},)\n"
        "opts = {'security': {'require_hash': False, 'timeout_s': 600}}\n"
        f"threading.Thread(target=edgeplug.infer, args=({str(loop)!r}, *args, ['security'], opts), daemon=True).start()\n"
        "while not POOL.workers: time.sleep(0.05)\n"
        "print(next(iter(POOL.workers.values())).process.pid, flush=True)\n"
        "time.sleep(0.5)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}").exists() else ""
        if "State:\tZ" in status:  # a zombie waiting for its reaper: already dead
            break
        time.sleep(0.1)
    else:
        assert not Path(f"/proc/{pid}").exists(), "the worker outlived its killed caller"
