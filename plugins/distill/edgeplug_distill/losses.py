"""Distillation losses: KL divergence on temperature-softened logits (plus the logits matched directly),
normalised MSE plus cosine on other float outputs and on matched features, and the labels' cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from edgeplug.plugin_api import is_logits

LOGITS, DENSE, SKIP = "logits", "dense", "skip"
EPS = 1e-8


def kind_of(array: Any) -> str:
    """How an output is matched: logits by KL divergence, other float tensors densely, the rest not at all."""
    if is_logits(array):
        return LOGITS
    if isinstance(array, np.ndarray) and array.dtype.kind == "f" and array.size:
        return DENSE
    return SKIP


@dataclass(frozen=True)
class LossWeights:
    temperature: float
    alpha: float  # weight of the labels' cross-entropy (when labels exist)
    feature_weight: float


def distillation_loss(
    torch: Any,
    student: Sequence[Any],
    teacher: Sequence[Any],
    kinds: Sequence[str],
    weights: LossWeights,
    labels: Any | None = None,
    label_mask: Any | None = None,
    features: int = 0,
) -> tuple[Any, dict[str, float]]:
    """The training loss of a batch and its parts. `student`/`teacher` hold the outputs (matched by
    `kinds`) followed by `features` feature tensors; `labels` (with `label_mask` of the samples whose label
    holds) go to the first logits output."""
    outputs = len(kinds)
    parts: dict[str, Any] = {}
    match = []
    for s, t, kind in zip(student[:outputs], teacher[:outputs], kinds):
        if kind == LOGITS:
            # KL fixes the logits only up to a per-sample constant; verification compares the logits
            # themselves (cosine, max error), so they are matched directly too
            match.append(soft_kl(torch, s, t, weights.temperature) + dense(torch, s, t))
        elif kind == DENSE:
            match.append(dense(torch, s, t))
    teacher_loss = torch.stack(match).mean() if match else None
    if teacher_loss is not None:
        parts["teacher"] = teacher_loss
    total = teacher_loss
    if labels is not None and weights.alpha > 0 and LOGITS in kinds:
        logits = student[kinds.index(LOGITS)]
        mask = label_mask if label_mask is not None else torch.ones(len(labels), dtype=torch.bool)
        if bool(mask.any()):
            ce = torch.nn.functional.cross_entropy(logits[mask], labels[mask])
            parts["labels"] = ce
            total = ce * weights.alpha if total is None else (1 - weights.alpha) * total + weights.alpha * ce
    if features and weights.feature_weight > 0:
        pairs = zip(student[outputs : outputs + features], teacher[outputs : outputs + features])
        feature_loss = torch.stack([dense(torch, s, t) for s, t in pairs]).mean()
        parts["features"] = feature_loss
        total = (
            weights.feature_weight * feature_loss
            if total is None
            else total + weights.feature_weight * feature_loss
        )
    if total is None:
        raise ValueError("nothing to distill: no float output to match")
    return total, {k: float(v.detach()) for k, v in parts.items()}


def soft_kl(torch: Any, student: Any, teacher: Any, temperature: float) -> Any:
    """KL(teacher || student) of the softened distributions, times T^2 (Hinton et al.) so that gradients
    keep their scale across temperatures."""
    functional = torch.nn.functional
    log_s = functional.log_softmax(student / temperature, dim=-1)
    log_t = functional.log_softmax(teacher / temperature, dim=-1)
    return functional.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature**2


def dense(torch: Any, student: Any, teacher: Any) -> Any:
    """MSE normalised by the teacher's mean square (scale-free) plus 1 - the mean per-sample cosine."""
    s = student.reshape(len(student), -1).float()
    t = teacher.reshape(len(teacher), -1).float()
    mse = ((s - t) ** 2).mean() / ((t**2).mean() + EPS)
    cosine = torch.nn.functional.cosine_similarity(s, t, dim=1, eps=EPS).mean()
    return mse + (1 - cosine)
