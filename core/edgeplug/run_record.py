"""The run record `<stem>.edgeplug.json`: written beside the final model by `edgeplug run`, read by
`edgeplug infer` and by guards. One class writes it (atomically) and reads it back.

Reading is where the trust decision is made, so it checks before any artifact code can load: every path
the record names is relative and stays inside the model's folder (no `..`, not absolute), no component
of it inside the folder is a symbolic link, it is a regular file, and its sha256 is the recorded one.
A compiled artifact then runs from a private copy of exactly the bytes that were hashed
(`RunRecord.artifact`), so a file swapped after the check is never loaded, and a file the record does
not list is not there for the artifact to load. The sidecar's own sha256 (`RunRecord.digest`) is what a
guard pins: one pin covers every file the sidecar hashes.

Layout (schema_version 2; a sidecar without `schema_version`, written before, keys files by name):

    {"schema_version": 2, "model": "m.onnx", "sha256": HEX, "external_data": {"m.onnx.data": HEX},
     "steps": ["fuse", "quant"],
     "artifact": {"kind": "c-library", "paths": ["libedgeplug_model_host.so", ...],
                  "files": {"libedgeplug_model_host.so": HEX, ...}, "info": {...}} | null}

`paths` are relative to the model's folder with `/` separators, main file first; `files` maps each to
its sha256.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from .context import Artifact
from .errors import ModelError, PluginError

SUFFIX = ".edgeplug.json"
SCHEMA_VERSION = 2
MAX_BYTES = 16 * 2**20  # a sidecar is a few KiB; anything this large is not one
NO_ARTIFACT_KINDS = ("onnx",)  # the final .onnx itself: nothing compiled to run
_HEX = re.compile(r"[0-9a-f]{64}")
_BLOCK = 1 << 20


def sidecar_path(model: Path) -> Path:
    """Where the run record of `model` lives: `<stem>.edgeplug.json` beside it."""
    model = Path(model)
    return model.with_name(f"{model.stem}{SUFFIX}")


@dataclass(frozen=True)
class RecordedArtifact:
    """The compiled artifact as recorded: its kind, its files (relative path, sha256) main first, and the
    plugin's JSON info (what its runner needs: shapes, builds)."""

    kind: str
    files: tuple[tuple[str, str], ...]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def compiled(self) -> bool:
        return self.kind not in NO_ARTIFACT_KINDS


