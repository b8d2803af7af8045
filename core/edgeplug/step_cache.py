"""A content-addressed cache of transform steps, shared by runs and search trials (and safe with several
workers): a step's result is keyed by everything it depends on — the input model's bytes, the plugin and its
version, its options and tolerance, what the chain around it consumes and targets, the data, the library
versions, and the CPU and thread count where the plugin measures the machine (quant's timed choice)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ENV_VAR = "EDGEPLUG_CACHE"


def default_folder() -> Path:
    """$EDGEPLUG_CACHE, else ~/.cache/edgeplug/steps."""
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "edgeplug" / "steps")


def data_fingerprint(samples: Sequence[Mapping[str, np.ndarray]], labels: np.ndarray | None = None) -> str:
    digest = hashlib.sha256()
    for sample in samples:
        for name in sorted(sample):
            array = np.ascontiguousarray(sample[name])
            digest.update(name.encode())
            digest.update(str(array.dtype).encode() + str(array.shape).encode())
            digest.update(array.tobytes())
    if labels is not None:
        digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    if callable(value):
        return f"{getattr(value, '__module__', '?')}:{getattr(value, '__qualname__', repr(value))}"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def step_key(parts: Mapping[str, Any]) -> str:
    """The sha256 of a step's dependencies (any JSON-able mapping; sets are sorted, callables named)."""
    return hashlib.sha256(json.dumps(_jsonable(parts), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class CachedStep:
    """A cached transform: the model it returned (None: not applicable) and what it recorded."""

    proto: onnx.ModelProto | None
    details: dict[str, Any]


class StepCache:
    """Entries are folders `<key[:2]>/<key>/` holding `record.json` and, when the step applied, `model.onnx`.
    Writes go to a temporary folder renamed into place, so concurrent writers of one key cannot corrupt it."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder else default_folder()
        self.hits = 0
        self.misses = 0

    def _entry(self, key: str) -> Path:
        return self.folder / key[:2] / key

    def get(self, key: str) -> CachedStep | None:
        entry = self._entry(key)
        try:
            record = json.loads((entry / "record.json").read_text())
            proto = onnx.load(str(entry / "model.onnx")) if record.get("applied") else None
        except Exception:  # a missing, partial or corrupt entry is a miss, rebuilt by the caller
            self.misses += 1
            return None
        if record.get("applied") and hashlib.sha256(proto.SerializeToString()).hexdigest() != record.get(
            "model_sha256"
        ):
            self.misses += 1
            return None
        self.hits += 1
        return CachedStep(proto, record.get("details") or {})

    def put(self, key: str, proto: onnx.ModelProto | None, details: Mapping[str, Any]) -> None:
        entry = self._entry(key)
        if (entry / "record.json").exists() or (proto is not None and proto.ByteSize() > 2**31 - 1):
            return  # present already, or too large for one protobuf file: not cached
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:8]}-", dir=entry.parent))
        try:
            record: dict[str, Any] = {"applied": proto is not None, "details": _jsonable(details)}
            if proto is not None:
                data = proto.SerializeToString()
                (staging / "model.onnx").write_bytes(data)
                record["model_sha256"] = hashlib.sha256(data).hexdigest()
            (staging / "record.json").write_text(json.dumps(record))
            with contextlib.suppress(OSError):  # atomic; fails if another worker got there first
                os.rename(staging, entry)
        finally:
            if staging.exists():
                for item in staging.iterdir():
                    item.unlink()
                staging.rmdir()
