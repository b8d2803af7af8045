"""FGSM against an ONNX classifier with the gradient taken by central finite differences through onnxruntime
(no autodiff framework, no model hub), and the feature-squeezing evaluation built on it.

Shared by tests/security/test_squeeze_fgsm.py and benchmarks/security_fgsm.py."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from edgeplug_security.squeeze import Squeezer, threshold_for

Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def ort_runner(path: str, input_name: str = "input", output: str = "logits", chunk: int = 4096) -> Run:
    """A batched onnxruntime runner (the model's batch dimension must be dynamic)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feed[input_name]
        parts = [sess.run([output], {input_name: x[i : i + chunk]})[0] for i in range(0, len(x), chunk)]
        return {output: np.concatenate(parts)}

    return run


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def loss_gradient(
    run: Run,
    x: np.ndarray,
    labels: np.ndarray,
    h: float = 1e-3,
    input_name: str = "input",
    output: str = "logits",
) -> np.ndarray:
    """d CE(f(x), y) / dx by central differences: 2 * (pixels) perturbed copies per image, in one batch."""
    n, pixels = len(x), int(np.prod(x.shape[1:]))
    flat = x.reshape(n, pixels).astype(np.float64)
    eye = np.eye(pixels) * h
    plus = (flat[:, None, :] + eye[None]).reshape(-1, *x.shape[1:]).astype(np.float32)
    minus = (flat[:, None, :] - eye[None]).reshape(-1, *x.shape[1:]).astype(np.float32)
    repeated = np.repeat(labels, pixels)
    up = cross_entropy(run({input_name: plus})[output].astype(np.float64), repeated)
    down = cross_entropy(run({input_name: minus})[output].astype(np.float64), repeated)
    return ((up - down) / (2 * h)).reshape(x.shape)


def fgsm(x: np.ndarray, gradient: np.ndarray, eps: float, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Goodfellow et al.'s fast gradient sign method, clipped to the valid pixel range."""
    return np.clip(x + eps * np.sign(gradient), low, high).astype(np.float32)


@dataclass(frozen=True)
class Detection:
    eps: float
    attacked: int  # correctly classified clean images attacked
    successful: int  # attacks that changed the prediction
    detected: int  # successful attacks flagged
    clean_fpr: float  # clean held-out images flagged

    @property
    def success_rate(self) -> float:
        return self.successful / max(self.attacked, 1)

    @property
    def detection_rate(self) -> float:
        return self.detected / max(self.successful, 1)


def calibrate(run: Run, squeezer: Squeezer, clean: np.ndarray, fpr: float) -> Squeezer:
    """The squeezer with the threshold flagging `fpr` of the clean calibration images."""
    scores = squeeze_scores(run, squeezer, clean)
    return Squeezer(
        **{**squeezer.as_dict(), "threshold": threshold_for(scores, fpr), "fpr": fpr, "samples": len(clean)}
    )


def squeeze_scores(run: Run, squeezer: Squeezer, x: np.ndarray) -> np.ndarray:
    feed = {squeezer.input: x}
    return squeezer.scores(run, feed, run(feed)[squeezer.output])


def evaluate(
    run: Run,
    squeezer: Squeezer,
    x: np.ndarray,
    labels: np.ndarray,
    eps_values: Sequence[float],
    gradient: np.ndarray | None = None,
) -> list[Detection]:
    """Detection rate of successful FGSM attacks and false-positive rate on the clean images `x`."""
    clean_scores = squeeze_scores(run, squeezer, x)
    clean_fpr = float(np.mean(clean_scores > squeezer.threshold))
    correct = run({squeezer.input: x})[squeezer.output].argmax(1) == labels
    xs, ys = x[correct], labels[correct]
    grad = loss_gradient(run, xs, ys) if gradient is None else gradient[correct]
    rows = []
    for eps in eps_values:
        adv = fgsm(xs, grad, eps)
        success = run({squeezer.input: adv})[squeezer.output].argmax(1) != ys
        scores = squeeze_scores(run, squeezer, adv[success]) if success.any() else np.zeros(0)
        rows.append(
            Detection(eps, len(xs), int(success.sum()), int((scores > squeezer.threshold).sum()), clean_fpr)
        )
    return rows
