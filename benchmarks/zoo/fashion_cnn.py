"""A small ResNet-style CNN trained here on Fashion-MNIST (Debian's dataset-fashion-mnist), seeded, on 2 threads.

Input `input` [N, 1, 28, 28] (pixels / 255, minus 0.2860, over 0.3530), output `logits` [N, 10]. Exported
twice (BatchNorm kept and folded). calibration.npz: 512 training images; evaluation.npz: the 10,000 test
images with `labels`. The test accuracy recorded in the manifest is measured with onnxruntime.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cache import Built, log
from .entries import FASHION_FILES, FASHION_MNIST
from .errors import ZooError
from .onnx_export import check_close, export, op_count, run_batched
from .sources import sha256_file

MEAN, STD = 0.2860, 0.3530
SEED = 0
EPOCHS = 3
BATCH = 128
CALIBRATION = 512
MIN_ACCURACY = 0.90


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip): big-endian magic with the number of dimensions, the dimensions, uint8 data."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Normalised N x 1 x 28 x 28 float32 images and int64 labels of "train" or "t10k", files checked."""
    arrays = []
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{split}-{kind}-ubyte.gz"
        path = Path(FASHION_MNIST) / name
        digest = sha256_file(path)
        if digest != FASHION_FILES[name]:
            raise ZooError(f"{path} has sha256 {digest[:16]}..., not the one dataset-fashion-mnist ships")
        arrays.append(read_idx(path))
    images, labels = arrays
    return ((images.astype(np.float32) / 255 - MEAN) / STD)[:, None], labels.astype(np.int64)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class FashionResNet(nn.Module):
    """conv-BN-ReLU stem (24 ch) and 2x2 max-pool to 14x14, BasicBlocks 24->24 (14x14, identity shortcut) and
    24->48 (7x7, strided 1x1 projection), then a linear layer on the flattened 48x7x7 map: where a garment's
    parts are matters on this data, so the head keeps positions instead of global-average pooling them away."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 24, 3, 1, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.layer1 = BasicBlock(24, 24, 1)
        self.layer2 = BasicBlock(24, 48, 2)
        self.fc = nn.Linear(48 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.layer2(self.layer1(self.stem(x))), 1))


def train(images: np.ndarray, labels: np.ndarray) -> FashionResNet:
    """AdamW with a one-cycle schedule, EPOCHS epochs, seeded data order, 2 threads, deterministic kernels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    try:
        model = FashionResNet()
        steps_per_epoch = len(images) // BATCH
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=6e-3, total_steps=EPOCHS * steps_per_epoch)
        x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
        order = torch.Generator().manual_seed(SEED)
        model.train()
        for epoch in range(EPOCHS):
            perm = torch.randperm(len(images), generator=order)
            for step in range(steps_per_epoch):
                batch = perm[step * BATCH : (step + 1) * BATCH]
                loss = F.cross_entropy(model(x_all[batch]), y_all[batch])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
            log(f"fashion_cnn: epoch {epoch + 1}/{EPOCHS}, last batch loss {loss.item():.3f}")
        return model.eval()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)


def calibration_pick(count: int) -> np.ndarray:
    """Indices of the training images in calibration.npz (the seeded choice `build` makes)."""
    return np.random.default_rng(SEED).choice(count, CALIBRATION, replace=False)


def write_training(path: Path, count: int = 10_000, seed: int = 1) -> Path:
    """`count` labelled training images, none of them in calibration.npz (nor in the test set), written to
    `path` (.npz with `input` and `labels`): training data for distillation, which 512 images do not give."""
    images, labels = load("train")
    rest = np.setdiff1d(np.arange(len(images)), calibration_pick(len(images)))
    pick = np.random.default_rng(seed).choice(rest, min(count, len(rest)), replace=False)
    np.savez(path, input=images[pick], labels=labels[pick])
    return path


def build(out: Path, deps: Mapping[str, Path]) -> Built:
    train_x, train_y = load("train")
    test_x, test_y = load("t10k")
    model = train(train_x, train_y)
    torch.save(model.state_dict(), out / "fashion_cnn.pt")
    pick = calibration_pick(len(train_x))
    np.savez_compressed(out / "calibration.npz", input=train_x[pick], labels=train_y[pick])
    np.savez_compressed(out / "evaluation.npz", input=test_x, labels=test_y)
    meta = {"edgeplug.zoo.entry": "fashion_cnn"}
    files = {"model": out / "fashion_cnn.onnx", "model_bn": out / "fashion_cnn_bn.onnx"}
    with torch.no_grad():
        reference = torch.cat([model(torch.from_numpy(test_x[i : i + 1000])) for i in range(0, 10000, 1000)])
    reference = reference.numpy()
    props: dict[str, object] = {"epochs": EPOCHS, "batch": BATCH, "seed": SEED, "threads": 2}
    props["dataset"] = {f"{FASHION_MNIST}/{name}": sha for name, sha in FASHION_FILES.items()}
    props["parameters"] = sum(p.numel() for p in model.parameters())
    props["torch_test_accuracy"] = float(np.mean(reference.argmax(1) == test_y))
    for role, path in files.items():
        export(
            model,
            (torch.from_numpy(test_x[:1]),),
            path,
            input_names=["input"],
            output_names=["logits"],
            keep_batchnorm=role == "model_bn",
            metadata=meta,
        )
        logits = run_batched(path, {"input": test_x}, batch=1000)
        props[f"{role}_max_abs_diff_vs_torch"] = check_close(path.name, logits, reference)
        props[f"{role}_test_accuracy"] = float(np.mean(logits.argmax(1) == test_y))
        props[f"{role}_batchnorm_nodes"] = op_count(path, "BatchNormalization")
    props["test_accuracy"] = props["model_test_accuracy"]
    if props["test_accuracy"] < MIN_ACCURACY:
        raise ZooError(f"fashion_cnn: test accuracy {props['test_accuracy']:.4f} is under {MIN_ACCURACY}")
    how = (
        f"trained here: {EPOCHS} epochs AdamW one-cycle, batch {BATCH}, seed {SEED}, 2 threads, "
        f"torch {torch.__version__}, on {FASHION_MNIST} (dataset-fashion-mnist)"
    )
    return Built(
        properties=props,
        how={
            "fashion_cnn.pt": f"state dict; {how}",
            "fashion_cnn.onnx": f"legacy exporter, opset 17, eval export (BatchNorm folded); {how}",
            "fashion_cnn_bn.onnx": f"legacy exporter, opset 17, TrainingMode.PRESERVE (BatchNorm kept); {how}",
            "calibration.npz": f"{CALIBRATION} training images (seeded choice) with labels, normalised",
            "evaluation.npz": "the 10,000 test images with labels, normalised",
        },
    )
