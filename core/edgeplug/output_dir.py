"""The output folder of one run: checked against every input before any work, locked for one run at a
time, cleared of a previous run's step files, and left without temporary files on every failure path.

`edgeplug run` and `edgeplug.optimize` claim the folder before the pipeline writes anything:

    with OutputFolder.for_run(out, stem, model=path, data=..., calibration=..., config=...):
        Pipeline(...).run()

Claiming refuses, with one sentence (OutputError, exit 2): an `--output-dir` that is a file, lies under a
file or cannot be written; any output of the run (the final model and its `.data`, `steps/`, report.json,
report.html, the sidecar) that is one of the run's inputs (the model, its external data, `--data`,
`--calibration-data`, `--config`), by resolved path or by inode; an output folder that is an input folder
(`--data DIR`); and a folder another run holds (an exclusive `flock` on `.edgeplug.lock`, removed when the
run ends). Holding the lock, it removes what a previous run left that this run would otherwise mix with its
own: step models under `steps/` and `.tmp-PID` files of a killed run. Leaving, it removes the temporary
files again (a failed write's, whatever happened), then the lock. A second claim of the same folder by the
same thread (the CLI, then the pipeline) shares the first one's lock.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from .errors import OutputError, os_error_reason

LOCK_NAME = ".edgeplug.lock"
STEPS = "steps"
STEP_FILE = re.compile(r"\d\d-.+\.onnx(\.data)?")  # pipeline: steps/00-original.onnx, steps/01-fuse.onnx
TEMP_FILE = re.compile(r"\..+\.tmp-(\d+)")  # Model.save and report.write_json: .<name>.tmp-<pid>
STAGING_DIR = re.compile(r"\.edgeplug-.+")  # Model.save of a model over 2 GB: a staging folder

_held: dict[Path, tuple[int, OutputFolder]] = {}  # claimed folders of this process -> (thread, claim)
_held_lock = threading.Lock()


@dataclass(frozen=True)
class Input:
    """A file or folder the run reads, and what it is to the user (for the refusal sentence)."""

    path: Path
    role: str


def run_outputs(root: Path, stem: str) -> list[Path]:
    """Every path `edgeplug run` writes directly under its output folder for a model named `stem`."""
    return [
        root / f"{stem}.onnx",
        root / f"{stem}.onnx.data",
        root / f"{stem}.edgeplug.json",
        root / "report.json",
        root / "report.html",
        root / LOCK_NAME,
    ]


class OutputFolder:
    """One run's claim on its output folder (a context manager: `claim()` on entry, `release()` on exit)."""

    def __init__(self, root: Path, outputs: Iterable[Path], inputs: Iterable[Input] = ()) -> None:
        self.root = Path(root)
        self.outputs = [Path(p) for p in outputs]
        self.inputs = [i for i in inputs if i.path is not None]
        self._fd: int | None = None
        self._nested = False

    @classmethod
    def for_run(
        cls,
        root: Path,
        stem: str,
        *,
        model: Path | None = None,
        data: str | Path | None = None,
        calibration: str | Path | None = None,
        config: Path | None = None,
    ) -> OutputFolder:
        """The claim of `edgeplug run`: its outputs for `stem` under `root`, against every input it reads."""
        inputs = []
        if model is not None:
            inputs.append(Input(Path(model), "the input model"))
            for external in _external_data_if_near(Path(model), Path(root)):
                inputs.append(Input(external, f"external data of the input model {Path(model).name}"))
        if data is not None and str(data) != "random":
            inputs.append(Input(Path(data), "--data"))
        if calibration is not None:
            inputs.append(Input(Path(calibration), "--calibration-data"))
        if config is not None:
            inputs.append(Input(Path(config), "--config"))
        return cls(root, run_outputs(Path(root), stem), inputs)

    # -- checks -------------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse a folder that is a file or lies under one, and any output that is an input."""
        check_folder(self.root)
        steps = self.root / STEPS
        for output in self.outputs:
            if os.path.lexists(output) and not (output.is_file() or output.is_symlink()):
                raise OutputError(
                    f"{output} exists and is not a regular file; remove it or choose another --output-dir"
                )
        for item in self.inputs:
            for output in (*self.outputs, steps):
                if same_file(output, item.path):
                    raise OutputError(
                        f"the output {output} would replace {item.role} {item.path}; choose another --output-dir"
                    )
            if _inside(item.path, steps):
                raise OutputError(
                    f"{item.role} {item.path} lies in {steps}, which this run rewrites; "
                    "choose another --output-dir"
                )
            if item.path.is_dir() and same_file(self.root, item.path):
                raise OutputError(
                    f"--output-dir {self.root} is the {item.role} folder; choose another folder"
                )

    # -- claiming -----------------------------------------------------------------------------
    def claim(self) -> OutputFolder:
        """Check, create the folder, take the lock (refusing a folder another run holds), and remove a
        previous run's step files and temporary files."""
        self.check()
        key = self.root.resolve()
        with _held_lock:
            held = _held.get(key)
            if held is not None:
                if held[0] != threading.get_ident():
                    raise OutputError(
                        f"another run in this process is writing to {self.root}; choose another --output-dir"
                    )
                self._nested = True  # the same thread claims again (the CLI, then the pipeline): one lock
                return self
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _folder_error(self.root, exc) from None
            self._fd = _lock(self.root / LOCK_NAME, self.root)
            _held[key] = (threading.get_ident(), self)
        try:
            self._remove_stale()
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Remove the folder's temporary files and give the lock back (idempotent)."""
        if self._nested:
            self._nested = False
            return
        if self._fd is None:
            return
        try:
            remove_temporaries(
                self.root, own_pid_only=False
            )  # with the lock held, every one is ours or stale
        finally:
            with _held_lock:
                _held.pop(self.root.resolve(), None)
            lock = self.root / LOCK_NAME
            with contextlib.suppress(OSError):
                lock.unlink()  # before unlocking: a waiter that then locks the old inode sees it is gone
            os.close(self._fd)
            self._fd = None

    @property
    def claimed(self) -> bool:
        return self._fd is not None or self._nested

    def __enter__(self) -> OutputFolder:
        return self.claim()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def _remove_stale(self) -> None:
        steps = self.root / STEPS
        if steps.is_dir():
            for path in steps.iterdir():
                if STEP_FILE.fullmatch(path.name) and (path.is_file() or path.is_symlink()):
                    path.unlink()
        remove_temporaries(self.root, own_pid_only=False)


