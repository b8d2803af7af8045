"""imagenet_photos: ImageNet-normalised crops, split by source photo."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import zoo
from benchmarks.zoo.photos import IMAGENET_MEAN, IMAGENET_STD


def test_crops_are_normalised_nchw_and_split_by_photo(imagenet_photos: zoo.ZooModel) -> None:
    info = json.loads(imagenet_photos.files["photos"].read_text())
    sources = {}
    for split in ("calibration", "evaluation"):
        batch = np.load(imagenet_photos.data[split])["input"]
        assert batch.dtype == np.float32 and batch.shape[1:] == (3, 224, 224)
        assert len(batch) == len(info[split]) == imagenet_photos.properties[f"{split}_samples"]
        pixels = batch.transpose(1, 0, 2, 3).reshape(3, -1) * IMAGENET_STD[:, None] + IMAGENET_MEAN[:, None]
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5  # undoing the normalisation gives [0, 1]
        assert len(np.unique(batch[:, 0, 100, 100])) > len(batch) // 2  # crops differ
        sources[split] = {row["photo"] for row in info[split]}
    assert sources["calibration"] and sources["evaluation"]
    assert not sources["calibration"] & sources["evaluation"]
    groups = {
        split: {p["group"] for p in info["photos"] if p["name"] in names} for split, names in sources.items()
    }
    assert not groups["calibration"] & groups["evaluation"]  # the stereo pair stays on one side
    assert len(batch) + len(np.load(imagenet_photos.data["calibration"])["input"]) >= 200
