"""Calibration and validation data: .npz, a folder of .npy, a folder of images (generated inputs: generated_inputs.py)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, MissingDependencyError
from .generated_inputs import check_generated_memory, generate_inputs
from .model import Model, TensorSpec

LABELS = "labels"
GENERATED_SAMPLES = 8
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
Sample = dict[str, np.ndarray]


@dataclass
class Dataset:
    """Samples as lists of input dicts (batch of one each), split into calibration and validation."""

    calibration: list[Sample]
    validation: list[Sample]
    source: str  # "file", "random" or "generated"
    seed: int
    description: str
    calibration_labels: np.ndarray | None = None
    validation_labels: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_real(self) -> bool:
        return self.source == "file"

    def require_calibration(self, plugin: str, what: str) -> None:
        """Refuse a step that calibrates when the data holds no calibration samples (one-sample data)."""
        if not self.calibration:
            raise DataError(
                f"{plugin}: {what} needs calibration samples, but {self.description}; pass --data with at "
                "least 2 samples or a separate --calibration-data FILE"
            )

    @staticmethod
    def stack(samples: Sequence[Sample]) -> Sample:
        """Concatenate samples along the batch axis (for models with a dynamic batch dimension)."""
        return {name: np.concatenate([s[name] for s in samples], axis=0) for name in samples[0]}

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "description": self.description,
            "seed": self.seed,
            "calibration_samples": len(self.calibration),
            "validation_samples": len(self.validation),
            "labels": self.validation_labels is not None,
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Preprocess:
    """How image files become tensors: resize to (h, w), scale to [0,1], normalize, lay out."""

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    grayscale: bool = False

    @classmethod
    def parse(cls, text: str | None) -> Preprocess:
        """`resize=224x224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=NCHW,gray=false`."""
        if not text:
            return cls()
        fields: dict[str, Any] = {}
        for part in text.split(","):
            key, _, value = part.partition("=")
            key = key.strip().lower()
            try:
                if key == "resize":
                    h, w = value.lower().split("x")
                    fields["size"] = (int(h), int(w))
                    if min(fields["size"]) < 1:
                        raise ValueError(value)
                elif key in ("mean", "std"):
                    fields[key] = tuple(float(v) for v in value.split("/"))
                    if not all(np.isfinite(fields[key])) or (key == "std" and 0.0 in fields[key]):
                        raise ValueError(value)
                elif key == "layout" and value.upper() in ("NCHW", "NHWC"):
                    fields["layout"] = value.upper()
                elif key in ("gray", "grayscale"):
                    fields["grayscale"] = value.lower() in ("1", "true", "yes")
                else:
                    raise ValueError(key)
            except ValueError:
                raise DataError(
                    f"bad --preprocess item {part!r}: use resize=HxW (positive sizes), mean=a/b/c, std=a/b/c "
                    "(finite, std non-zero), layout=NCHW|NHWC, gray=true"
                ) from None
        return cls(**fields)


def load_data(
    spec: str | Path | None,
    model: Model,
    *,
    seed: int = 0,
    calibration: str | Path | None = None,
    calibration_fraction: float = 0.5,
    preprocess: Preprocess | None = None,
    max_samples: int | None = None,
) -> Dataset:
    """Build the Dataset for a run. `calibration` names a separate calibration file; without it the
    samples of `spec` are shuffled with `seed` and split, so the two sets never share a sample."""
    if spec is None or str(spec) == "random":
        source = "generated" if spec is None else "random"
        check_generated_memory(model, 2 * GENERATED_SAMPLES)
        cal = generate_inputs(model, GENERATED_SAMPLES, seed + 1)
        val = generate_inputs(model, GENERATED_SAMPLES, seed)
        what = (
            "inputs generated from the model's input spec (uniform [0,1) floats, {0,1} integers; "
            "values the model's operators require where an input is a divisor, axes or a shape)"
        )
        return Dataset(cal, val, source, seed, what)

    arrays, labels = read_arrays(Path(spec), model, preprocess)
    arrays, labels = _limit(arrays, labels, max_samples)
    samples = to_samples(arrays, model, str(spec))
    if calibration is not None:
        cal_arrays, cal_labels = read_arrays(Path(calibration), model, preprocess)
        cal_arrays, cal_labels = _limit(cal_arrays, cal_labels, max_samples)
        cal = to_samples(cal_arrays, model, str(calibration))
        desc = f"validation: {spec} ({len(samples)} samples); calibration: {calibration} ({len(cal)} samples)"
        return Dataset(cal, samples, "file", seed, desc, cal_labels, labels)
    if len(samples) < 2:  # nothing to split: the sample validates; a step that calibrates refuses
        desc = f"{spec} holds 1 sample, used for validation (no calibration samples)"
        return Dataset([], samples, "file", seed, desc, None, labels, notes=[desc])
    order = np.random.default_rng(seed).permutation(len(samples))
    cut = min(max(1, round(len(samples) * calibration_fraction)), len(samples) - 1)
    cal_idx, val_idx = order[:cut], order[cut:]
    desc = f"{spec}: {len(samples)} samples split {len(cal_idx)} calibration / {len(val_idx)} validation (seed {seed})"
    return Dataset(
        [samples[i] for i in cal_idx],
        [samples[i] for i in val_idx],
        "file",
        seed,
        desc,
        None if labels is None else labels[cal_idx],
        None if labels is None else labels[val_idx],
    )


def _limit(arrays: dict[str, np.ndarray], labels: np.ndarray | None, limit: int | None):
    if limit is None:
        return arrays, labels
    return {k: v[:limit] for k, v in arrays.items()}, None if labels is None else labels[:limit]


def read_arrays(
    path: Path, model: Model, preprocess: Preprocess | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Arrays by input name (first axis the batch) and the labels, from a .npz, .npy folder or image folder."""
    if not path.exists():
        raise DataError(f"data {path} does not exist")
    if path.is_dir():
        images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            arrays, labels = read_images(images, model, preprocess or Preprocess())
            return arrays, None if labels is None else check_labels(labels, model, str(path))
        arrays = {}
        for npy in sorted(path.glob("*.npy")):
            arrays[npy.stem] = _load_npy(npy)
        if not arrays:
            raise DataError(f"data folder {path} holds no .npy files and no images")
    elif path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError):
            raise DataError(
                f"cannot read {path}: not a .npz archive of arrays (write it with numpy.savez)"
            ) from None
    elif path.suffix == ".npy" and len(model.inputs) == 1:
        arrays = {model.inputs[0].name: _load_npy(path)}
    else:
        raise DataError(f"data {path}: expected a .npz file, a folder of .npy files or a folder of images")
    labels = arrays.pop(LABELS, None)
    check_names(arrays, model, str(path))
    if labels is not None:
        labels = check_labels(np.asarray(labels), model, str(path))
        counts = {len(a) for a in arrays.values() if np.ndim(a)}
        if counts != {len(labels)}:
            raise DataError(f"{path}: {len(labels)} labels for {', '.join(map(str, sorted(counts)))} samples")
    return arrays, labels