@dataclass(frozen=True)
class RunRecord:
    """What a run vouches for: the final model's name and sha256, its external data files, the applied
    steps, and the compiled artifact. `digest` is the sha256 of the sidecar bytes it was read from or
    written as (None for a record not yet written)."""

    model: str
    sha256: str
    external_data: tuple[tuple[str, str], ...] = ()
    steps: tuple[str, ...] = ()
    artifact: RecordedArtifact | None = None
    digest: str | None = field(default=None, compare=False)

    # -- writing ------------------------------------------------------------------------------
    @classmethod
    def of_run(
        cls,
        model: Path,
        steps: Sequence[str] = (),
        artifact: Artifact | None = None,
        external_data: Iterable[Path] | None = None,
    ) -> RunRecord:
        """Hash the final `model`, its external data (default: `<name>.data` beside it when present, as
        `Model.save` writes it) and every file of `artifact`, which must lie inside the model's folder."""
        model = Path(model)
        root = model.parent
        if external_data is None:
            data = model.with_name(f"{model.name}.data")
            external_data = [data] if data.exists() else []
        external = tuple(
            (_inside(root, Path(p), "external data file"), _hash_path(Path(p))) for p in external_data
        )
        recorded = None
        if artifact is not None:
            files = tuple(
                (_inside(root, Path(f), f"{artifact.kind} artifact file"), _hash_path(Path(f)))
                for f in artifact.files
            )
            info = {k: v for k, v in artifact.info.items() if k != "tolerance"}
            recorded = RecordedArtifact(artifact.kind, files, json.loads(json.dumps(info, default=_jsonable)))
        return cls(model.name, _hash_path(model), external, tuple(steps), recorded)

    def to_json(self) -> dict[str, Any]:
        artifact = None
        if self.artifact is not None:
            artifact = {
                "kind": self.artifact.kind,
                "paths": [path for path, _ in self.artifact.files],
                "files": dict(self.artifact.files),
                "info": self.artifact.info,
            }
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "sha256": self.sha256,
            "external_data": dict(self.external_data),
            "steps": list(self.steps),
            "artifact": artifact,
        }

    def write(self, folder: Path) -> str:
        """Write `<stem>.edgeplug.json` into `folder` atomically (a temporary file beside it, fsynced, then
        renamed; removed on any failure) and return the sha256 of the written bytes: the value to pin."""
        target = sidecar_path(Path(folder) / self.model)
        data = (json.dumps(self.to_json(), indent=2, allow_nan=False, default=_jsonable) + "\n").encode()
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return hashlib.sha256(data).hexdigest()

    # -- reading ------------------------------------------------------------------------------
    @classmethod
    def read(cls, model: Path) -> RunRecord:
        """The record beside `model`; ModelError when there is none, or it is not a regular file in the
        model's folder, not a valid record, or the record of another file."""
        record = cls.find(model)
        if record is None:
            raise ModelError(
                f"{model} has no run record {sidecar_path(model).name} beside it (write one with `edgeplug run`)"
            )
        return record

    @classmethod
    def find(cls, model: Path) -> RunRecord | None:
        """As `read`, but None when the model has no sidecar at all."""
        model = Path(model)
        sidecar = sidecar_path(model)
        try:
            with _open_confined(model.parent, sidecar.name) as fh:
                data = fh.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return None
        except _Refused as exc:
            raise ModelError(f"run record {sidecar} {exc}; refused") from None
        if len(data) > MAX_BYTES:
            raise ModelError(
                f"run record {sidecar} is larger than {MAX_BYTES // 2**20} MiB: not a run record"
            )
        record = _parse(data, sidecar)
        if record.model != model.name:
            raise ModelError(
                f"{sidecar} records model {record.model!r}, not {model.name!r}: renamed or replaced"
            )
        return record

    def check_model(self, model: Path, data: bytes | None = None) -> str:
        """The sha256 of the model file (or of `data`, its bytes already read); ModelError if not recorded."""
        digest = hashlib.sha256(data).hexdigest() if data is not None else _hash_path(Path(model))
        if digest != self.sha256:
            raise ModelError(f"model {model} does not match its recorded sha256: tampered or replaced")
        return digest

    def check_external_data(self, model: Path) -> None:
        """Hash every recorded external data file (confined, no symlinks, regular) against the record."""
        sidecar = sidecar_path(model)
        for path, digest in self.external_data:
            got = _hash_confined(
                Path(model).parent, path, f"external data file {path} recorded in {sidecar.name}"
            )
            if got != digest:
                raise ModelError(
                    f"external data file {path} of model {model} does not match its sha256 recorded in "
                    f"{sidecar.name}: tampered or replaced"
                )

    def compiled(self, model: Path) -> RecordedArtifact:
        """The recorded compiled artifact; ModelError when the run compiled none."""
        if self.artifact is None or not self.artifact.compiled:
            raise ModelError(
                f"{model}: its sidecar {sidecar_path(model).name} records no compiled artifact "
                "(run a compile plugin)"
            )
        return self.artifact

    def artifact_for(self, model: Path) -> Artifact:
        """The compiled artifact, every file hashed against the record and copied, as hashed, into a private
        folder (same relative layout, nothing else in it); the Artifact names those copies. No byte of it
        is loaded here: that is for the runner, once the caller's checks have passed."""
        recorded = self.compiled(model)
        root = Path(model).parent
        sidecar = sidecar_path(model)
        hashes = tuple(
            (path, _hash_confined(root, path, f"artifact file {path} recorded in {sidecar.name}"))
            for path, _ in recorded.files
        )
        for (path, digest), (_, got) in zip(recorded.files, hashes):
            if got != digest:
                raise ModelError(
                    f"artifact file {root / path} does not match its recorded sha256 in {sidecar.name}: "
                    "tampered or replaced"
                )
        folder = _STAGED.folder(root, recorded, sidecar)
        files = tuple(folder / path for path, _ in recorded.files)
        return Artifact(recorded.kind, files, dict(recorded.files), dict(recorded.info))

    def check_artifact(self, artifact: Artifact) -> None:
        """ModelError unless `artifact` is exactly this record's artifact: same kind, same files in the
        same order, each file's bytes hashing to the recorded sha256 (for a guard that pinned this record
        and is handed the artifact the core prepared)."""
        recorded = self.artifact
        if recorded is None or artifact.kind != recorded.kind or len(artifact.files) != len(recorded.files):
            raise ModelError("the artifact to run is not the one its run record describes: refused")
        for file, (path, digest) in zip(artifact.files, recorded.files):
            if not Path(file).as_posix().endswith(f"/{path}"):
                raise ModelError(f"the artifact to run has {file} where its run record has {path}: refused")
            if _hash_path(Path(file)) != digest:
                raise ModelError(
                    f"artifact file {file} does not match the sha256 its run record gives for {path}: "
                    "tampered or replaced"
                )


