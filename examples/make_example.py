"""Train a small BatchNorm CNN on scikit-learn's ``load_digits`` and export it to ONNX.

Regenerate the example artefacts (CPU only, well under a minute)::

    python examples/make_example.py

Writes, next to this script:

* ``digits_cnn.onnx``   -- the trained CNN in eval mode, opset 17, input ``input``
  float32 ``[N, 1, 8, 8]`` (pixels scaled to [0, 1]), output ``logits`` ``[N, 10]``,
  dynamic batch dimension.  BatchNormalization nodes are kept *unfused* in the graph.
* ``digits_test.npz``   -- held-out split: ``input`` float32 ``[N, 1, 8, 8]``, ``labels`` int64 ``[N]``.
* ``digits_train.npz``  -- training split, same keys (usable as calibration data).
* ``README.md``         -- short description, including the accuracy reached.

The BatchNormalization ops survive export because the legacy TorchScript exporter is
used with ``training=torch.onnx.TrainingMode.PRESERVE`` while the module is in
``eval()`` mode: that skips the exporter's eval-mode Conv+BN fusion pass
(``TrainingMode.EVAL``, the default, folds BN into the preceding Conv) but still
emits inference-form ``BatchNormalization(training_mode=0)`` nodes using the running
statistics.
"""

from __future__ import annotations

import argparse
import random
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 0
OPSET = 17


def set_determinism(seed: int = SEED) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def load_data(seed: int = SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return (
        np.ascontiguousarray(x_tr),
        np.ascontiguousarray(x_te),
        np.ascontiguousarray(y_tr),
        np.ascontiguousarray(y_te),
    )


def build_model():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Conv2d(32, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Flatten(),  # 32 * 4 * 4 = 512
        nn.Linear(32 * 4 * 4, 10),
    )


def train(model, x_tr: np.ndarray, y_tr: np.ndarray, *, epochs: int, batch_size: int = 64) -> None:
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(x_tr)
    yt = torch.from_numpy(y_tr)
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(xt) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad()
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if epoch % 5 == 4 or epoch == epochs - 1:
            print(f"epoch {epoch + 1:3d}  train loss {total / len(xt):.4f}")
    model.eval()


def export_onnx(model, path: Path) -> None:
    import torch

    dummy = torch.zeros(2, 1, 8, 8)
    with warnings.catch_warnings():
        # The legacy TorchScript exporter is deprecated in torch>=2.9 but is the one
        # that can keep BatchNormalization unfused; silence its deprecation notices.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.PRESERVE,  # keep BN nodes (module is in eval())
            do_constant_folding=False,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=HERE)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)

    import onnx
    import onnxruntime as ort
    import torch

    t0 = time.perf_counter()
    set_determinism()
    x_tr, x_te, y_tr, y_te = load_data()
    print(f"train {x_tr.shape}  test {x_te.shape}")

    model = build_model()
    train(model, x_tr, y_tr, epochs=args.epochs)

    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_te)).numpy()
    torch_acc = float((torch_logits.argmax(1) == y_te).mean())
    print(f"torch test accuracy: {torch_acc:.4f}")

    onnx_path = out / "digits_cnn.onnx"
    export_onnx(model, onnx_path)
    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto, full_check=True)
    ops = [n.op_type for n in proto.graph.node]
    n_bn = ops.count("BatchNormalization")
    print(f"ONNX ops: {ops}")
    if n_bn != 3:
        raise RuntimeError(f"expected 3 BatchNormalization nodes in the export, found {n_bn}")

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_logits = sess.run(["logits"], {"input": x_te})[0]
    max_diff = float(np.abs(ort_logits - torch_logits).max())
    ort_acc = float((ort_logits.argmax(1) == y_te).mean())
    print(f"onnxruntime test accuracy: {ort_acc:.4f}  max |ort - torch| = {max_diff:.2e}")
    if max_diff >= 1e-4:
        raise RuntimeError(f"onnxruntime output differs from torch by {max_diff}")
    if ort_acc < 0.95:
        raise RuntimeError(f"test accuracy too low: {ort_acc}")

    np.savez_compressed(out / "digits_test.npz", input=x_te, labels=y_te)
    np.savez_compressed(out / "digits_train.npz", input=x_tr, labels=y_tr)

    (out / "README.md").write_text(
        f"""# Example: digits CNN

Generated by `python examples/make_example.py` (seeded, CPU, < 1 minute).

- `digits_cnn.onnx` -- small CNN (3x Conv-BatchNorm-ReLU, MaxPool, Flatten, Linear)
  trained on scikit-learn's `load_digits` (8x8 grayscale, 10 classes). Opset {OPSET},
  input `input` float32 `[N, 1, 8, 8]` with pixel values scaled to [0, 1] (raw / 16),
  output `logits` `[N, 10]`, dynamic batch. The {n_bn} BatchNormalization nodes are
  kept unfused (exported with the legacy exporter, `training=TrainingMode.PRESERVE`,
  module in eval mode).
- `digits_test.npz` -- held-out split ({len(y_te)} samples): `input` float32
  `[N, 1, 8, 8]`, `labels` int64 `[N]`.
- `digits_train.npz` -- training split ({len(y_tr)} samples), same keys; usable as
  calibration data.

Stratified 75/25 split, `random_state=0`. Held-out accuracy: {ort_acc:.2%}
(onnxruntime), {torch_acc:.2%} (torch); max |onnxruntime - torch| logit difference
{max_diff:.1e}.
"""
    )
    print(f"wrote {onnx_path}, digits_test.npz, digits_train.npz, README.md to {out}")
    print(f"total time {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
