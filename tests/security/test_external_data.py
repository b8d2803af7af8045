"""External data files: hashed against the run record, every file the model reads from must be recorded,
the loaders hash them again, and the plugin's own walk finds every tensor that may hold external data."""

from __future__ import annotations

import json
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from edgeplug import GuardRefusal
from edgeplug.context import sha256_file
from edgeplug.run_record import RunRecord
from edgeplug_security import inprocess, integrity, isolation
from edgeplug_security.integrity import verify_model

from .conftest import error_line, infer_cli


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
    RunRecord.of_run(model, external_data=[folder / "ext.onnx.data"]).write(folder)
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
    with pytest.raises(
        GuardRefusal, match=r"from external data file ext\.onnx\.data, which .* records no sha256"
    ):
        verify_model(model, require_hash=True)
    sidecar.write_text(json.dumps({**record, "external_data": {"../ext.onnx.data": "0" * 64}}))
    with pytest.raises(
        GuardRefusal, match=r"records external data path '\.\./ext\.onnx\.data', which leaves"
    ):
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
        [const],
        "b",
        [],
        [helper.make_tensor_value_info("c", TP.FLOAT, [1])],
        [helper.make_tensor("bi", TP.FLOAT, [1], [2.0])],
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


def test_one_pin_covers_the_external_data(example_model: Path, tmp_path: Path) -> None:
    """Changed external data with a run record rewritten to match is caught by a pin of the record; a
    pin of the .onnx file alone does not cover external data, so it is refused for such a model."""
    model = _external(tmp_path / "deploy", example_model)
    sidecar = model.with_name("ext.edgeplug.json")
    pin = sha256_file(sidecar)
    assert verify_model(model, require_hash=True, pinned=pin).external
    data = model.with_name("ext.onnx.data")
    data.write_bytes(data.read_bytes()[::-1])
    RunRecord.of_run(model, external_data=[data]).write(model.parent)  # the attacker updates the record
    assert verify_model(model, require_hash=True).external  # unpinned, the rewritten record is trusted
    with pytest.raises(GuardRefusal, match=r"run record ext\.edgeplug\.json .* does not match the pinned"):
        verify_model(model, require_hash=True, pinned=pin)
    sidecar.unlink()
    with pytest.raises(GuardRefusal, match=r"which a pinned sha256 of the \.onnx file alone does not cover"):
        verify_model(model, require_hash=True, pinned=sha256_file(model))
