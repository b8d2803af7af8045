"""Model integrity: the sha256 the run records beside the model is checked; tampering, a missing or foreign
sidecar, and external data escaping the model's folder are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from edgeplug import GuardRefusal
from edgeplug.context import sha256_file
from edgeplug.run_record import RunRecord
from edgeplug_security.integrity import all_tensors, verify_model
from onnx import numpy_helper

from .conftest import error_line, infer_cli


@pytest.fixture
def copy(guarded_digits: Path, tmp_path: Path) -> Path:
    """A private copy of the optimized model and its sidecar, free to tamper with."""
    folder = tmp_path / "deploy"
    folder.mkdir()
    for name in ("digits_cnn.onnx", "digits_cnn.edgeplug.json"):
        shutil.copy(guarded_digits.parent / name, folder / name)
    return folder / "digits_cnn.onnx"


def test_sidecar_records_the_final_model(guarded_digits: Path) -> None:
    record = json.loads((guarded_digits.parent / "digits_cnn.edgeplug.json").read_text())
    assert record["sha256"] == sha256_file(guarded_digits)


def test_untouched_model_passes_and_reports_its_hash(
    copy: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    result = edgeplug.infer(copy, {"input": digits[0][:2]}, guards=["security"])
    assert result.flags["model_sha256"] == sha256_file(copy)


def tamper(path: Path) -> None:
    """Change one weight: the file stays a valid model that computes something else."""
    proto = onnx.load(str(path))
    tensor = next(t for t in proto.graph.initializer if t.dims and np.prod(t.dims) > 10)
    values = numpy_helper.to_array(tensor).copy()
    values.flat[0] += 0.5
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    onnx.save(proto, str(path))


def test_tampered_model_is_refused(copy: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    edgeplug.infer(copy, {"input": digits[0][:1]}, guards=["security"])  # verified and cached first
    tamper(copy)
    line = error_line(infer_cli(copy, {"input": digits[0][:1]}, tmp_path))
    assert line == f"edgeplug: error: model {copy} does not match its recorded sha256: tampered or replaced"
    with pytest.raises(GuardRefusal, match="tampered or replaced"):  # the in-process cache notices too
        edgeplug.infer(copy, {"input": digits[0][:1]}, guards=["security"])


def test_replaced_model_is_refused(
    copy: Path, example_model: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    shutil.copy(example_model, copy)  # a valid, different model under the same name
    with pytest.raises(GuardRefusal, match="does not match its recorded sha256"):
        edgeplug.infer(copy, {"input": digits[0][:1]}, guards=["security"])


def test_missing_sidecar_is_refused_unless_waived(
    example_model: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    line = error_line(infer_cli(example_model, {"input": digits[0][:1]}, tmp_path))
    assert "has no digits_cnn.edgeplug.json recording its sha256" in line
    assert "security.require_hash=false" in line
    result = infer_cli(example_model, {"input": digits[0][:1]}, tmp_path, "require_hash=false")
    assert result.exit_code == 0, result.output


def test_sidecar_of_another_model_is_refused(copy: Path) -> None:
    sidecar = copy.with_name("digits_cnn.edgeplug.json")
    record = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**record, "model": "other.onnx"}))
    with pytest.raises(GuardRefusal, match=r"records model 'other\.onnx', not 'digits_cnn\.onnx'"):
        verify_model(copy, require_hash=True)
    sidecar.write_text("{not json")
    with pytest.raises(GuardRefusal, match="unreadable or has no sha256"):
        verify_model(copy, require_hash=True)


def external_model(folder: Path, location: str) -> Path:
    """The example CNN with its weights in an external file at `location` (relative to `folder`)."""
    proto = onnx.load(str(Path(__file__).resolve().parents[2] / "examples" / "digits_cnn.onnx"))
    onnx.save_model(
        proto,
        str(folder / "ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    saved = onnx.load(str(folder / "ext.onnx"), load_external_data=False)
    for tensor in all_tensors(saved):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(saved, str(folder / "ext.onnx"))
    return folder / "ext.onnx"


def test_external_data_escaping_the_folder_is_refused(
    tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    inside = tmp_path / "models"
    inside.mkdir()
    model = external_model(inside, "../weights.bin")
    shutil.move(inside / "weights.bin", tmp_path / "weights.bin")  # the data really sits outside
    with pytest.raises(
        GuardRefusal, match=r"points its external data outside the model's folder \(../weights.bin\)"
    ):
        verify_model(model, require_hash=False)
    line = error_line(infer_cli(model, {"input": digits[0][:1]}, tmp_path, "require_hash=false"))
    assert "outside the model's folder" in line  # the core's loader refuses it before any guard runs


def test_external_data_inside_the_folder_runs_isolated(
    tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    model = external_model(tmp_path, "weights.bin")
    assert verify_model(model, require_hash=False).external
    result = edgeplug.infer(
        model, {"input": digits[0][:4]}, guards=["security"], options={"security": {"require_hash": False}}
    )
    assert result.outputs["logits"].argmax(1).tolist() == digits[1][:4].tolist()


def test_sessions_are_built_from_the_checked_bytes(copy: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    """A file swapped between the check and the load is refused by the worker and the in-process runner."""
    from edgeplug_security import inprocess, isolation

    good = sha256_file(copy)
    tamper(copy)  # the file no longer has the digest the check vouched for
    with pytest.raises(GuardRefusal, match="changed on disk after it was checked"):
        inprocess.runner(copy, good, 1, False)
    run = isolation.runner(isolation.model_key(copy, good, 1024, 1, False), timeout_s=30)
    with pytest.raises(GuardRefusal, match="changed on disk after it was checked"):
        run({"input": digits[0][:1]})


def test_in_process_and_isolated_agree(copy: Path, digits: tuple[np.ndarray, np.ndarray]) -> None:
    x = digits[0][:16]
    inside = edgeplug.infer(copy, {"input": x}, ["security"], {"security": {"isolate": False}})
    isolated = edgeplug.infer(copy, {"input": x}, ["security"], {"security": {"isolate": True}})
    np.testing.assert_array_equal(inside.outputs["logits"], isolated.outputs["logits"])
    assert inside.outputs["logits"].argmax(1).tolist() == digits[1][:16].tolist()


def test_pinned_sha256(example_model: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    """A hash given out of band replaces the sidecar, and is checked besides it when both exist."""
    digest = sha256_file(example_model)
    result = edgeplug.infer(
        example_model, {"input": digits[0][:1]}, ["security"], {"security": {"sha256": digest}}
    )
    assert result.flags["model_sha256"] == digest
    line = error_line(infer_cli(example_model, {"input": digits[0][:1]}, tmp_path, f"sha256={'0' * 64}"))
    assert line.endswith("does not match the pinned sha256 (security.sha256): tampered or replaced")


def test_with_a_run_record_the_pin_is_the_records_sha256(
    copy: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """One pin covers everything the record hashes: a tampered model with a record rewritten to match
    passes unpinned (a checksum is not a signature) and is refused under the pin of the original record."""
    x = {"input": digits[0][:1]}
    pin = sha256_file(copy.with_name("digits_cnn.edgeplug.json"))
    pinned = edgeplug.infer(copy, x, ["security"], {"security": {"sha256": pin}})
    assert pinned.flags["model_sha256"] == sha256_file(copy)
    line = error_line(infer_cli(copy, x, tmp_path, f"sha256={sha256_file(copy)}"))
    assert "security.sha256 pins the run record digits_cnn.edgeplug.json when the model has one" in line
    tamper(copy)
    RunRecord.of_run(copy).write(copy.parent)
    assert edgeplug.infer(copy, x, ["security"]).flags["model_sha256"] == sha256_file(copy)
    line = error_line(infer_cli(copy, x, tmp_path, f"sha256={pin}"))
    assert line == (
        f"edgeplug: error: run record digits_cnn.edgeplug.json of model {copy} does not match the pinned "
        "sha256 (security.sha256): tampered or replaced"
    )
