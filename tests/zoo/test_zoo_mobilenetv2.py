"""mobilenetv2: torchvision's ImageNet weights; both ONNX exports compute what torch computes."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import zoo
from benchmarks.zoo.onnx_export import op_count, run_batched

pytestmark = pytest.mark.slow  # about a minute from a cold cache


def test_onnx_matches_torch_and_classifies_photos(mobilenetv2: zoo.ZooModel) -> None:
    torch = pytest.importorskip("torch")
    from benchmarks.zoo.mobilenetv2 import pretrained

    crops = np.load(mobilenetv2.data["evaluation"])["input"]
    with torch.no_grad():
        reference = pretrained()(torch.from_numpy(crops)).numpy()
    for role in ("model", "model_bn"):
        logits = run_batched(mobilenetv2.models[role], {"input": crops})
        assert logits.shape == (len(crops), 1000)
        np.testing.assert_allclose(logits[:16], reference[:16], atol=1e-4, rtol=1e-4)
        assert np.mean(logits.argmax(1) == reference.argmax(1)) >= 0.99
    assert op_count(mobilenetv2.models["model_bn"], "BatchNormalization") == 52
    assert op_count(mobilenetv2.models["model"], "BatchNormalization") == 0
    top5 = mobilenetv2.properties["photo_top5"]
    assert set(top5["chelsea"]) & set(range(281, 286))  # a cat
    assert set(top5["coffee"]) & {504, 967, 968}  # coffee mug, espresso, cup
    assert mobilenetv2.metric == "top1"
