"""Model integrity: the sha256 of the model and of its external data files that the core records in
`<stem>.edgeplug.json` beside the optimized model are checked before guarded inference; external data must
stay inside the model's folder."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
from edgeplug import GuardRefusal
from edgeplug.context import sha256_file

ExternalHashes = tuple[tuple[str, str], ...]  # (file name beside the model, sha256), sorted
StatKey = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns


@dataclass(frozen=True)
class Verified:
    """A model file that passed the checks: its sha256, whether a sidecar vouched for it, whether it keeps
    tensors in external data files, and the sha256 of those files as checked against the sidecar."""

    sha256: str
    recorded: bool
    external: bool
    external_sha256: ExternalHashes = ()


@dataclass(frozen=True)
class _Sidecar:
    sha256: str
    external_data: dict[str, str] | None  # None: the sidecar predates `external_data` (records none)


# Verified files by (path, stat of the model, stat of the sidecar), each stat being (inode, size, mtime_ns,
# ctime_ns): ctime cannot be set back by a user, so any write to a file after a check changes the key and
# forces a fresh hash. The stats of the external data files are kept with the entry and compared on a hit.
_cache: dict[tuple[str, StatKey, StatKey | None], tuple[Verified, dict[str, StatKey | None]]] = {}
_lock = threading.Lock()


def sidecar_for(path: Path) -> Path:
    """Where the core writes the run's record of the final model: `<stem>.edgeplug.json` beside it."""
    return path.with_name(f"{path.stem}.edgeplug.json")


def _stat(path: Path) -> StatKey | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def verify_model(path: Path, require_hash: bool, pinned: str | None = None) -> Verified:
    """Hash `path` (and every external data file its sidecar records) and compare with the sidecar and with
    `pinned` (a sha256 given out of band); GuardRefusal on a mismatch, on no hash to compare with when
    `require_hash`, on an unreadable sidecar, on external data escaping the model's folder, or on external
    data the sidecar does not vouch for."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise GuardRefusal(f"model {path} cannot be read: {exc.strerror}") from None
    sidecar = sidecar_for(path)
    key = (str(path.resolve()), (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), _stat(sidecar))
    with _lock:
        cached = _cache.get(key)
    if cached is not None and _still_valid(path, cached, require_hash):
        _check_pinned(path, cached[0].sha256, pinned)
        return cached[0]
    record = _read_sidecar(path, sidecar) if key[2] is not None else None
    if record is None and pinned is None and require_hash:
        raise GuardRefusal(
            f"model {path} has no {sidecar.name} recording its sha256 (write one with `edgeplug run ... "
            "--plugins ...,security`, or pin it with -o security.sha256=HEX), or pass "
            "-o security.require_hash=false to skip the integrity check"
        )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if record is not None and digest != record.sha256:
        raise GuardRefusal(f"model {path} does not match its recorded sha256: tampered or replaced")
    _check_pinned(path, digest, pinned)
    locations = _check_locations(data, path)
    files: dict[str, StatKey | None] = {}
    hashes: ExternalHashes = ()
    if record is not None:
        names = set(locations) | set(record.external_data or {})
        files = {name: _stat(path.parent / name) for name in names}  # before hashing: a later write shows
        hashes = _check_external_hashes(path, sidecar, locations, record.external_data)
    result = Verified(digest, record is not None, bool(locations), hashes)
    if record is not None or pinned is None:  # a pinned-only check is redone: the pin may change per call
        with _lock:
            _cache[key] = (result, files)
    return result


def _still_valid(
    path: Path, cached: tuple[Verified, dict[str, StatKey | None]], require_hash: bool
) -> bool:
    """A cached check holds when it satisfies `require_hash` and no external data file changed since."""
    verified, files = cached
    if not (verified.recorded or not require_hash):
        return False
    return all(_stat(path.parent / name) == stat for name, stat in files.items())


def _check_pinned(path: Path, digest: str, pinned: str | None) -> None:
    if pinned is not None and digest != pinned.strip().lower():
        raise GuardRefusal(
            f"model {path} does not match the pinned sha256 (security.sha256): tampered or replaced"
        )


def _read_sidecar(path: Path, sidecar: Path) -> _Sidecar:
    try:
        record = json.loads(sidecar.read_text())
        digest = str(record["sha256"])
        name = record.get("model", path.name)
        external = record.get("external_data")
        if external is not None and not (
            isinstance(external, Mapping) and all(isinstance(v, str) for v in external.values())
        ):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise GuardRefusal(f"{sidecar} is unreadable or has no sha256; cannot check model {path}") from None
    if name != path.name:
        raise GuardRefusal(f"{sidecar} records model {name!r}, not {path.name!r}: renamed or replaced")
    return _Sidecar(digest, dict(external) if external is not None else None)


def _check_external_hashes(
    path: Path, sidecar: Path, locations: Mapping[str, str], recorded: Mapping[str, str] | None
) -> ExternalHashes:
    """Every external data file the sidecar records must hash to its sha256, and every file the model
    reads its tensors from must be recorded."""
    root = path.parent.resolve()
    for name, digest in sorted((recorded or {}).items()):
        target = (root / name).resolve()
        if os.path.basename(name) != name or name in ("", ".", "..") or not target.is_relative_to(root):
            raise GuardRefusal(
                f"{sidecar} records external data {name!r}, which is not a file beside model {path}; refused"
            )
        if not target.is_file():
            raise GuardRefusal(f"external data file {name} recorded in {sidecar.name} is missing beside {path}")
        if sha256_file(target) != digest.strip().lower():
            raise GuardRefusal(
                f"external data file {name} of model {path} does not match its sha256 recorded in "
                f"{sidecar.name}: tampered or replaced"
            )
    unrecorded = sorted(set(locations) - set(recorded or {}))
    if unrecorded:
        tensor = locations[unrecorded[0]]
        raise GuardRefusal(
            f"model {path} reads tensor {tensor!r} from external data file {unrecorded[0]}, which "
            f"{sidecar.name} records no sha256 for: cannot check it"
        )
    return tuple(sorted((name, digest.strip().lower()) for name, digest in (recorded or {}).items()))


def _check_locations(data: bytes, path: Path) -> dict[str, str]:
    """Refuse external-data locations outside the model's folder (absolute, `..`, or through a symlink) or
    missing; return {normalized location: the first tensor stored there}."""
    try:
        proto = onnx.load_from_string(data)
    except Exception:
        raise GuardRefusal(f"model {path} cannot be parsed as ONNX") from None
    root = path.parent.resolve()
    locations: dict[str, str] = {}
    for tensor in all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(root):
            raise GuardRefusal(
                f"model {path}: tensor {tensor.name!r} points its external data outside the model's folder "
                f"({location}); refused"
            )
        if not target.is_file():
            raise GuardRefusal(f"model {path}: tensor {tensor.name!r}: its external data file {location} is missing")
        locations.setdefault(os.path.normpath(location), tensor.name)
    return locations


def all_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model that may hold external data: initializers (dense and sparse) and
    tensor attributes (Constant values and others), in the main graph, every subgraph, and functions."""
    yield from _graph_tensors(proto.graph)
    for function in proto.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from _sparse_tensors(sparse)
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("sparse_tensor"):
            yield from _sparse_tensors(attr.sparse_tensor)
        for sparse in attr.sparse_tensors:
            yield from _sparse_tensors(sparse)
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for sub in attr.graphs:
            yield from _graph_tensors(sub)


def _sparse_tensors(sparse: onnx.SparseTensorProto) -> Iterator[onnx.TensorProto]:
    yield sparse.values
    yield sparse.indices

