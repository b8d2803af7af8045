"""The samples distillation trains on, and the selection split carved from them to choose the checkpoint.

The training data is the run's calibration split, or `distill.data` read with the core's data loading.
The selection split is held out of it, so the checkpoint is never chosen on the validation samples the
core verifies and reports the step on; `distill.data` samples identical to a validation sample are dropped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from edgeplug import DataError, MissingDependencyError, Model, RunContext

Sample = dict[str, np.ndarray]
MIN_TRAINING_SAMPLES = 4


@dataclass
class Split:
    """Training and selection items (input dicts, a batch of one or of the model's fixed batch each)."""

    train: list[Sample]
    train_labels: list[np.ndarray] | None  # one row of labels per training item
    selection: list[Sample]
    selection_labels: np.ndarray | None
    source: str
    dropped: int = 0  # samples of distill.data identical to a validation sample

    @property
    def train_samples(self) -> int:
        return sum(_count(s) for s in self.train)

    @property
    def selection_samples(self) -> int:
        return sum(_count(s) for s in self.selection)

    def summary(self) -> dict[str, object]:
        return {
            "source": self.source,
            "training_samples": self.train_samples,
            "selection_samples": self.selection_samples,
            "labels": self.train_labels is not None,
            "dropped_as_validation_duplicates": self.dropped,
        }


def _count(sample: Sample) -> int:
    return len(next(iter(sample.values())))


def _digest(sample: Sample) -> str:
    digest = hashlib.sha256()
    for name in sorted(sample):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(sample[name]).tobytes())
    return digest.hexdigest()


def load_file(path: Path, model: Model, seed: int) -> tuple[list[Sample], np.ndarray | None]:
    """Every sample of a data file (both halves of the core's split), with its labels when it has them."""
    try:
        from edgeplug.plugin_api import load_data
    except ImportError:
        raise MissingDependencyError(
            "distill.data needs an edgeplug core whose plugin API exports load_data; upgrade edgeplug"
        ) from None
    data = load_data(path, model, seed=seed)
    samples = [*data.calibration, *data.validation]
    labels = None
    if data.calibration_labels is not None and data.validation_labels is not None:
        labels = np.concatenate([data.calibration_labels, data.validation_labels])
    return samples, labels


def split(ctx: RunContext, model: Model, data: Path | None, fraction: float, seed: int) -> Split:
    """The training pool (calibration split or `data`) divided into training and selection items."""
    dropped = 0
    if data is None:
        samples, labels = list(ctx.data.calibration), ctx.data.calibration_labels
        source = f"the run's calibration split ({ctx.data.description})"
    else:
        samples, labels = load_file(Path(data), model, seed)
        held = {_digest(s) for s in ctx.data.validation}
        keep = [i for i, s in enumerate(samples) if _digest(s) not in held]
        dropped = len(samples) - len(keep)
        samples = [samples[i] for i in keep]
        labels = None if labels is None else labels[keep]
        source = str(data)
    total = sum(_count(s) for s in samples)
    if total < MIN_TRAINING_SAMPLES or len(samples) < 2:
        raise DataError(
            f"distill: {source} holds {total} samples (after removing validation duplicates: {dropped}); "
            f"distillation needs at least {MIN_TRAINING_SAMPLES}: pass more data with --data or distill.data"
        )
    order = np.random.default_rng(seed).permutation(len(samples))
    cut = min(max(1, round(len(samples) * fraction)), len(samples) - 1)
    chosen, rest = order[:cut], order[cut:]
    rows = _label_rows(samples, labels)
    return Split(
        train=[samples[i] for i in rest],
        train_labels=None if rows is None else [rows[i] for i in rest],
        selection=[samples[i] for i in chosen],
        selection_labels=None if rows is None else np.concatenate([rows[i] for i in chosen]),
        source=source,
        dropped=dropped,
    )


def _label_rows(samples: list[Sample], labels: np.ndarray | None) -> list[np.ndarray] | None:
    """Labels cut to match the items (an item holds one sample, or the model's fixed batch)."""
    if labels is None:
        return None
    rows, start = [], 0
    for sample in samples:
        count = _count(sample)
        rows.append(np.asarray(labels[start : start + count]))
        start += count
    return rows if start == len(labels) else None
