"""The cascade's manifest `cascade/cascade.json`: what the artifact is, written by compile and read (and
checked) by the runner before any model loads.

    {"format": "edgeplug-cascade", "version": 1,
     "models": [{"file": "0-digits_cnn-STEP.onnx", "sha256": HEX, "cost_ms": 0.02, "origin": "..."}, ...],
     "gate": {"kind": "confidence", "output": "logits", "softmax": true, "escalates": "below", ...},
     "thresholds": [0.93],            # one per model but the last; "inf"/"-inf" for never/always
     "route_output": "cascade_model",
     "files": {"gate.py": HEX},       # other files the cascade loads (a user's gate file), hashed
     "budget": {"min_top1": 0.99}, "selection": {...}}

File names are plain names inside the manifest's folder; every model's sha256 is checked before a
session is made from exactly the bytes hashed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeplug.plugin_api import ModelError

from .gates import Gate

FORMAT = "edgeplug-cascade"
VERSION = 1
NAME = "cascade.json"
FOLDER = "cascade"
MAX_BYTES = 4 * 2**20
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Entry:
    """One model of the cascade: its file (beside the manifest), sha256, cost per input, origin."""

    file: str
    sha256: str
    cost_ms: float
    origin: str = ""


@dataclass
class Manifest:
    models: list[Entry]
    gate: Gate
    thresholds: list[float]
    route_output: str
    files: dict[str, str] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "models": [
                {"file": m.file, "sha256": m.sha256, "cost_ms": m.cost_ms, "origin": m.origin}
                for m in self.models
            ],
            "gate": self.gate.as_dict(),
            "thresholds": [json_number(t) for t in self.thresholds],
            "route_output": self.route_output,
            "files": dict(self.files),
            "budget": self.budget,
            "selection": self.selection,
        }

    def write(self, path: Path) -> Path:
        """Write atomically (a temporary file beside it, then renamed)."""
        text = json.dumps(self.as_dict(), indent=2, allow_nan=False) + "\n"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def parse(cls, data: bytes, where: str) -> Manifest:
        """The manifest in `data`; ModelError saying what is wrong with it."""
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("format") != FORMAT:
                raise ValueError(f"not an {FORMAT} manifest")
            if raw.get("version") != VERSION:
                raise ValueError(f"unknown version {raw.get('version')!r}")
            models = [_entry(m) for m in raw["models"]]
            if len(models) < 2:
                raise ValueError("fewer than two models")
            if len({m.file for m in models}) != len(models):
                raise ValueError("a model file is listed twice")
            thresholds = [parse_number(t) for t in raw["thresholds"]]
            if len(thresholds) != len(models) - 1:
                raise ValueError(f"{len(thresholds)} thresholds for {len(models)} models")
            files = raw.get("files") or {}
            if not isinstance(files, Mapping):
                raise ValueError("files is not an object")
            route = raw["route_output"]
            if not isinstance(route, str) or not route:
                raise ValueError("route_output is not a name")
            manifest = cls(
                models=models,
                gate=Gate.from_dict(raw["gate"]),
                thresholds=thresholds,
                route_output=route,
                files={plain_name(k): digest(v) for k, v in files.items()},
                budget=dict(raw.get("budget") or {}),
                selection=dict(raw.get("selection") or {}),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelError(f"cascade manifest {where} is unreadable ({exc}); refused") from None
        return manifest


def _entry(raw: Any) -> Entry:
    if not isinstance(raw, Mapping):
        raise TypeError("a model entry is not an object")
    cost = float(raw.get("cost_ms") or 0.0)
    return Entry(plain_name(raw["file"]), digest(raw["sha256"]), cost, str(raw.get("origin") or ""))


def plain_name(value: Any) -> str:
    """A file name inside the cascade folder: no folder part, no `..`, nothing hidden."""
    if not isinstance(value, str) or not _FILE.fullmatch(value) or ".." in value:
        raise ValueError(f"{value!r} is not a plain file name")
    return value


def digest(value: Any) -> str:
    if not isinstance(value, str) or not _HEX.fullmatch(value.strip().lower()):
        raise ValueError(f"{value!r} is not a sha256 (64 hex digits)")
    return value.strip().lower()


def json_number(value: float) -> float | str:
    """A threshold for JSON: the number, or "inf"/"-inf" (never/always go on)."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def parse_number(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("a threshold is not a number")
    number = float(value)
    if math.isnan(number):
        raise ValueError("a threshold is NaN")
    return number


def read_plain(folder: Path, name: str) -> bytes:
    """The bytes of `folder/name`, a regular file opened without following a symbolic link; ModelError
    when it is missing, a link or not a regular file."""
    path = Path(folder) / plain_name(name)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ModelError(f"cascade file {path} is missing") from None
    except OSError as exc:
        raise ModelError(f"cascade file {path} cannot be opened ({exc.strerror}); refused") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ModelError(f"cascade file {path} is not a regular file; refused")
        return fh.read()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_bytes(data: bytes, expected: str, path: Path, what: str) -> None:
    if sha256(data) != expected:
        raise ModelError(
            f"{what} {path} does not match the sha256 its cascade manifest records: tampered or replaced; "
            "refused"
        )


def model_files(manifest: Manifest) -> Sequence[str]:
    return [m.file for m in manifest.models]
