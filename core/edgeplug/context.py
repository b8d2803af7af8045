"""The objects plugins receive besides Model: RunContext, Artifact, Runner, InferenceRequest/Result."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .capabilities import FORMS, ChainView
from .errors import DataError
from .tolerance import Tolerance

if TYPE_CHECKING:
    from .data import Dataset
    from .metrics import MetricSpec
    from .model import Model
    from .verify import Verdict

T = TypeVar("T")
Inputs = dict[str, np.ndarray]
Runner = Callable[[Inputs], dict[str, np.ndarray]]


@dataclass
class RunContext:
    """What one plugin sees during a run: its options, tolerance, the data, the chain and a workdir; the
    chain's original model and its outputs (`original`, `reference`), the previous model's outputs
    (`previous`), the run's metrics, and `check`/`judge` to verify a candidate exactly as the core will.
    The same RunContext serves a plugin for the whole run: what `pre_optimize` puts in `state` is there in
    `transform_graph` and `compile`."""

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
    original: Model | None = None  # the model the chain started from
    reference: dict[str, Any] | None = None  # its outputs on ctx.data.validation
    previous: dict[str, Any] | None = None  # the outputs of the model this step receives
    metrics: dict[str, MetricSpec] = field(default_factory=dict)  # the run's metrics (--metric)
    user_budgets: frozenset[str] = frozenset()  # metrics whose budget the user set (judged vs original)
    view: ChainView = field(default_factory=lambda: ChainView(FORMS, frozenset(), frozenset()))
    qdq_as_float: bool = False  # the target computes int8 exactly: Q/DQ is evaluated as float operators
    state: dict[str, Any] = field(default_factory=dict)  # per-run plugin state
    settings: Any = None  # the plugin's settings dataclass instance, when it declares one
    judged_against: str = "previous"  # "original" when the plugin's capabilities say so (distillation)

    @property
    def downstream(self) -> frozenset[str]:
        """Model forms every later plugin consumes: what this step may emit (capabilities.py)."""
        return self.view.downstream

    @property
    def upstream(self) -> frozenset[str]:
        """Model forms earlier plugins may produce."""
        return self.view.upstream

    @property
    def ahead(self) -> frozenset[str]:
        """Model forms later plugins may produce (e.g. int8 Q/DQ when a quantizer follows)."""
        return self.view.ahead

    @property
    def target(self) -> frozenset[str]:
        """Properties of the target a later compile plugin builds for (int8-exact, symmetric-int8, ...)."""
        return self.view.target

    def evaluate(self, model: Model, samples: list[dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
        """The model's outputs on `samples` (default: the validation samples), run as verification runs it."""
        from .verify import outputs_of

        chosen = self.data.validation if samples is None else samples
        return outputs_of(model, chosen, self.threads, qdq_as_float=self.qdq_as_float)

    def judge(
        self,
        candidate: dict[str, Any],
        *,
        reference: dict[str, Any] | None = None,
        original: dict[str, Any] | None = None,
        labels: np.ndarray | None = None,
        tolerance: Tolerance | None = None,
        samples: int | None = None,
    ) -> Verdict:
        """Judge outputs with this step's tolerance and the run's metrics, as the core's verification does.
        Defaults are the validation set's: `reference` the previous model's outputs, `original` the chain's
        original outputs, `labels` the validation labels; pass all three for another set of samples."""
        from .verify import judge

        full = reference is None
        return judge(
            self.previous if reference is None else reference,
            candidate,
            tolerance or self.tolerance,
            specs=self.metrics,
            labels=(self.data.validation_labels if self.data is not None else None) if full else labels,
            samples=samples or (len(self.data.validation) if full and self.data is not None else None),
            original=self.reference if full else original,
            user_budgets=tuple(self.user_budgets),
            judged_against=self.judged_against,
        )

    def check(self, model: Model) -> Verdict:
        """Run `model` on the validation samples and judge it: what the core decides after this step."""
        return self.judge(self.evaluate(model))

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
        self.data.require_calibration(self.plugin, what)  # one-sample --data holds no calibration samples


@dataclass(frozen=True)
class Artifact:
    """A deployable output: its files, their sha256, its kind (onnx, tensorrt-engine, c-library, cascade),
    JSON-serialisable `info`, the `tolerance` the core verifies it with (None: the compile plugin's step
    tolerance), and the `reference` model it is verified against (None: the chain's final model; a cascade
    names its largest model)."""

    kind: str
    files: tuple[Path, ...]
    sha256: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)
    tolerance: Tolerance | None = None
    reference: Path | None = None

    @classmethod
    def of(
        cls,
        kind: str,
        files: Iterable[Path],
        tolerance: Tolerance | None = None,
        reference: Path | None = None,
        **info: Any,
    ) -> Artifact:
        paths = tuple(Path(f) for f in files)
        return cls(kind, paths, {p.name: sha256_file(p) for p in paths}, dict(info), tolerance, reference)

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
