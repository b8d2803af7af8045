"""Output filtering: a confidence floor (below it the result is an explicit abstention with its score) and a
deny list of labels, both on a classifier's logits or probabilities."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .squeeze import probabilities


def classifier_output(outputs: Mapping[str, np.ndarray]) -> str | None:
    """The first float output shaped [N, C>=2] (logits or probabilities), or None."""
    for name, value in outputs.items():
        if value.ndim == 2 and value.shape[1] >= 2 and value.dtype.kind == "f":
            return name
    return None


def confidence(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: top-1 label and its probability (softmax of logits; probabilities taken as they are)."""
    probs = probabilities(np.asarray(values))
    labels = probs.argmax(axis=-1)
    return labels, probs[np.arange(len(probs)), labels]


def abstention(
    labels: np.ndarray, scores: np.ndarray, min_confidence: float, deny_labels: Sequence[int]
) -> str | None:
    """The reason to abstain on this batch, naming the samples, or None when every sample passes."""
    reasons = []
    denied = [i for i, label in enumerate(labels) if int(label) in set(deny_labels)]
    if denied:
        reasons.append(
            "label "
            + ", ".join(f"{int(labels[i])} (sample {i})" for i in denied[:5])
            + " is on the deny list"
        )
    low = [i for i, score in enumerate(scores) if score < min_confidence]
    if low:
        reasons.append(
            "confidence "
            + ", ".join(f"{scores[i]:.3f} (sample {i})" for i in low[:5])
            + f" below min_confidence {min_confidence:g}"
        )
    if not reasons:
        return None
    return "; ".join(reasons)
