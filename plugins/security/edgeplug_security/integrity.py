"""Model integrity: the run record `<stem>.edgeplug.json` that the core writes beside the optimized model
(edgeplug.run_record) vouches for the model's sha256, its external data files and its compiled artifact;
a pinned `security.sha256` vouches for that record. Checked before guarded inference loads anything.

What `security.sha256` pins: the sha256 of the sidecar file `<stem>.edgeplug.json` when the model has
one (so one pin covers the model, its external data and every artifact file, all hashed in it); the
sha256 of the `.onnx` file itself only for a model without a sidecar, which then may not keep tensors in
external data files (nothing would vouch for them)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
from edgeplug import Artifact, GuardRefusal, ModelError
from edgeplug.plugin_api import RunRecord, sidecar_path

ExternalHashes = tuple[tuple[str, str], ...]  # (path relative to the model's folder, sha256), sorted
StatKey = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns


@dataclass(frozen=True)
class Verified:
    """A model file that passed the checks: its sha256, the run record that vouched for it (None when
    none did), whether it keeps tensors in external data files, and the sha256 of those files as checked
    against the record."""

    sha256: str
    record: RunRecord | None
    external: bool
    external_sha256: ExternalHashes = ()

    @property
    def recorded(self) -> bool:
        return self.record is not None

    @property
    def pinnable(self) -> str:
        """The digest `security.sha256` is compared with: the sidecar's, or the model's without one."""
        return self.record.digest if self.record is not None and self.record.digest else self.sha256


# Verified files by (path, stat of the model, lstat of the sidecar), each stat being (inode, size,
# mtime_ns, ctime_ns): ctime cannot be set back by a user, so any write to a file after a check changes
# the key and forces a fresh hash. The stats of the external data files are kept with the entry and
# compared on a hit.
_cache: dict[tuple[str, StatKey, StatKey | None], tuple[Verified, dict[str, StatKey | None]]] = {}
_lock = threading.Lock()


def sidecar_for(path: Path) -> Path:
    """Where the core writes the run's record of the final model: `<stem>.edgeplug.json` beside it."""
    return sidecar_path(path)


def _stat(path: Path, follow: bool = True) -> StatKey | None:
    try:
        st = path.stat() if follow else path.lstat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def verify_model(path: Path, require_hash: bool, pinned: str | None = None) -> Verified:
    """Hash `path` (and every external data file its run record lists) and compare with the record, and
    the record (or, without one, the model) with `pinned`; GuardRefusal on a mismatch, on no hash to
    compare with when `require_hash`, on an unreadable record, on external data escaping the model's
    folder, or on external data nothing vouches for."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise GuardRefusal(f"model {path} cannot be read: {exc.strerror}") from None
    sidecar = sidecar_for(path)
    key = (
        str(path.resolve()),
        (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns),
        _stat(sidecar, False),
    )
    with _lock:
        cached = _cache.get(key)
    if cached is not None and _still_valid(path, cached, require_hash):
        _check_pinned(path, cached[0], pinned)
        return cached[0]
    try:
        record = RunRecord.find(path) if key[2] is not None else None
    except ModelError as exc:
        raise GuardRefusal(str(exc)) from None
    if record is None and pinned is None and require_hash:
        raise GuardRefusal(
            f"model {path} has no {sidecar.name} recording its sha256 (write one with `edgeplug run ... "
            "--plugins ...,security`, or pin it with -o security.sha256=HEX), or pass "
            "-o security.require_hash=false to skip the integrity check"
        )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        if record is not None:
            record.check_model(path, data)
    except ModelError as exc:
        raise GuardRefusal(str(exc)) from None
    locations = _check_locations(data, path)
    result = Verified(digest, record, bool(locations))
    _check_pinned(path, result, pinned)
    files: dict[str, StatKey | None] = {}
    if record is not None:
        names = set(locations) | {name for name, _ in record.external_data}
        files = {name: _stat(path.parent / name) for name in names}  # before hashing: a later write shows
        result = Verified(digest, record, bool(locations), _check_external_hashes(path, record, locations))
    elif locations and pinned is not None:
        raise GuardRefusal(
            f"model {path} keeps tensors in external data file {sorted(locations)[0]}, which a pinned sha256 "
            f"of the .onnx file alone does not cover: write a run record with `edgeplug run` and pin the "
            f"sha256 of its {sidecar.name}"
        )
    if record is not None or pinned is None:  # a pinned-only check is redone: the pin may change per call
        with _lock:
            _cache[key] = (result, files)
    return result


def _still_valid(path: Path, cached: tuple[Verified, dict[str, StatKey | None]], require_hash: bool) -> bool:
    """A cached check holds when it satisfies `require_hash` and no external data file changed since."""
    verified, files = cached
    if not (verified.recorded or not require_hash):
        return False
    return all(_stat(path.parent / name) == stat for name, stat in files.items())


def _check_pinned(path: Path, verified: Verified, pinned: str | None) -> None:
    if pinned is None:
        return
    pin = pinned.strip().lower()
    if verified.record is None:
        if verified.sha256 != pin:
            raise GuardRefusal(
                f"model {path} does not match the pinned sha256 (security.sha256): tampered or replaced"
            )
        return
    if verified.pinnable == pin:
        return
    sidecar = sidecar_for(path).name
    if verified.sha256 == pin:
        raise GuardRefusal(
            f"security.sha256 pins the run record {sidecar} when the model has one (one pin for the model, "
            f"its external data and its artifact); the value given is the .onnx file's own sha256: pin "
            f"the sha256 of {sidecar} instead"
        )
    raise GuardRefusal(
        f"run record {sidecar} of model {path} does not match the pinned sha256 (security.sha256): "
        "tampered or replaced"
    )


def check_artifact(path: Path, verified: Verified, artifact: Artifact) -> None:
    """The artifact about to run is byte for byte the one the verified (and pinned) record lists."""
    if verified.record is None:
        raise GuardRefusal(
            f"model {path} has no run record {sidecar_for(path).name} vouching for its artifact"
        )
    try:
        verified.record.check_artifact(artifact)
    except ModelError as exc:
        raise GuardRefusal(str(exc)) from None


def _check_external_hashes(path: Path, record: RunRecord, locations: Mapping[str, str]) -> ExternalHashes:
    """Every external data file the record lists must hash to its sha256, and every file the model reads
    its tensors from must be listed."""
    try:
        record.check_external_data(path)
    except ModelError as exc:
        raise GuardRefusal(str(exc)) from None
    recorded = {name for name, _ in record.external_data}
    unrecorded = sorted(set(locations) - recorded)
    if unrecorded:
        tensor = locations[unrecorded[0]]
        raise GuardRefusal(
            f"model {path} reads tensor {tensor!r} from external data file {unrecorded[0]}, which "
            f"{sidecar_for(path).name} records no sha256 for: cannot check it"
        )
    return tuple(sorted(record.external_data))


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
            raise GuardRefusal(
                f"model {path}: tensor {tensor.name!r}: its external data file {location} is missing"
            )
        locations.setdefault(Path(os.path.normpath(location)).as_posix(), tensor.name)
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
