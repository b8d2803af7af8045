"""ImageNet-style crops of the installed natural photos: calibration.npz and evaluation.npz (key `input`,
N x 3 x 224 x 224 float32, ImageNet mean/std), split by source photo; photos.json says which crop came
from which photo and how."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .cache import Built
from .photos import CAL, EVAL, imagenet_normalise, imagenet_views, photos, shuffled

VIEWS_PER_PHOTO = 20
TRANSFORM = (
    "RGB photo; view 0: shorter side to 256 (PIL bilinear), centre 224x224; view 1: its mirror; other views: "
    "random resized crop (area 25-100%, aspect 3/4-4/3) to 224x224, mirrored with p=0.5; "
    "then /255, minus mean (0.485, 0.456, 0.406), over std (0.229, 0.224, 0.225); NCHW float32"
)


def build(out: Path, deps: Mapping[str, Path]) -> Built:
    info: dict[str, Any] = {"transform": TRANSFORM, "photos": [p.record() for p in photos()]}
    props: dict[str, Any] = {}
    for split in (CAL, EVAL):
        made = [
            (view, {"photo": photo.name, "view": desc})
            for photo in photos(split)
            for view, desc in imagenet_views(photo, photo.rgb(), VIEWS_PER_PHOTO)
        ]
        made = shuffled(made, f"imagenet/{split}")
        views = [view for view, _ in made]
        rows = [{"index": i, **row} for i, (_, row) in enumerate(made)]
        np.savez_compressed(out / f"{split}.npz", input=imagenet_normalise(views))
        info[split] = rows
        props[f"{split}_samples"] = len(rows)
        props[f"{split}_photos"] = [p.name for p in photos(split)]
    (out / "photos.json").write_text(json.dumps(info, indent=1) + "\n")
    how = (
        "crops of photos shipped in scikit-image, matplotlib and scikit-learn (see photos.json); " + TRANSFORM
    )
    return Built(properties=props, how={f"{s}.npz": how for s in (CAL, EVAL)})
