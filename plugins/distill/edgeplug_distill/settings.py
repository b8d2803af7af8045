"""The distill plugin's options, declared once: the core parses `-o distill.KEY=VALUE` and `[distill]`
tables into `DistillSettings` and hands the instance to the plugin as `ctx.settings`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeplug import option
from edgeplug.plugin_api import parse_duration

# Distillation changes what the model computes by design: its step is judged against the chain's original
# model (Capabilities.judged_against), by default on the worst per-sample cosine of any output; a budget
# the run names (--metric top1, --budget accuracy=0.98) replaces this default.
DEFAULT_MIN_COSINE = 0.98


@dataclass
class DistillSettings:
    """Knowledge distillation from the chain's original model into the current one."""

    epochs: int = option(
        10, "passes over the training data (`steps` wins when set)", minimum=1, maximum=100000
    )
    steps: int | None = option(None, "optimizer steps in all; wins over `epochs`", minimum=1)
    lr: float = option(
        1e-4,
        "Adam learning rate after a warm-up, decayed to 0 on a cosine schedule (fine-tuning a trained model: "
        "1e-3 wrecks a pretrained MobileNetV2 in one epoch)",
        minimum=1e-9,
        maximum=1.0,
    )
    batch_size: int = option(32, "samples per optimizer step", minimum=1, maximum=65536)
    temperature: float = option(
        4.0, "softmax temperature of the KL divergence on logits outputs", minimum=0.05, maximum=100.0
    )
    alpha: float = option(
        0.1,
        "weight of the labels' cross-entropy when the training data has labels (0: the teacher only)",
        minimum=0.0,
        maximum=1.0,
    )
    feature_weight: float = option(
        0.0,
        "weight of feature matching on intermediate tensors with the same name and shape in both models "
        "(0: off)",
        minimum=0.0,
        maximum=100.0,
    )
    seed: int | None = option(None, "seed of the training order and augmentation (default: the run's --seed)")
    time_budget_s: str | None = option(
        None, "stop training after this long (90, 90s, 30m, 1h30m); the best checkpoint so far is kept"
    )
    augment: bool = option(
        True,
        "random horizontal flips and shifted crops, each of half the samples, of image inputs (4-D float)",
    )
    data: Path | None = option(
        None,
        "training data (.npz, folder of .npy or of images; the formats of --data); "
        "default: the run's calibration split",
    )
    selection_fraction: float = option(
        0.2,
        "share of the training data held out to choose the best epoch (never the validation data the "
        "step is verified on)",
        minimum=0.05,
        maximum=0.5,
    )
    min_cosine: float = option(
        DEFAULT_MIN_COSINE,
        "smallest per-sample cosine of any output against the chain's ORIGINAL model",
    )

    def time_budget(self) -> float | None:
        """`time_budget_s` in seconds (OptionError naming distill.time_budget_s when it is not a duration)."""
        if self.time_budget_s is None:
            return None
        return parse_duration(self.time_budget_s, what="distill.time_budget_s")
