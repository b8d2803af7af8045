"""Where trials run: in this process, in a local process pool, or as Ray tasks on a cluster."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import socket
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlparse

from ..errors import EdgeplugError, MissingDependencyError, OptionError
from .trial import TrialJob, run_trial


class LocalExecutor:
    """`--workers 1` runs trials one by one in this process; more use a process pool (spawned workers)."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers

    def run(self, jobs: Sequence[TrialJob]) -> Iterator[dict[str, Any]]:
        if self.workers <= 1:
            for job in jobs:
                yield run_trial(job)
            return
        context = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=context) as pool:
            futures = [pool.submit(run_trial, job) for job in jobs]
            for future in cf.as_completed(futures):
                yield future.result()

    def close(self) -> None:
        return None


class RayExecutor:
    """Trials as Ray tasks: on the cluster at `address`, or on a local Ray started for the search."""

    def __init__(self, address: str | None, workers: int) -> None:
        try:
            import ray
        except ImportError:
            raise MissingDependencyError("--executor ray needs Ray: pip install 'edgeplug[ray]'") from None
        self.ray = ray
        if address:
            check_reachable(address)
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "ignore_reinit_error": True,
        }
        if address:
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = max(1, workers)
        try:
            ray.init(**kwargs)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError by version
            raise EdgeplugError(
                f"cannot start or join Ray at {address or 'a local instance'}: {exc}"
            ) from None
        self.started_here = not address
        self.task = ray.remote(num_cpus=1)(run_trial)

    def run(self, jobs: Sequence[TrialJob]) -> Iterator[dict[str, Any]]:
        pending = [self.task.remote(job) for job in jobs]
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            yield self.ray.get(done[0])

    def close(self) -> None:
        if self.started_here:
            self.ray.shutdown()


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse an address nothing listens on with one line, before Ray retries for minutes."""
    if address == "auto":
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise OptionError(f"--address {address!r}: write HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:10001")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        raise OptionError(
            f"--address {address}: no Ray cluster answers there ({exc.strerror or exc})"
        ) from None


def make_executor(kind: str, workers: int, address: str | None) -> LocalExecutor | RayExecutor:
    if kind == "local":
        if address:
            raise OptionError("--address goes with --executor ray")
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(address, workers)
    raise OptionError(f"unknown --executor {kind!r}: local or ray")