def check_output_file(path: Path, inputs: Iterable[Input]) -> None:
    """A single output file (`infer --output`): its folder must exist, it must not be a folder, and it
    must not be one of the command's inputs."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise OutputError(f"--output {path} is a folder; name a file")
    if path.exists() and not path.is_file():
        raise OutputError(
            f"--output {path} exists and is not a regular file (a device or a pipe); name a file"
        )
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise OutputError(f"--output {path}: the folder {folder} {what}; create it or choose another path")
    for item in inputs:
        if item.path is not None and same_file(path, item.path):
            raise OutputError(f"--output {path} would replace {item.role} {item.path}; choose another path")


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write a file through `write(fh)` to a temporary name beside it, then rename it into place: the
    file appears whole or not at all, exactly at `path`; OSError becomes an OutputError sentence."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        reason = os_error_reason(exc) or exc.strerror or str(exc)
        raise OutputError(f"cannot write {path}: {reason}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_folder(root: Path) -> None:
    """An output folder must be a folder (or not exist yet) and must not lie under a file."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise OutputError(f"--output-dir {root} is a file, not a folder; choose a folder")
    for parent in root.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"--output-dir {root} lies under the file {parent}; choose a folder")
            break


def same_file(a: Path, b: Path) -> bool:
    """The same file by resolved path, or (both existing) by device and inode (hard links)."""
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
        return Path(a).exists() and Path(b).exists() and os.path.samefile(a, b)
    except OSError:
        return False


def remove_temporaries(root: Path, own_pid_only: bool = True) -> list[Path]:
    """Delete `.<name>.tmp-<pid>` files and `.edgeplug-*` staging folders under `root` and `root/steps`
    (only this process's temporary files with `own_pid_only`); returns what was removed."""
    removed: list[Path] = []
    pid = str(os.getpid())
    for folder in (Path(root), Path(root) / STEPS):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = TEMP_FILE.fullmatch(path.name)
            if match and (not own_pid_only or match.group(1) == pid) and not path.is_dir():
                path.unlink(missing_ok=True)
                removed.append(path)
            elif STAGING_DIR.fullmatch(path.name) and path.is_dir() and not own_pid_only:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def _lock(path: Path, root: Path) -> int:
    """An exclusive lock on `path` (created), or OutputError naming the run that holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock, the other checks still apply
        return os.open(os.devnull, os.O_RDONLY)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise _folder_error(root, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (process {holder})" if holder else ""
            raise OutputError(
                f"another edgeplug run{who} is writing to {root}; wait for it to finish or choose another "
                "--output-dir"
            ) from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(current, os.fstat(fd)):
            break
        os.close(fd)  # the holder removed the file between our open and our lock: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise _folder_error(root, exc) from None
    return fd


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _folder_error(root: Path, exc: OSError) -> OutputError:
    reason = os_error_reason(exc) or exc.strerror or str(exc)
    return OutputError(f"cannot write to the output folder {root}: {reason}")


def _inside(path: Path, folder: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except OSError:
        return False


def _external_data_if_near(model: Path, root: Path) -> Iterator[Path]:
    """The model's external data files, read only when an output could reach them: external data is
    confined to the model's folder, so only an output folder inside that folder can collide with it."""
    if not model.is_file() or not (_inside(root, model.parent) or _inside(root / STEPS, model.parent)):
        return iter(())
    from .model import external_data_files

    return iter(external_data_files(model))
