"""The objects plugins receive besides Model: RunContext, Artifact, Runner, InferenceRequest/Result."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .errors import DataError
from .options import Tolerance

if TYPE_CHECKING:
    from .data import Dataset
    from .model import Model

T = TypeVar("T")
Inputs = dict[str, np.ndarray]
Runner = Callable[[Inputs], dict[str, np.ndarray]]


@dataclass
class RunContext:
    """What one plugin sees during a run: its options, tolerance, the data, the chain and a workdir."""

    plugin: str
    options: dict[str, Any]
    tolerance: Tolerance
    data: Dataset
    chain: tuple[str, ...]
    workdir: Path
    threads: int = 1
    seed: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    quiet: bool = False
    data_path: str | None = None  # the raw --data value, for load_model (ctx.data is None then)
    user_options: frozenset[str] = frozenset()  # the option keys the user set (the rest are defaults)

    @property
    def following(self) -> tuple[str, ...]:
        """The plugins selected after this one."""
        if self.plugin in self.chain:
            return self.chain[self.chain.index(self.plugin) + 1 :]
        return ()

    def record(self, key: str, value: Any) -> None:
        """Add a JSON-serialisable entry to this step's section of report.json."""
        self.details[key] = value

    def log(self, message: str) -> None:
        """A line on the terminal (stderr), prefixed with the plugin name."""
        if not self.quiet:
            print(f"[{self.plugin}] {message}", file=sys.stderr, flush=True)

    def progress(self, items: Iterable[T], label: str, total: int | None = None) -> Iterator[T]:
        """Iterate with a progress line on stderr (only when stderr is a terminal)."""
        from .progress import progress

        return progress(items, f"[{self.plugin}] {label}", total=total, quiet=self.quiet)

    def require_real_data(self, what: str) -> None:
        """Refuse generated inputs for work that needs real data, unless the user asked for `--data random`."""
        if self.data.source == "generated":
            raise DataError(
                f"{self.plugin}: {what} needs real data: pass --data FILE.npz "
                "(or --data random to accept random inputs, which ruins accuracy)"
            )
        if self.data.source == "random":
            self.log(f"warning: {what} runs on random data; the result's accuracy is meaningless")


@dataclass(frozen=True)
class Artifact:
    """A deployable output: its files, their sha256, its kind (onnx, tensorrt-engine, c-library)."""

    kind: str
    files: tuple[Path, ...]
    sha256: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, kind: str, files: Iterable[Path], **info: Any) -> Artifact:
        paths = tuple(Path(f) for f in files)
        return cls(kind, paths, {p.name: sha256_file(p) for p in paths}, dict(info))

    @property
    def main(self) -> Path:
        return self.files[0]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class InferenceResult:
    """The outputs of a guarded inference, and whether a guard abstained or flagged something."""

    outputs: dict[str, np.ndarray]
    abstained: bool = False
    reason: str | None = None
    flags: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferenceRequest:
    """One guarded inference. Guards may replace `run`; `options` holds each plugin's options."""

    model_path: Path
    inputs: Inputs
    run: Runner
    options: dict[str, dict[str, Any]]
    model: Model | None = None
    artifact: Artifact | None = None
    state: dict[str, Any] = field(default_factory=dict)
    threads: int = 1
