"""The reviewer's findings: non-finite records fail closed, external data is hashed against the sidecar,
option values are refused before any work, and the guarded session takes the caller's thread count."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from edgeplug import DataError, Dataset, GuardRefusal, Model, OptionError, PluginError, RunContext
from edgeplug.context import sha256_file
from edgeplug.model import get_metadata, set_metadata
from edgeplug.options import Tolerance
from edgeplug_security import inprocess, integrity, isolation
from edgeplug_security.calibration import build_record
from edgeplug_security.input_spec import InputSpec
from edgeplug_security.integrity import verify_model
from edgeplug_security.plugin import OPTIONS
from edgeplug_security.record import KEY, SecurityRecord, read_record

from .conftest import cli, error_line, infer_cli

DEFAULTS = {o.name: o.default for o in OPTIONS}


def _ctx(model: Model, samples: list[dict[str, np.ndarray]], tmp_path: Path) -> RunContext:
    data = Dataset(samples, samples, "file", 0, "test")
    return RunContext("security", dict(DEFAULTS), Tolerance(), data, ("security",), tmp_path, quiet=True)


# -- 1. non-finite calibration data and records ------------------------------------------------------
def test_nan_calibration_samples_are_refused(
    example_model: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    model = Model.load(example_model)
    samples = [{"input": digits[0][i : i + 1].copy()} for i in range(8)]
    samples[3]["input"][0, 0, 2, 2] = np.nan
    with pytest.raises(DataError, match=r"calibration sample 3 holds 1 NaN or Inf value\(s\) in input 'input'"):
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
    sidecar = json.loads(guarded.with_name("digits_cnn.edgeplug.json").read_text())
    sidecar["sha256"] = sha256_file(target)
    (folder / "digits_cnn.edgeplug.json").write_text(json.dumps(sidecar))
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


# -- 2. external data hashed against the sidecar -----------------------------------------------------
def _external(folder: Path, example_model: Path) -> Path:
    """The example CNN saved as the core saves a model over 2 GB: weights in `<name>.data` beside it, and
    a sidecar recording the sha256 of both files."""
    folder.mkdir()
    model = folder / "ext.onnx"
    onnx.save_model(
        onnx.load(str(example_model)),
        str(model),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    data = folder / "ext.onnx.data"
    sidecar = {
        "model": model.name,
        "sha256": sha256_file(model),
        "external_data": {data.name: sha256_file(data)},
    }
    (folder / "ext.edgeplug.json").write_text(json.dumps(sidecar))
    return model


def test_tampered_external_data_is_refused(
    example_model: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    model = _external(tmp_path / "deploy", example_model)
    assert verify_model(model, require_hash=True).external
    result = edgeplug.infer(model, {"input": digits[0][:4]}, guards=["security"])
    assert result.outputs["logits"].argmax(1).tolist() == digits[1][:4].tolist()
    data = model.with_name("ext.onnx.data")
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0x40  # one weight changed; the .onnx file and the sidecar are untouched
    data.write_bytes(bytes(raw))
    with pytest.raises(GuardRefusal, match=r"external data file ext\.onnx\.data of model .* does not match"):
        verify_model(model, require_hash=True)  # the cached check notices the data file changed
    line = error_line(infer_cli(model, {"input": digits[0][:1]}, tmp_path))
    assert "ext.onnx.data" in line and "tampered or replaced" in line


def test_external_data_the_sidecar_does_not_record_is_refused(example_model: Path, tmp_path: Path) -> None:
    model = _external(tmp_path / "deploy", example_model)
    sidecar = model.with_name("ext.edgeplug.json")
    record = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**record, "external_data": {}}))
    with pytest.raises(GuardRefusal, match=r"from external data file ext\.onnx\.data, which .* records no sha256"):
        verify_model(model, require_hash=True)
    sidecar.write_text(json.dumps({**record, "external_data": {"../ext.onnx.data": "0" * 64}}))
    with pytest.raises(GuardRefusal, match="not a file beside model"):
        verify_model(model, require_hash=True)


def test_the_loaders_recheck_external_data(
    example_model: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """External data swapped between the check and the session load is refused by both runners."""
    model = _external(tmp_path / "deploy", example_model)
    verified = verify_model(model, require_hash=True)
    data = model.with_name("ext.onnx.data")
    data.write_bytes(data.read_bytes()[::-1])
    with pytest.raises(GuardRefusal, match=r"external data file ext\.onnx\.data .* changed on disk"):
        inprocess.runner(model, verified.sha256, 1, True, verified.external_sha256)
    key = isolation.model_key(model, verified.sha256, 1024, 1, True, verified.external_sha256)
    with pytest.raises(GuardRefusal, match=r"external data file ext\.onnx\.data .* changed on disk"):
        isolation.runner(key, timeout_s=30)({"input": digits[0][:1]})


def test_all_tensors_walks_subgraphs_and_constants() -> None:
    """The plugin's own walk (not onnx's private helper) finds initializers, sparse initializers, Constant
    values and tensors inside subgraphs."""
    from edgeplug_security.integrity import all_tensors

    helper, TP = onnx.helper, onnx.TensorProto
    const = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("cv", TP.FLOAT, [1], [1.0]))
    branch = helper.make_graph(
        [const], "b", [], [helper.make_tensor_value_info("c", TP.FLOAT, [1])], [helper.make_tensor("bi", TP.FLOAT, [1], [2.0])]
    )
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    sparse = helper.make_sparse_tensor(
        helper.make_tensor("sv", TP.FLOAT, [1], [3.0]), helper.make_tensor("si", TP.INT64, [1], [0]), [2]
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("cond", TP.BOOL, [])],
        [helper.make_tensor_value_info("y", TP.FLOAT, [1])],
        [helper.make_tensor("init", TP.FLOAT, [1], [0.0])],
        sparse_initializer=[sparse],
    )
    names = sorted(t.name for t in all_tensors(helper.make_model(graph)))
    assert names == sorted(["init", "sv", "si", "bi", "cv", "bi", "cv"])


def test_no_private_onnx_helper_is_used() -> None:
    source = Path(integrity.__file__).read_text()
    assert "_get_all_tensors" not in source and "external_data_helper" not in source


# -- 3. options refused before any work; threads from the request -------------------------------------
@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("input_range=5,1", "LOW 5.0 is above HIGH 1.0"),
        ("input_range=image:0:1", "security.input_range names 'image'"),
        ("input_range=-inf,inf", "LOW and HIGH must be finite numbers"),
        ("squeeze_fpr=nan", "bad value nan for security.squeeze_fpr: expected a finite number"),
        ("squeeze_bits=17", "bad value 17 for security.squeeze_bits"),
    ],
)
def test_bad_run_options_exit_2_before_any_work(
    example_model: Path, example_test_data: Path, tmp_path: Path, option: str, message: str
) -> None:
    out = tmp_path / "out"
    result = cli(
        [
            *("run", str(example_model), "--plugins", "security", "--data", str(example_test_data)),
            *("-o", f"security.{option}", "--output-dir", str(out), "--quiet"),
        ]
    )
    assert message in error_line(result)
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and "original" not in report and report["steps"] == []


def test_nan_squeeze_threshold_is_refused(guarded_digits: Path, tmp_path: Path) -> None:
    x = np.zeros((1, 1, 8, 8), np.float32)
    line = error_line(infer_cli(guarded_digits, {"input": x}, tmp_path, "squeeze=true", "squeeze_threshold=nan"))
    assert "security.squeeze_threshold: expected a finite number" in line


def test_guarded_session_takes_the_request_threads(
    guarded_digits: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("digits_cnn.onnx", "digits_cnn.edgeplug.json"):
        shutil.copy(guarded_digits.with_name(name), folder / name)
    model = folder / "digits_cnn.onnx"
    x = {"input": digits[0][:2]}
    edgeplug.infer(model, x, ["security"], {"security": {"isolate": False}}, threads=2)
    assert any(key[0] == str(model.resolve()) and key[2] == 2 for key in inprocess._sessions)
    edgeplug.infer(model, x, ["security"], threads=2)
    assert any(k.path == str(model.resolve()) and k.threads == 2 for k in isolation.POOL.workers)
    with pytest.raises(OptionError, match="threads"):
        edgeplug.infer(model, x, ["security"], {"security": {"threads": 2}})
