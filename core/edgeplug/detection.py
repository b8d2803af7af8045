"""The `detection` metric: YOLO outputs decoded into boxes (confidence filter, per-class NMS), and mAP@IoU
of a candidate's boxes against the reference model's boxes taken as ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LAYOUTS = ("auto", "yolov8", "yolov5")


@dataclass(frozen=True)
class DetectionSettings:
    """Thresholds of the detection metric (`-o core.detection_conf=0.25` and friends)."""

    conf: float = 0.25
    nms_iou: float = 0.45
    match_iou: float = 0.5
    layout: str = "auto"
    max_boxes: int = 300


@dataclass(frozen=True)
class Boxes:
    """Detections of one image: xyxy boxes [K, 4], scores [K], classes [K]."""

    xyxy: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def layout_of(shape: tuple[int, ...], layout: str = "auto") -> str | None:
    """yolov8 for [N, 4+C, anchors] (channels first), yolov5 for [N, anchors, 5+C]; None if neither."""
    if len(shape) != 3:
        return None
    _, rows, cols = shape
    if layout == "yolov8":
        return "yolov8" if rows >= 5 else None
    if layout == "yolov5":
        return "yolov5" if cols >= 6 else None
    if rows >= 5 and cols > rows:
        return "yolov8"
    if cols >= 6 and rows > cols:
        return "yolov5"
    return None


def decode(output: np.ndarray, settings: DetectionSettings) -> list[Boxes]:
    """Boxes per image of a YOLO output batch, after the confidence threshold and per-class NMS."""
    layout = layout_of(output.shape, settings.layout)
    if layout is None:
        raise ValueError(f"output of shape {list(output.shape)} is not a YOLOv5 or YOLOv8 detection output")
    result = []
    for image in np.asarray(output, dtype=np.float32):
        if layout == "yolov8":
            rows = image.T  # [anchors, 4+C]
            boxes, class_scores = rows[:, :4], rows[:, 4:]
        else:
            boxes, class_scores = image[:, :4], image[:, 5:] * image[:, 4:5]
        classes = class_scores.argmax(1)
        scores = class_scores[np.arange(len(classes)), classes]
        keep = scores >= settings.conf
        result.append(nms(xywh_to_xyxy(boxes[keep]), scores[keep], classes[keep], settings))
    return result


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    xy, wh = boxes[:, :2], boxes[:, 2:4] / 2
    return np.concatenate([xy - wh, xy + wh], axis=1)


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of `others`."""
    lo = np.maximum(box[:2], others[:, :2])
    hi = np.minimum(box[2:], others[:, 2:])
    inter = np.clip(hi - lo, 0, None).prod(1)
    area = np.clip(box[2:] - box[:2], 0, None).prod()
    areas = np.clip(others[:, 2:] - others[:, :2], 0, None).prod(1)
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms(xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray, settings: DetectionSettings) -> Boxes:
    """Greedy non-maximum suppression within each class, best first, at most `max_boxes`."""
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    for cls in np.unique(classes):
        idx = order[classes[order] == cls]
        while idx.size:
            best, rest = idx[0], idx[1:]
            kept.append(int(best))
            idx = rest[iou(xyxy[best], xyxy[rest]) < settings.nms_iou] if rest.size else rest
    kept.sort(key=lambda i: -scores[i])
    kept = kept[: settings.max_boxes]
    return Boxes(xyxy[kept].reshape(-1, 4), scores[kept], classes[kept])


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (all-point interpolation, as VOC 2010+ and COCO)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def mean_average_precision(
    truth: list[Boxes], predicted: list[Boxes], match_iou: float = 0.5
) -> dict[str, Any]:
    """mAP@match_iou over the classes present in `truth`, with per-class AP, precision and recall."""
    classes = sorted({int(c) for b in truth for c in b.classes})
    per_class: dict[int, float] = {}
    true_positives = predictions = 0
    for cls in classes:
        gt = [b.xyxy[b.classes == cls] for b in truth]
        used = [np.zeros(len(g), bool) for g in gt]
        total = sum(len(g) for g in gt)
        found = [
            (float(s), i, box)
            for i, b in enumerate(predicted)
            for box, s, c in zip(b.xyxy, b.scores, b.classes)
            if c == cls
        ]
        found.sort(key=lambda item: -item[0])
        hits = np.zeros(len(found))
        for k, (_, image, box) in enumerate(found):
            if len(gt[image]):
                overlaps = iou(box, gt[image])
                overlaps[used[image]] = -1
                best = int(overlaps.argmax())
                if overlaps[best] >= match_iou:
                    used[image][best] = True
                    hits[k] = 1
        tp = np.cumsum(hits)
        recall = tp / max(total, 1)
        precision = tp / np.arange(1, len(found) + 1) if found else np.zeros(0)
        per_class[cls] = average_precision(recall, precision)
        true_positives += int(hits.sum())
        predictions += len(found)
    truth_boxes = sum(len(b) for b in truth)
    all_predictions = sum(len(b) for b in predicted)
    if classes:
        value = float(np.mean(list(per_class.values())))
        note = None
    else:
        value = 1.0 if all_predictions == 0 else 0.0
        note = "the reference model detects nothing on the validation data: the metric is not informative"
    result: dict[str, Any] = {
        "map": value,
        "per_class_ap": {str(k): round(v, 6) for k, v in per_class.items()},
        "reference_boxes": truth_boxes,
        "candidate_boxes": all_predictions,
        "recall": true_positives / truth_boxes if truth_boxes else None,
        "precision": true_positives / predictions if predictions else None,
    }
    if note:
        result["note"] = note
    return result