def check_labels(labels: np.ndarray, model: Model, where: str) -> np.ndarray:
    """Labels are one class index per sample: numbers (not strings), finite, and, where the model has a
    classifier output [N, C], integers in [0, C). Shape [N, 1] is read as [N]."""
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        hint = " (one-hot rows? store labels.argmax(1))" if labels.ndim == 2 else ""
        raise DataError(
            f"{where}: labels have shape {list(labels.shape)}; write one class index per sample, shape "
            f"[N]{hint}"
        )
    if labels.dtype.kind not in "biuf":
        raise DataError(
            f"{where}: labels are {labels.dtype} ({labels[:1].tolist()}...); write integer class indices"
        )
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        bad = int(np.count_nonzero(~np.isfinite(labels)))
        raise DataError(f"{where}: {bad} of the labels are NaN or infinite; write integer class indices")
    classes = _classes(model)
    if classes is not None and len(labels):
        if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
            fraction = labels[labels != np.round(labels)][0]
            raise DataError(f"{where}: label {fraction:g} is not a class index; write integer class indices")
        low, high = labels.min(), labels.max()
        if low < 0 or high >= classes:
            bad = low if low < 0 else high
            raise DataError(
                f"{where}: label {bad:g} is out of range: the model has {classes} classes, so labels must "
                f"lie in 0..{classes - 1}"
            )
    return labels