# -- parsing ----------------------------------------------------------------------------------------
def _parse(data: bytes, sidecar: Path) -> RunRecord:
    digest = hashlib.sha256(data).hexdigest()
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        version = raw.get("schema_version", 1)
        if version not in (1, SCHEMA_VERSION):
            raise ValueError(f"unknown schema_version {version!r}")
        model = raw.get("model")
        sha = _digest(raw["sha256"])
        external = _files(raw.get("external_data") or {}, None, "external data")
        steps = tuple(str(s) for s in raw.get("steps") or ())
        artifact = _artifact(raw.get("artifact"), version)
        if model is None:  # written before the record named its model
            model = sidecar.name[: -len(SUFFIX)] + ".onnx"
        if not isinstance(model, str) or "/" in model or _relative(model, "model") != model:
            raise _Refused(f"records model {model!r}, which is not a file name beside it")
    except _Refused as exc:
        raise ModelError(f"{sidecar} {exc}; refused") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        why = f" ({exc})" if isinstance(exc, (ValueError, TypeError)) and str(exc) else ""
        raise ModelError(f"{sidecar} is unreadable or has no sha256{why}; cannot check the model") from None
    return RunRecord(model, sha, external, steps, artifact, digest)


def _artifact(raw: Any, version: int) -> RecordedArtifact | None:
    if raw is None:
        return None
    kind = raw["kind"]
    if not isinstance(kind, str) or not kind:
        raise TypeError("artifact kind is not a string")
    paths = raw.get("paths")
    files = raw["files"]
    if not isinstance(files, Mapping):
        raise TypeError("artifact files is not an object")
    if paths is None:
        paths = list(files)
    if not isinstance(paths, list):
        raise TypeError("artifact paths is not a list")
    # schema 1 keyed `files` by file name; schema 2 by the relative path
    by = (lambda p: PurePosixPath(str(p)).name) if version == 1 else None
    recorded = _files(files, paths, "artifact", by)
    info = raw.get("info") or {}
    if not isinstance(info, Mapping):
        raise TypeError("artifact info is not an object")
    return RecordedArtifact(kind, recorded, dict(info))


def _files(hashes: Any, order: list[Any] | None, what: str, key: Any = None) -> tuple[tuple[str, str], ...]:
    """(clean relative path, sha256) for each path of `order` (default: the keys of `hashes`)."""
    if not isinstance(hashes, Mapping):
        raise TypeError(f"{what} is not an object")
    paths = list(hashes) if order is None else order
    result: list[tuple[str, str]] = []
    for path in paths:
        if not isinstance(path, str):
            raise TypeError(f"{what} path {path!r} is not a string")
        clean = _relative(path, what)
        lookup = key(path) if key else path
        if lookup not in hashes:
            raise ValueError(f"{what} file {path!r} has no sha256")
        if any(clean == seen for seen, _ in result):
            raise ValueError(f"{what} lists {clean!r} twice")
        result.append((clean, _digest(hashes[lookup])))
    return tuple(result)


def _digest(value: Any) -> str:
    if not isinstance(value, str) or not _HEX.fullmatch(value.strip().lower()):
        raise ValueError(f"{value!r} is not a sha256 (64 hex digits)")
    return value.strip().lower()


class _Refused(Exception):
    """A recorded path that may not be used (escapes the folder, a symlink, not a regular file)."""


def _relative(path: str, what: str = "file") -> str:
    """`path` as a clean relative POSIX path inside the folder, or _Refused saying why not."""
    if not path or "\x00" in path:
        raise _Refused(f"records {what} path {path!r}, which is empty or invalid")
    if path.startswith(("/", "\\")) or os.path.isabs(path) or PureWindowsPath(path).drive:
        raise _Refused(f"records {what} path {path!r}, an absolute path outside the model's folder")
    if "\\" in path:
        raise _Refused(f"records {what} path {path!r} with a backslash: write paths with '/'")
    parts = PurePosixPath(path).parts
    if any(part == ".." for part in parts):
        raise _Refused(f"records {what} path {path!r}, which leaves the model's folder ('..')")
    clean = "/".join(p for p in parts if p != ".")
    if not clean:
        raise _Refused(f"records {what} path {path!r}, which names no file")
    return clean


# -- confined file access ---------------------------------------------------------------------------
@contextmanager
def _open_confined(root: Path, relative: str) -> Iterator[Any]:
    """Open `root/relative` for reading without following a symbolic link at any component below `root`
    (each component opened with O_NOFOLLOW relative to its parent's descriptor, so no swap in between
    can redirect it), and only if it is a regular file. FileNotFoundError when it does not exist."""
    parts = PurePosixPath(_relative(relative)).parts
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    if os.open in os.supports_dir_fd and nofollow:
        fd = _open_beneath(Path(root), parts, relative, flags, nofollow)
    else:  # no openat(): check each component with lstat, then open
        path = Path(root)
        for part in parts:
            path = path / part
            if path.is_symlink():
                raise _Refused(f"is or passes through a symbolic link ({part})")
        fd = os.open(path, flags | nofollow)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _Refused("is not a regular file")
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


