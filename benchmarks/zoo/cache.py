"""The cache folder: one sub-folder per entry holding its files and a manifest.json that records each file's
sha256 and how it was built.

An entry is valid when its manifest was written by the current recipe version, names the same pinned
sources and the same dependency files, and every file it lists exists with the recorded size and sha256.
Anything else (a missing, partial, corrupt or foreign file, a manifest that does not parse) rebuilds the
whole entry. A build writes into a private staging folder beside the entry; each finished file is moved
into place with os.replace (atomic on one file system) and the manifest, written the same way, comes last,
so an interrupted build never looks valid. A lock file serialises builders of the same entry.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MissingRequirement, ZooError
from .sources import Requirement, Source, sha256_file, tool_versions

MANIFEST = "manifest.json"
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = ROOT / ".cache" / "zoo"
TOOLS = ("numpy", "onnx", "onnxruntime", "torch")


@dataclass(frozen=True)
class Built:
    """What a builder hands back: measured properties and, per file, a sentence on how it was made."""

    properties: dict[str, Any] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)


# builder(staging folder, the dependencies' folders by name) -> Built
Builder = Callable[[Path, Mapping[str, Path]], Built]


@dataclass(frozen=True)
class Recipe:
    """How one entry is built. Bump `version` whenever the recipe's output changes."""

    name: str
    version: int
    builder: str | Builder  # "benchmarks.zoo.module:function" (imported only to build) or a callable
    files: Mapping[str, str]  # role -> file name, e.g. {"model": "mobilenetv2.onnx", "evaluation": ...}
    metric: str | None = None
    notes: str = ""
    requires: tuple[Requirement, ...] = ()
    sources: tuple[Source, ...] = ()
    depends: tuple[str, ...] = ()
    tools: tuple[str, ...] = TOOLS

    def resolve_builder(self) -> Builder:
        if callable(self.builder):
            return self.builder
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)


def cache_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """`path`, else $EDGEPLUG_ZOO_CACHE, else <repo>/.cache/zoo."""
    chosen = path or os.environ.get("EDGEPLUG_ZOO_CACHE") or DEFAULT_CACHE
    return Path(chosen).expanduser().resolve()


def log(message: str) -> None:
    print(f"zoo: {message}", file=sys.stderr, flush=True)


_digests: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered for this process while its size, mtime and inode are unchanged."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _digests:
        _digests[key] = sha256_file(path)
    return _digests[key]


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file in the same folder, fsync it, then os.replace it onto `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a shared cache must stay readable
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def dependency_files(deps: Mapping[str, Path]) -> dict[str, dict[str, str]]:
    """Per dependency, its files' sha256 as its manifest records them (so a rebuilt one is noticed)."""
    found = {}
    for name, folder in deps.items():
        manifest = read_manifest(folder) or {}
        found[name] = {f: info["sha256"] for f, info in manifest.get("files", {}).items()}
    return found


def problems(recipe: Recipe, folder: Path, deps: Mapping[str, Path] | None = None) -> list[str]:
    """Why the cached entry cannot be used as is; empty when it is valid."""
    manifest = read_manifest(folder)
    if manifest is None:
        return ["no readable manifest"]
    if manifest.get("entry") != recipe.name or manifest.get("recipe_version") != recipe.version:
        return [f"built by another recipe (version {manifest.get('recipe_version')}, now {recipe.version})"]
    recorded_sources = {s.get("file"): s.get("sha256") for s in manifest.get("sources", [])}
    wanted_sources = {f"{s.module}/{s.relpath}": s.sha256 for s in recipe.sources}
    if recorded_sources != wanted_sources:
        return ["built from other source files"]
    if deps is not None and manifest.get("depends") != dependency_files(deps):
        return ["a dependency was rebuilt"]
    files = manifest.get("files", {})
    found = []
    for role, name in recipe.files.items():
        info = files.get(name)
        path = folder / name
        if not isinstance(info, dict):
            found.append(f"{name} ({role}) is not in the manifest")
        elif not path.is_file():
            found.append(f"{name} is missing")
        elif path.stat().st_size != info.get("bytes"):
            found.append(f"{name} has {path.stat().st_size} bytes, the manifest says {info.get('bytes')}")
        elif file_sha256(path) != info.get("sha256"):
            found.append(f"{name} does not match its recorded sha256")
    return found


def missing_requirements(recipe: Recipe) -> list[str]:
    """One line per missing requirement: what is missing and the command that installs it."""
    lines = []
    for requirement in (*recipe.requires, *(s.requirement() for s in recipe.sources)):
        what = requirement.missing()
        if what is not None:
            lines.append(f"zoo entry {recipe.name!r} needs more: {what}; run: {requirement.install}")
    return lines


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure(
    recipe: Recipe,
    cache: Path,
    deps: Mapping[str, Path] | None = None,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """The entry's manifest, building the entry first when it is missing or invalid (or `force`).
    `deps` are the folders of the (already ensured) entries this one is built from."""
    deps = dict(deps or {})
    folder = cache / recipe.name
    with locked(folder):
        reasons = ["forced"] if force else problems(recipe, folder, deps)
        if not reasons:
            return read_manifest(folder) or {}
        lacking = missing_requirements(recipe)
        if lacking:
            raise MissingRequirement(lacking[0])
        log(f"building {recipe.name} into {folder} ({'; '.join(reasons[:3])})")
        return _build(recipe, folder, deps)


def _build(recipe: Recipe, folder: Path, deps: dict[str, Path]) -> dict[str, Any]:
    for stale in folder.glob(".build-*"):  # left by a killed build: we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (folder / MANIFEST).unlink()
    staging = Path(tempfile.mkdtemp(dir=folder, prefix=".build-"))
    try:
        start = time.perf_counter()
        cpu_start = time.process_time()
        built = recipe.resolve_builder()(staging, deps)
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
        files = {}
        for role, name in recipe.files.items():
            path = staging / name
            if not path.is_file():
                raise ZooError(f"zoo entry {recipe.name!r}: the builder did not write {name} ({role})")
            files[name] = {
                "role": role,
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "how": built.how.get(name, ""),
            }
        for name in files:
            os.replace(staging / name, folder / name)
        manifest = {
            "entry": recipe.name,
            "recipe_version": recipe.version,
            "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "build_seconds": round(seconds, 1),
            "build_cpu_seconds": round(cpu_seconds, 1),
            "built_with": tool_versions(*recipe.tools),
            "sources": [s.record() for s in recipe.sources],
            "depends": dependency_files(deps),
            "metric": recipe.metric,
            "notes": recipe.notes,
            "files": files,
            "properties": built.properties,
        }
        write_json_atomic(folder / MANIFEST, manifest)
        log(f"built {recipe.name} in {seconds:.1f}s")
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
