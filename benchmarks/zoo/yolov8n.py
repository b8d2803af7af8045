"""NudeNet's YOLOv8n detector (nudenet==3.4.2, 320n.onnx), copied unchanged, with letterboxed photos.

Input `images` [batch, 3, H, W] RGB in [0, 1] (built for 320 x 320), output `output0` [batch, 22, anchors]:
cx, cy, w, h in input pixels, then 18 class scores (already sigmoid). Its classes are faces and (covered or
exposed) body parts, so the data holds photos of people: the astronaut and Grace Hopper (evaluation), the
cameraman (calibration), grids of LFW faces split by face, and photos without people as negatives.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .cache import Built
from .entries import YOLOV8N
from .errors import ZooError
from .onnx_export import run_batched
from .photos import CAL, EVAL, detection_views, face_mosaics, photos, shuffled, to_nchw_unit

SIZE = 320
VIEWS_PEOPLE = 16
VIEWS_OTHER = 6
CONF, IOU = 0.25, 0.45  # Ultralytics' default confidence; NudeNet's NMS threshold
CLASSES = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)  # fmt: skip


def check_model(path: Path) -> dict[str, Any]:
    """The facts the data relies on: one input `images` [batch, 3, H, W], one output [batch, 22, anchors]."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    (inp,), (out,) = model.graph.input, model.graph.output

    def dims(value: Any) -> list[int | str]:
        return [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    facts = {"input": inp.name, "input_shape": dims(inp), "output": out.name, "opset": opset}
    if inp.name != "images" or dims(inp)[1] != 3 or len(dims(out)) != 3 or dims(out)[1] != 4 + len(CLASSES):
        raise ZooError(f"{path}: not the YOLOv8n layout this entry expects: {facts}")
    return facts


def detections(output: np.ndarray, conf: float = CONF, iou: float = IOU) -> list[np.ndarray]:
    """Per image, rows (x1, y1, x2, y2, score, class) after the confidence filter and per-class NMS: the
    core's `detection` metric's decoding (edgeplug.detection), so the zoo's boxes are the ones it scores."""
    from edgeplug.detection import DetectionSettings, decode

    settings = DetectionSettings(conf=conf, nms_iou=iou, layout="yolov8", max_boxes=1 << 30)
    return [
        np.concatenate([b.xyxy, b.scores[:, None], b.classes[:, None].astype(np.float32)], axis=1)
        for b in decode(output, settings)
    ]


def views(split: str) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    made = []
    for photo in photos(split):
        count = VIEWS_PEOPLE if photo.people else VIEWS_OTHER
        made += [
            (view, {"photo": photo.name, "view": desc})
            for view, desc in detection_views(photo, photo.rgb(), count)
        ]
    made += [(view, {"photo": "lfw_subset", "view": desc}) for view, desc in face_mosaics(split, SIZE)]
    made = shuffled(made, f"detection/{split}")
    return [view for view, _ in made], [{"index": i, **row} for i, (_, row) in enumerate(made)]


def build(out: Path, deps: Mapping[str, Path]) -> Built:
    model = out / "yolov8n.onnx"
    shutil.copyfile(YOLOV8N.path(), model)
    props: dict[str, Any] = {"model": check_model(model), "conf": CONF, "nms_iou": IOU}
    info: dict[str, Any] = {"classes": list(CLASSES), "photos": [p.record() for p in photos()]}
    for split in (CAL, EVAL):
        images, rows = views(split)
        batch = to_nchw_unit(images)
        np.savez_compressed(out / f"{split}.npz", images=batch)
        found = detections(run_batched(model, {"images": batch}, batch=16))
        for row, boxes in zip(rows, found):
            row["boxes"] = [
                [round(float(v), 1) for v in b[:4]] + [round(float(b[4]), 3), CLASSES[int(b[5])]]
                for b in boxes
            ]
        by_class = np.bincount(np.concatenate([b[:, 5] for b in found]).astype(int), minlength=len(CLASSES))
        props[split] = {
            "samples": len(rows),
            "boxes": int(sum(len(b) for b in found)),
            "samples_with_boxes": int(sum(len(b) > 0 for b in found)),
            "boxes_by_class": {CLASSES[c]: int(n) for c, n in enumerate(by_class) if n},
        }
        info[split] = rows
    if props[EVAL]["boxes"] < 20:
        raise ZooError(
            f"yolov8n: the float model finds only {props[EVAL]['boxes']} boxes on the evaluation photos"
        )
    (out / "photos.json").write_text(json.dumps(info, indent=1) + "\n")
    how = f"letterboxed to {SIZE}x{SIZE} (grey 114, centred), RGB, /255, NCHW float32; key `images`; see photos.json"
    return Built(
        properties=props,
        how={
            "yolov8n.onnx": f"copied unchanged from {YOLOV8N.module}/{YOLOV8N.relpath} ({YOLOV8N.install})",
            "calibration.npz": how,
            "evaluation.npz": how,
            "photos.json": f"per view: source photo, crop and the float model's boxes (conf {CONF}, NMS IoU {IOU})",
        },
    )
