"""Calibration inputs for onnxruntime (a CalibrationDataReader over the core's samples) and checks of
calibration data and of a reused calibration table against the model."""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from edgeplug.plugin_api import DataError, OptionError
from onnxruntime.quantization import CalibrationDataReader

Sample = dict[str, np.ndarray]

CHUNK = 16
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


class SampleReader(CalibrationDataReader):
    """Feeds the samples one by one; `rewind` starts over (onnxruntime may read twice)."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)
        self._it: Iterator[Sample] = iter(self.samples)

    def get_next(self) -> Sample | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Feed only samples[start:end] (onnxruntime's strided calibration bounds memory this way)."""
        self._it = iter(self.samples[start_index:end_index])

    def __len__(self) -> int:
        return len(self.samples)


def strided(samples: Sequence[Sample], chunk: int = CHUNK) -> tuple[list[Sample], int]:
    """Samples trimmed to a multiple of the chunk size, and the chunk size for CalibStridedMinMax.

    onnxruntime keeps every intermediate tensor of every sample until ranges are computed; reading the
    samples in chunks bounds that memory. (Its CalibMaxIntermediateOutputs drops data in 1.32: it clears
    the collected outputs without merging them.)"""
    n = len(samples)
    if n <= chunk:
        return list(samples), n
    return list(samples[: n - n % chunk]), chunk


def check_samples(samples: Sequence[Sample], proto: onnx.ModelProto, what: str) -> None:
    """Refuse samples whose names, ranks or fixed dimensions do not match the model's inputs."""
    if not samples:
        raise DataError(f"quant: no {what} samples; pass --data FILE.npz (or --calibration-data)")
    init = {t.name for t in proto.graph.initializer}
    inputs = {i.name: i for i in proto.graph.input if i.name not in init}
    sample = samples[0]
    missing = sorted(set(inputs) - set(sample))
    extra = sorted(set(sample) - set(inputs))
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(extra)}"] if extra else []
        )
        raise DataError(
            f"quant: the {what} data does not match the model's inputs ({'; '.join(parts)}); "
            f"the model expects {', '.join(inputs)}"
        )
    for name, value in sample.items():
        dims = inputs[name].type.tensor_type.shape.dim
        if dims and len(dims) != np.ndim(value):
            raise DataError(
                f"quant: {what} input {name} has rank {np.ndim(value)}, the model expects {len(dims)}"
            )
        for axis, dim in enumerate(dims):
            if axis and dim.HasField("dim_value") and value.shape[axis] != dim.dim_value:
                raise DataError(
                    f"quant: {what} input {name} has shape {list(value.shape)}, the model expects "
                    f"dimension {axis} = {dim.dim_value}"
                )


def tensor_names(proto: onnx.ModelProto) -> set[str]:
    names = {i.name for i in proto.graph.input} | {t.name for t in proto.graph.initializer}
    for node in proto.graph.node:
        names.update(n for n in node.output if n)
    return names


def check_table(path: Path, proto: onnx.ModelProto, method: str) -> int:
    """Validate a reused calibration table (onnxruntime's JSON cache) against the prepared model:
    every tensor it names must exist and have a range, the method must match. Non-finite ranges (a -inf
    attention mask) are accepted: those tensors are kept in float."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"quant: calibration table {path} is not readable JSON ({exc}); delete it to recalibrate"
        ) from None
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, dict) or not data:
        raise DataError(f"quant: calibration table {path} holds no tensor ranges; delete it to recalibrate")
    recorded = str(raw.get("calibration_method", ""))
    if recorded and METHODS[method].lower() not in recorded.lower():
        raise DataError(
            f"quant: calibration table {path} was made with {recorded}, not {method}; "
            f"set quant.calibration to match or delete the table"
        )
    known = tensor_names(proto)
    unknown = sorted(name for name in data if name not in known)
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise DataError(
            f"quant: calibration table {path} names {len(unknown)} of {len(data)} tensors this model "
            f"does not have ({shown}); it was made for another model: delete it to recalibrate"
        )
    for name, entry in data.items():
        values = _numbers(entry)
        if not values or np.isnan(values).any():
            raise DataError(f"quant: calibration table {path}: tensor {name} has no range; delete it")
    return len(data)


def table_ranges(path: Path) -> dict[str, tuple[float, float]]:
    """{tensor: (lowest, highest)} of an onnxruntime calibration table (JSON)."""
    raw = json.loads(Path(path).read_text())
    ranges: dict[str, tuple[float, float]] = {}
    for name, entry in (raw.get("data") or {}).items():
        if isinstance(entry, dict) and "lowest" in entry and "highest" in entry:
            low, high = _numbers(entry["lowest"]), _numbers(entry["highest"])
        else:
            values = _numbers(entry)
            low, high = values[:1], values[-1:]
        if low and high:
            ranges[name] = (float(min(low)), float(max(high)))
    return ranges


def unusable_ranges(ranges: dict[str, tuple[float, float]]) -> dict[str, str]:
    """Tensors whose calibrated range cannot give an int8 scale: not finite (NaN/inf scale and zero point,
    onnxruntime's RuntimeWarning in quant_utils). Each with the reason, in words."""
    return {
        name: f"calibrated range {low:.3g} to {high:.3g} is not finite"
        for name, (low, high) in ranges.items()
        if not (np.isfinite(low) and np.isfinite(high))
    }


def check_table_target(path: Path) -> None:
    """Refuse a `calibration_table` that cannot be read back or written: an existing folder, or a file whose
    folder neither exists nor can be created, or is not writable. Probes by writing (file permission bits say
    nothing for root) and removes the folders and probe file it made."""
    where = f"quant.calibration_table={path}"
    try:
        if path.is_dir():
            raise OptionError(f"{where} is a folder; give the path of a .json file")
        if path.exists():
            if not path.is_file():
                raise OptionError(f"{where} is not a regular file")
            return  # reused: check_table validates its contents
    except OSError as exc:
        raise OptionError(
            f"{where} cannot be used ({exc.strerror or exc}); choose a writable folder"
        ) from None
    folder = path.parent
    made: list[Path] = []  # folders created by this probe, deepest last
    try:
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        for parent in reversed(missing):
            parent.mkdir()
            made.append(parent)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".edgeplug-probe-"):
            pass
    except OSError as exc:
        raise OptionError(
            f"{where} cannot be written ({exc.strerror or exc}) in {folder}; "
            "choose a folder that exists or can be created and is writable"
        ) from None
    finally:
        for parent in reversed(made):
            with contextlib.suppress(OSError):
                parent.rmdir()


def _numbers(entry: object) -> list[float]:
    """Every number in one table entry (onnxruntime stores lowest/highest, optionally histograms)."""
    out: list[float] = []
    if isinstance(entry, dict):
        for key in ("lowest", "highest", "range_value"):
            if key in entry:
                out.extend(_numbers(entry[key]))
        if "data" in entry and not out:
            out.extend(_numbers(entry["data"]))
    elif isinstance(entry, (list, tuple)):
        for item in entry:
            out.extend(_numbers(item))
    elif isinstance(entry, (int, float)):
        out.append(float(entry))
    return out
