"""Natural photos shipped with installed packages, split BY SOURCE IMAGE into calibration and evaluation.

The photos come from scikit-image (skimage/data), matplotlib's sample data and scikit-learn's sample images;
faces for the detector also come from scikit-image's LFW subset (25x25 grey crops of Labeled Faces in the
Wild). A photo's group (the stereo pair motorcycle_left/right is one group) decides its split, so no scene is
on both sides. Each view is made from a photo with a generator seeded by the photo's name, so a build is
reproducible on a given machine (JPEG decoding may differ by a grey level across libjpeg builds).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .sources import DEV, package_folder, sha256_file

INSTALL = {"skimage": "pip install scikit-image", "matplotlib": "pip install matplotlib", "sklearn": DEV}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class Photo:
    name: str
    module: str  # the package that ships it
    relpath: str  # inside that package
    split: str  # "calibration" or "evaluation", by group
    group: str  # photos of one scene share a group (and so a split)
    people: bool = False

    def path(self) -> Path:
        return package_folder(self.module, INSTALL[self.module]) / self.relpath

    def rgb(self) -> np.ndarray:
        """H x W x 3 uint8; grey images are repeated to three channels, alpha is dropped."""
        from PIL import Image

        with Image.open(self.path()) as image:
            return np.asarray(image.convert("RGB"))

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": f"{self.module}/{self.relpath}",
            "sha256": sha256_file(self.path()),
            "split": self.split,
            "group": self.group,
            "people": self.people,
        }


def _photo(name: str, module: str, relpath: str, split: str, *, group: str = "", people: bool = False):
    return Photo(name, module, relpath, split, group or name, people)


CAL, EVAL = "calibration", "evaluation"
# Natural photos only: no synthetic charts, logos, clip art, text scans or micrographs. People matter for
# the detector (its classes are body parts and faces): the cameraman calibrates; the astronaut (Eileen
# Collins) and Grace Hopper evaluate.
PHOTOS: tuple[Photo, ...] = (
    _photo("camera", "skimage", "data/camera.png", CAL, people=True),
    _photo("rocket", "skimage", "data/rocket.jpg", CAL),
    _photo("china", "sklearn", "datasets/images/china.jpg", CAL),
    _photo("coins", "skimage", "data/coins.png", CAL),
    _photo("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg", CAL),
    _photo("brick", "skimage", "data/brick.png", CAL),
    _photo("grass", "skimage", "data/grass.png", CAL),
    _photo("astronaut", "skimage", "data/astronaut.png", EVAL, people=True),
    _photo("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", EVAL, people=True),
    _photo("chelsea", "skimage", "data/chelsea.png", EVAL),
    _photo("coffee", "skimage", "data/coffee.png", EVAL),
    _photo("motorcycle_left", "skimage", "data/motorcycle_left.png", EVAL, group="motorcycle"),
    _photo("motorcycle_right", "skimage", "data/motorcycle_right.png", EVAL, group="motorcycle"),
    _photo("flower", "sklearn", "datasets/images/flower.jpg", EVAL),
    _photo("gravel", "skimage", "data/gravel.png", EVAL),
    _photo("moon", "skimage", "data/moon.png", EVAL),
)
# The LFW subset holds 100 faces then 100 non-face patches; faces [0, 50) calibrate, [50, 100) evaluate.
LFW = "data/lfw_subset.npy"
LFW_FACES = {CAL: range(0, 50), EVAL: range(50, 100)}


def photos(split: str | None = None) -> list[Photo]:
    return [p for p in PHOTOS if split is None or p.split == split]


def rng_for(name: str, salt: str = "") -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{name}/{salt}".encode()))


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of an H x W x 3 uint8 image with PIL (antialiased when shrinking, as torchvision)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def random_box(
    rng: np.random.Generator, h: int, w: int, area: tuple[float, float], ratio: tuple[float, float]
):
    """A crop box (top, left, height, width) as torchvision's RandomResizedCrop draws it."""
    for _ in range(20):
        target = rng.uniform(*area) * h * w
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = round(np.sqrt(target * aspect)), round(np.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def center_crop_224(image: np.ndarray) -> np.ndarray:
    """ImageNet's evaluation transform: shorter side to 256, centre 224 x 224 crop."""
    h, w = image.shape[:2]
    scale = 256 / min(h, w)
    nh, nw = max(256, round(h * scale)), max(256, round(w * scale))
    resized = resize(image, nw, nh)
    top, left = (nh - 224) // 2, (nw - 224) // 2
    return resized[top : top + 224, left : left + 224]


def imagenet_views(photo: Photo, image: np.ndarray, count: int) -> Iterator[tuple[np.ndarray, str]]:
    """`count` 224 x 224 uint8 views: the centre crop, its mirror, then random resized crops (area 25-100%,
    aspect 3/4-4/3, mirrored at random)."""
    rng = rng_for(photo.name, "imagenet")
    centre = center_crop_224(image)
    yield centre, "centre crop"
    yield centre[:, ::-1], "centre crop, mirrored"
    h, w = image.shape[:2]
    for _ in range(count - 2):
        top, left, ch, cw = random_box(rng, h, w, (0.25, 1.0), (3 / 4, 4 / 3))
        view = resize(np.ascontiguousarray(image[top : top + ch, left : left + cw]), 224, 224)
        flip = bool(rng.random() < 0.5)
        yield (
            (view[:, ::-1] if flip else view),
            f"crop y={top} x={left} h={ch} w={cw}{', mirrored' if flip else ''}",
        )


def imagenet_normalise(views: list[np.ndarray]) -> np.ndarray:
    """N x 3 x 224 x 224 float32 with ImageNet's mean and std."""
    batch = np.stack(views).astype(np.float32) / 255.0
    return np.ascontiguousarray(((batch - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2))


def letterbox(image: np.ndarray, size: int = 320) -> np.ndarray:
    """Ultralytics' letterbox: longer side to `size`, centred on grey 114, H x W x 3 uint8."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    canvas = np.full((size, size, 3), 114, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top : top + nh, left : left + nw] = resize(np.ascontiguousarray(image), nw, nh)
    return canvas


def detection_views(photo: Photo, image: np.ndarray, count: int) -> Iterator[tuple[np.ndarray, str]]:
    """`count` letterboxed views: the whole photo, its mirror, then random crops (area 30-100%)."""
    rng = rng_for(photo.name, "detection")
    yield letterbox(image), "whole photo"
    yield letterbox(image[:, ::-1]), "whole photo, mirrored"
    h, w = image.shape[:2]
    for _ in range(count - 2):
        top, left, ch, cw = random_box(rng, h, w, (0.3, 1.0), (0.6, 1.6))
        view = image[top : top + ch, left : left + cw]
        flip = bool(rng.random() < 0.5)
        desc = f"crop y={top} x={left} h={ch} w={cw}{', mirrored' if flip else ''}"
        yield letterbox(view[:, ::-1] if flip else view), desc


def lfw_faces(split: str) -> tuple[np.ndarray, list[int]]:
    """The LFW subset's faces for a split: N x 25 x 25 uint8 and their indices in the file."""
    faces = np.load(package_folder("skimage", INSTALL["skimage"]) / LFW)
    indices = list(LFW_FACES[split])
    return (np.clip(faces[indices], 0, 1) * 255).round().astype(np.uint8), indices


def face_mosaics(split: str, size: int = 320) -> Iterator[tuple[np.ndarray, str]]:
    """Grids of LFW faces (2 x 2 with every face once, then 3 x 3 of a seeded shuffle), size x size RGB."""
    from PIL import Image

    faces, indices = lfw_faces(split)
    rng = rng_for("lfw", split)
    plans = [(2, list(range(len(faces))))]
    plans.append((3, [int(i) for i in rng.permutation(len(faces))]))
    for grid, order in plans:
        cell = size // grid
        for start in range(0, len(order) - grid * grid + 1, grid * grid):
            chosen = order[start : start + grid * grid]
            canvas = np.full((size, size), 114, np.uint8)
            for k, i in enumerate(chosen):
                tile = np.asarray(Image.fromarray(faces[i]).resize((cell, cell), Image.BICUBIC))
                r, c = divmod(k, grid)
                canvas[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = tile
            yield (
                np.repeat(canvas[:, :, None], 3, axis=2),
                f"{grid}x{grid} LFW faces {[indices[i] for i in chosen]}",
            )


def shuffled(items: list[Any], salt: str) -> list[Any]:
    """A seeded permutation, so that the first N samples of a split mix all of its photos."""
    return [items[i] for i in rng_for("order", salt).permutation(len(items))]


def to_nchw_unit(views: list[np.ndarray]) -> np.ndarray:
    """N x 3 x H x W float32 in [0, 1] (RGB), what YOLOv8 expects."""
    return np.ascontiguousarray(np.stack(views).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
