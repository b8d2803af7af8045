"""Model integrity: the sha256 the core records in `<stem>.edgeplug.json` beside the optimized model is
checked before guarded inference; external data must stay inside the model's folder."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import onnx
from edgeplug import GuardRefusal, ModelError
from edgeplug.model import check_external_data


@dataclass(frozen=True)
class Verified:
    """A model file that passed the checks: its sha256, whether a sidecar vouched for it, external data."""

    sha256: str
    recorded: bool
    external: bool


# Verified files by (path, inode, size, mtime_ns, ctime_ns): ctime cannot be set back by a user, so any
# write to the file after a check changes the key and forces a fresh hash.
_cache: dict[tuple[str, int, int, int, int], Verified] = {}
_lock = threading.Lock()


def sidecar_for(path: Path) -> Path:
    """Where the core writes the run's record of the final model: `<stem>.edgeplug.json` beside it."""
    return path.with_name(f"{path.stem}.edgeplug.json")


def verify_model(path: Path, require_hash: bool, pinned: str | None = None) -> Verified:
    """Hash `path` and compare with its sidecar and with `pinned` (a sha256 given out of band); GuardRefusal
    on a mismatch, on no hash to compare with when `require_hash`, on an unreadable sidecar, or on
    external data escaping the model's folder."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise GuardRefusal(f"model {path} cannot be read: {exc.strerror}") from None
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    sidecar = sidecar_for(path)
    with _lock:
        cached = _cache.get(key)
    if cached is not None and cached.recorded == sidecar.exists() and (cached.recorded or not require_hash):
        _check_pinned(path, cached.sha256, pinned)
        return cached
    recorded = _recorded_sha256(path, sidecar) if sidecar.exists() else None
    if recorded is None and pinned is None and require_hash:
        raise GuardRefusal(
            f"model {path} has no {sidecar.name} recording its sha256 (write one with `edgeplug run ... "
            "--plugins ...,security`, or pin it with -o security.sha256=HEX), or pass "
            "-o security.require_hash=false to skip the integrity check"
        )
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if recorded is not None and digest != recorded:
        raise GuardRefusal(f"model {path} does not match its recorded sha256: tampered or replaced")
    _check_pinned(path, digest, pinned)
    external = _check_external(data, path)
    result = Verified(digest, recorded is not None, external)
    if recorded is not None or pinned is None:  # a pinned-only check is redone: the pin may change per call
        with _lock:
            _cache[key] = result
    return result


def _check_pinned(path: Path, digest: str, pinned: str | None) -> None:
    if pinned is not None and digest != pinned.strip().lower():
        raise GuardRefusal(
            f"model {path} does not match the pinned sha256 (security.sha256): tampered or replaced"
        )


def _recorded_sha256(path: Path, sidecar: Path) -> str:
    try:
        record = json.loads(sidecar.read_text())
        digest = str(record["sha256"])
        name = record.get("model", path.name)
    except (OSError, ValueError, KeyError, TypeError):
        raise GuardRefusal(f"{sidecar} is unreadable or has no sha256; cannot check model {path}") from None
    if name != path.name:
        raise GuardRefusal(f"{sidecar} records model {name!r}, not {path.name!r}: renamed or replaced")
    return digest


def _check_external(data: bytes, path: Path) -> bool:
    """Refuse external-data locations outside the model's folder (absolute, `..`, or through a symlink)."""
    try:
        proto = onnx.load_from_string(data)
    except Exception:
        raise GuardRefusal(f"model {path} cannot be parsed as ONNX") from None
    try:
        check_external_data(proto, path.parent)
    except ModelError as exc:
        raise GuardRefusal(f"model {path}: {exc}") from None
    external = any(
        t.data_location == onnx.TensorProto.EXTERNAL
        for t in onnx.external_data_helper._get_all_tensors(proto)
    )
    return external
