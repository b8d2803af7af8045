"""How the isolated worker is started: `python -I -B` (no working directory or script folder and no user
site on sys.path, PYTHON* variables ignored, no bytecode written), in a fresh private working directory
that is also its HOME, with an allowlisted environment, in a new session (no controlling terminal), under
rlimits, with no new privileges and SIGKILL when its parent dies.

What this does not isolate: the worker runs as the same user with the same capabilities, on the same
network, and sees the same filesystem as the caller apart from its working directory (README: "What the
worker isolates")."""

from __future__ import annotations

import ctypes
import math
import os
import resource
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
ENV_NAMES = ("PATH", "LANG", "OMP_NUM_THREADS", "MKL_NUM_THREADS")  # and every LC_* variable
OPEN_FILES = 64  # the interpreter, numpy and onnxruntime need about 15 descriptors
FILE_SIZE_MB = 8  # the worker writes no file but its stderr log
SPARE_TASKS = 16  # threads/processes the worker may add besides its onnxruntime threads
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
# `-c` with -I adds nothing to sys.path; the plugin's own folder is added when it is not already a site
# folder (an editable install), so the worker runs the caller's copy of this package.
BOOTSTRAP = (
    "import sys; root = sys.argv[1]\n"
    "if root not in sys.path: sys.path.insert(0, root)\n"
    "from edgeplug_security.worker_process import main; main(sys.argv[2:])"
)

_libc: ctypes.CDLL | None
try:  # resolved here, in the parent: the child between fork and exec only calls it
    _libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    _prctl = _libc.prctl if _libc is not None else None
except (OSError, AttributeError):
    _libc = _prctl = None


@dataclass(frozen=True)
class Limits:
    """The rlimits the worker starts under (RLIMIT_AS is set by the worker itself once onnxruntime is
    imported, so that a limit below the runtime's own needs is reported as such)."""

    cpu_s: int
    open_files: int
    file_size: int
    tasks: int | None  # None where the user's task count cannot be read (no /proc): RLIMIT_NPROC not set

    def pairs(self) -> list[tuple[int, int, int]]:
        """(resource, soft, hard): the CPU hard limit is kept so the worker can move its soft limit per request."""
        _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
        wanted = [
            (resource.RLIMIT_CPU, self.cpu_s, cpu_hard),
            (resource.RLIMIT_NOFILE, self.open_files, self.open_files),
            (resource.RLIMIT_FSIZE, self.file_size, self.file_size),
            (resource.RLIMIT_CORE, 0, 0),
        ]
        if self.tasks is not None and hasattr(resource, "RLIMIT_NPROC"):
            wanted.append((resource.RLIMIT_NPROC, self.tasks, self.tasks))
        return [(which, _below_hard(which, soft), _below_hard(which, hard)) for which, soft, hard in wanted]


def cpu_budget(timeout_s: float, threads: int) -> int:
    """CPU seconds one call may use: every onnxruntime thread busy for the whole wall-clock limit."""
    return max(1, math.ceil(timeout_s * max(threads, 1))) + 1


def limits_for(timeout_s: float, threads: int) -> Limits:
    return Limits(
        cpu_s=cpu_budget(timeout_s, threads),
        open_files=OPEN_FILES,
        file_size=FILE_SIZE_MB * 2**20,
        tasks=None if (count := user_tasks()) is None else count + max(threads, 1) + SPARE_TASKS,
    )


def user_tasks() -> int | None:
    """Threads of all processes whose real user is ours: what RLIMIT_NPROC counts on Linux (for root it
    is not enforced: root, and any process with CAP_SYS_RESOURCE or CAP_SYS_ADMIN, is exempt). None
    without /proc."""
    if not Path("/proc/self/status").exists():
        return None
    uid, count = os.getuid(), 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            continue  # a process that ended meanwhile
    return count


def environment(home: str, parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: PATH, LANG, LC_*, the OpenMP/MKL thread counts, and HOME set to its
    private working directory; nothing else of the caller's (no tokens, no LD_PRELOAD, no PYTHON*)."""
    parent = os.environ if parent is None else parent
    env = {k: v for k, v in parent.items() if k in ENV_NAMES or k.startswith("LC_")}
    env["HOME"] = home
    return env


def command(args: list[str]) -> list[str]:
    return [sys.executable, "-I", "-B", "-c", BOOTSTRAP, str(PACKAGE_ROOT), *args]


def working_directory() -> str:
    """A fresh 0700 folder for one worker: its cwd and HOME, removed when the worker is closed."""
    return tempfile.mkdtemp(prefix="edgeplug-worker-")


def preexec(limits: Limits) -> Callable[[], None]:
    """What runs in the child between fork and exec: rlimits, no new privileges, death with the parent.
    Only calls prepared in the parent (no imports, no allocation-heavy work), as preexec_fn requires in
    a process with threads."""
    pairs = limits.pairs()
    parent = os.getpid()
    prctl = _prctl
    setrlimit = resource.setrlimit

    def apply() -> None:
        for which, soft, hard in pairs:
            setrlimit(which, (soft, hard))
        if prctl is not None:
            if prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before PDEATHSIG was armed
                os._exit(1)

    return apply


def _below_hard(which: int, value: int) -> int:
    """`value`, lowered to the hard limit the caller already has (an unprivileged process cannot raise it)."""
    _, hard = resource.getrlimit(which)
    return value if hard == resource.RLIM_INFINITY or value == resource.RLIM_INFINITY else min(value, hard)