def _classes(model: Model) -> int | None:
    """The class count of the model's first classifier output (2-D float, fixed C >= 2), if any."""
    for spec in model.outputs:
        if len(spec.shape) == 2 and spec.dtype.kind == "f":
            count = spec.shape[1]
            if isinstance(count, int) and count >= 2:
                return count
    return None


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def check_names(arrays: Mapping[str, np.ndarray], model: Model, where: str) -> None:
    expected = [i.name for i in model.inputs]
    missing = [n for n in expected if n not in arrays]
    extra = [n for n in arrays if n not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unknown {', '.join(extra)}")
        raise DataError(
            f"{where} does not match the model's inputs ({'; '.join(parts)}); the model expects "
            + ", ".join(i.describe() for i in model.inputs)
        )


def to_samples(arrays: Mapping[str, np.ndarray], model: Model, where: str) -> list[Sample]:
    """Check dtypes and shapes against the model's inputs, then slice into batch-of-one samples."""
    specs = {i.name: i for i in model.inputs}
    counts = {name: len(a) if np.ndim(a) else 0 for name, a in arrays.items()}
    if len(set(counts.values())) != 1:
        raise DataError(f"{where}: inputs have different sample counts {counts}")
    converted: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        spec = specs[name]
        array = conform(np.asarray(array), spec, where)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int(np.count_nonzero(~np.isfinite(array)))
            raise DataError(
                f"{where}: {name} holds {bad} NaN or Inf values; verification needs finite inputs"
            )
        converted[name] = array
    total = next(iter(counts.values()))
    if total == 0:
        raise DataError(f"{where} holds no samples")
    batch = _fixed_batch(model)
    step = batch or 1
    if total % step:
        raise DataError(f"{where}: {total} samples cannot be split into the model's fixed batch of {step}")
    return [{n: a[i : i + step] for n, a in converted.items()} for i in range(0, total, step)]


def conform(array: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    """Cast to the input's dtype when the values survive it exactly (no integer rounded through a float,
    none wrapped by a narrower integer), and check rank and fixed dimensions."""
    if array.ndim != len(spec.shape):
        raise DataError(
            f"{where}: {spec.name} has shape {list(array.shape)}, the model expects rank {len(spec.shape)} "
            f"({spec.describe()})"
        )
    for axis, (got, want) in enumerate(zip(array.shape, spec.shape)):
        if axis == 0:
            continue  # the batch axis; checked against a fixed batch when slicing
        if isinstance(want, int) and got != want:
            raise DataError(
                f"{where}: {spec.name} has shape {list(array.shape)}, the model expects {spec.describe()}"
            )
    if array.dtype != spec.dtype:
        kind, want = array.dtype.kind, spec.dtype.kind
        allowed = (
            kind == want
            or (kind in "iu" and want in "iuf")
            or (kind == "b" and want in "iub")
            or (kind in "US" and want == "O")
        )
        if not allowed:
            raise DataError(f"{where}: {spec.name} is {array.dtype}, the model expects {spec.dtype}")
        cast = array.astype(spec.dtype)
        if kind in "iub":
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                back = cast.astype(array.dtype)
            exact = np.isfinite(cast) if want == "f" else np.ones(cast.shape, bool)
            exact &= back == array
            if not exact.all():
                value = array[~exact].flat[0]
                raise DataError(
                    f"{where}: {spec.name} holds {array.dtype} values that {spec.dtype} cannot hold exactly "
                    f"(e.g. {value}); pass {spec.dtype} data"
                )
        array = cast
    return np.ascontiguousarray(array)


def _fixed_batch(model: Model) -> int | None:
    first = [i.shape[0] for i in model.inputs if i.shape]
    fixed = [d for d in first if isinstance(d, int)]
    return fixed[0] if fixed and fixed[0] > 1 else None


# -- generated inputs ----------------------------------------------------------------------------------
def read_images(
    paths: Sequence[Path], model: Model, pre: Preprocess
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Decode image files with Pillow; the label is the image's folder name when there are several. A
    corrupt or truncated file, or a decompression bomb (Pillow's pixel limit), is refused naming the file."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise MissingDependencyError(
            "reading image folders needs Pillow: pip install 'edgeplug[images]'"
        ) from None
    if len(model.inputs) != 1:
        raise DataError("image folders can feed only single-input models; use a .npz for this model")
    spec = model.inputs[0]
    if len(spec.shape) != 4:
        raise DataError(f"image folders need a 4-D image input; {spec.describe()}")
    tensors = []
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    img = img.convert("L" if pre.grayscale else "RGB")
                    if pre.size:
                        img = img.resize((pre.size[1], pre.size[0]))
                    pixels = np.asarray(img, dtype=np.float32) / 255.0
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DataError(
                f"{path} is too large to decode safely (over Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} "
                "pixels): a decompression bomb, or an image to shrink first"
            ) from None
        except UnidentifiedImageError:
            raise DataError(f"{path} is not an image Pillow can read") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise DataError(f"{path} is corrupt or truncated: {exc}") from None
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        pixels = (pixels - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
        if pre.layout == "NCHW":
            pixels = pixels.transpose(2, 0, 1)
        tensors.append(pixels)
    sizes = {t.shape for t in tensors}
    if len(sizes) > 1:
        first, other = sorted(sizes)[:2]
        raise DataError(
            f"the images have different sizes ({first} and {other} after decoding); pass "
            "--preprocess resize=HxW"
        )
    classes = sorted({p.parent.name for p in paths})
    labels = np.array([classes.index(p.parent.name) for p in paths]) if len(classes) > 1 else None
    return {spec.name: np.stack(tensors).astype(spec.dtype)}, labels