def _open_beneath(root: Path, parts: tuple[str, ...], relative: str, flags: int, nofollow: int) -> int:
    folder = os.open(root, flags | getattr(os, "O_DIRECTORY", 0))
    try:
        for part in parts[:-1]:
            try:
                sub = os.open(part, flags | os.O_DIRECTORY | nofollow, dir_fd=folder)
            except OSError as exc:
                raise _walk_error(exc, folder, part) from None
            os.close(folder)
            folder = sub
        try:  # O_NONBLOCK: a FIFO planted under the name must not block the open
            return os.open(parts[-1], flags | nofollow | getattr(os, "O_NONBLOCK", 0), dir_fd=folder)
        except OSError as exc:
            raise _walk_error(exc, folder, parts[-1]) from None
    finally:
        os.close(folder)


def _walk_error(exc: OSError, folder: int, part: str) -> BaseException:
    """What a failed O_NOFOLLOW open of `part` (in the folder open as `folder`) means, in words."""
    if exc.errno == errno.ENOENT:
        return FileNotFoundError(errno.ENOENT, "missing", part)
    try:
        is_link = stat.S_ISLNK(os.stat(part, dir_fd=folder, follow_symlinks=False).st_mode)
    except OSError:
        is_link = False
    if is_link or exc.errno == errno.ELOOP:
        return _Refused(f"is or passes through a symbolic link ({part})")
    if exc.errno == errno.ENOTDIR:
        return _Refused(f"passes through {part}, which is not a folder")
    return _Refused(f"cannot be opened ({part}: {exc.strerror})")


def _hash_confined(root: Path, relative: str, what: str) -> str:
    try:
        with _open_confined(root, relative) as fh:
            return _hash_stream(fh)
    except FileNotFoundError:
        raise ModelError(f"{what} is missing from {root}") from None
    except _Refused as exc:
        raise ModelError(f"{what} {exc}; refused") from None


def _hash_stream(fh: Any, copy: Any = None) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: fh.read(_BLOCK), b""):
        digest.update(block)
        if copy is not None:
            copy.write(block)
    return digest.hexdigest()


def _hash_path(path: Path) -> str:
    with open(path, "rb") as fh:
        return _hash_stream(fh)


def _inside(root: Path, path: Path, what: str) -> str:
    """`path` (symlinks resolved) relative to `root`, as recorded; PluginError for a file elsewhere."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise PluginError(
            f"{what} {path} is outside the output folder {root}: a compile plugin writes its files under "
            "ctx.workdir, the folder of the final model"
        ) from None


def _jsonable(value: Any) -> Any:
    """JSON for what plugins put in Artifact.info: paths, tuples and sets, numpy scalars and arrays."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return str(value)


# -- private copies of verified artifacts -----------------------------------------------------------
class _Staging:
    """Private copies (a 0700 temporary folder per artifact) of artifact files, made while hashing the
    very bytes copied; reused while the recorded hashes are the same, removed when the process exits.

    The copy is what the runner loads: the file in the model's folder can be swapped after the check
    without effect, and nothing the record does not list sits beside the copy (a library that would load
    an unlisted neighbour finds none). Set TMPDIR to a folder that allows executable mappings where
    /tmp is mounted noexec."""

    def __init__(self) -> None:
        self.folders: dict[tuple[str, str, tuple[tuple[str, str], ...]], Path] = {}
        self.lock = threading.Lock()
        atexit.register(self.clear)

    def folder(self, root: Path, recorded: RecordedArtifact, sidecar: Path) -> Path:
        key = (str(root.resolve()), recorded.kind, recorded.files)
        with self.lock:
            known = self.folders.get(key)
            if known is not None and all((known / p).is_file() for p, _ in recorded.files):
                return known
            folder = Path(tempfile.mkdtemp(prefix="edgeplug-artifact-"))
            try:
                for path, digest in recorded.files:
                    target = folder / path
                    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    try:
                        with _open_confined(root, path) as src, open(target, "xb") as dst:
                            got = _hash_stream(src, dst)
                            mode = stat.S_IMODE(os.fstat(src.fileno()).st_mode)
                    except FileNotFoundError:
                        raise ModelError(
                            f"artifact file {path} recorded in {sidecar.name} is missing"
                        ) from None
                    except _Refused as exc:
                        raise ModelError(
                            f"artifact file {path} recorded in {sidecar.name} {exc}; refused"
                        ) from None
                    if got != digest:
                        raise ModelError(
                            f"artifact file {root / path} does not match its recorded sha256 in {sidecar.name}: "
                            "tampered or replaced"
                        )
                    os.chmod(target, (mode & 0o500) | 0o400)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            self.folders[key] = folder
            return folder

    def clear(self) -> None:
        with self.lock:
            for folder in self.folders.values():
                shutil.rmtree(folder, ignore_errors=True)
            self.folders.clear()


_STAGED = _Staging()
