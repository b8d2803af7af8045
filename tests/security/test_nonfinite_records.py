"""Non-finite values fail closed: NaN or Inf calibration samples are refused, a non-finite record is never
written, and a record (or an option) with a NaN range or threshold is refused rather than read as
"no limit" (NaN compares false with everything)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeplug import DataError, Dataset, GuardRefusal, Model, PluginError, RunContext
from edgeplug.model import get_metadata, set_metadata
from edgeplug.options import Tolerance
from edgeplug.run_record import RunRecord
from edgeplug_security.calibration import build_record
from edgeplug_security.input_spec import InputSpec
from edgeplug_security.record import KEY, SecurityRecord, read_record
from edgeplug_security.settings import SecuritySettings

from .conftest import error_line, infer_cli


def _ctx(model: Model, samples: list[dict[str, np.ndarray]], tmp_path: Path) -> RunContext:
    data = Dataset(samples, samples, "file", 0, "test")
    return RunContext(
        "security", {}, Tolerance(), data, ("security",), tmp_path, quiet=True, settings=SecuritySettings()
    )


def test_nan_calibration_samples_are_refused(
    example_model: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    model = Model.load(example_model)
    samples = [{"input": digits[0][i : i + 1].copy()} for i in range(8)]
    samples[3]["input"][0, 0, 2, 2] = np.nan
    with pytest.raises(
        DataError, match=r"calibration sample 3 holds 1 NaN or Inf value\(s\) in input 'input'"
    ):
        build_record(model, _ctx(model, samples, tmp_path))
    samples[3]["input"][0, 0, 2, 2] = np.inf
    with pytest.raises(DataError, match="NaN or Inf"):
        build_record(model, _ctx(model, samples, tmp_path))


def test_a_non_finite_record_is_never_written(example_model: Path) -> None:
    spec = InputSpec("input", "float32", ("batch", 1, 8, 8), float("nan"), float("nan"), "calibration")
    proto = Model.load(example_model).copy_proto()
    with pytest.raises(PluginError, match="NaN or infinite"):
        SecurityRecord({"input": spec}, None, True).write(proto)
    assert get_metadata(proto, KEY) is None


def _with_record(guarded: Path, folder: Path, edit: dict) -> Path:
    """A copy of the guarded model whose record is patched with `edit` (as raw JSON, NaN allowed), with a
    sidecar that vouches for it: only the record check can refuse it."""
    proto = onnx.load(str(guarded))
    record = json.loads(get_metadata(proto, KEY))
    for path, value in edit.items():
        section, name, key = path.split(".")
        record[section][name][key] = value
    set_metadata(proto, KEY, json.dumps(record))  # allow_nan defaults to True: NaN is written as NaN
    folder.mkdir()
    target = folder / "digits_cnn.onnx"
    onnx.save(proto, str(target))
    RunRecord.of_run(target).write(folder)
    return target


def test_a_nan_range_fails_closed(
    guarded_digits: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    model = _with_record(guarded_digits, tmp_path / "m", {"inputs.input.range": [float("nan")] * 2})
    with pytest.raises(GuardRefusal, match=r"invalid range \[nan, nan\] for input 'input'"):
        read_record(Model.load(model))
    x = np.full((1, 1, 8, 8), 255.0, np.float32)  # far outside any real range: a NaN range let it through
    line = error_line(infer_cli(model, {"input": x}, tmp_path))
    assert "invalid range [nan, nan] for input 'input'" in line


def test_a_nan_threshold_fails_closed(guarded_digits: Path, tmp_path: Path) -> None:
    proto = onnx.load(str(guarded_digits))
    record = json.loads(get_metadata(proto, KEY))
    record["squeeze"]["threshold"] = float("nan")
    set_metadata(proto, KEY, json.dumps(record))
    with pytest.raises(GuardRefusal, match="non-finite feature-squeezing threshold nan"):
        read_record(Model(proto))


def test_nan_squeeze_threshold_is_refused(guarded_digits: Path, tmp_path: Path) -> None:
    x = np.zeros((1, 1, 8, 8), np.float32)
    line = error_line(
        infer_cli(guarded_digits, {"input": x}, tmp_path, "squeeze=true", "squeeze_threshold=nan")
    )
    assert re.search(r"bad value '?nan'? for security\.squeeze_threshold: expected a (finite )?number", line)
