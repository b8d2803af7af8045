"""The run record `<stem>.edgeplug.json` (edgeplug.run_record): written atomically, read back exactly,
every recorded path confined and hashed, and a compiled artifact handed over as a private copy of the
bytes that were hashed, with nothing beside it that the record does not list."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeplug import Artifact, ModelError, PluginError
from edgeplug.context import sha256_file
from edgeplug.run_record import RunRecord, sidecar_path
from onnx import TensorProto, helper


@pytest.fixture
def compiled(tmp_path: Path) -> Path:
    """m.onnx with a two-file artifact (lib/a.bin, b.txt) and its run record."""
    model = tmp_path / "m.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    onnx.save(helper.make_model(graph), str(model))
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.bin").write_bytes(b"\x7fELF pretend library")
    (tmp_path / "b.txt").write_text("notes")
    artifact = Artifact.of("test-kind", [tmp_path / "lib" / "a.bin", tmp_path / "b.txt"], shape=(1, 2))
    RunRecord.of_run(model, ["fuse"], artifact).write(tmp_path)
    return model


def test_a_written_record_reads_back_and_its_digest_is_the_files(compiled: Path) -> None:
    record = RunRecord.read(compiled)
    assert record.model == "m.onnx" and record.sha256 == sha256_file(compiled)
    assert record.steps == ("fuse",)
    assert record.artifact is not None and record.artifact.kind == "test-kind"
    assert record.artifact.files == (
        ("lib/a.bin", sha256_file(compiled.parent / "lib" / "a.bin")),
        ("b.txt", sha256_file(compiled.parent / "b.txt")),
    )
    assert record.artifact.info == {"shape": [1, 2]}
    assert record.digest == sha256_file(sidecar_path(compiled))
    raw = json.loads(sidecar_path(compiled).read_text())
    assert raw["schema_version"] == 2 and raw["artifact"]["paths"] == ["lib/a.bin", "b.txt"]
    assert [p.name for p in compiled.parent.iterdir() if ".tmp-" in p.name] == []


def test_a_failed_write_leaves_neither_a_temporary_file_nor_a_changed_record(
    compiled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = sidecar_path(compiled).read_bytes()

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        RunRecord.of_run(compiled, ["other"]).write(compiled.parent)
    assert sidecar_path(compiled).read_bytes() == before
    assert [p.name for p in compiled.parent.iterdir() if ".tmp-" in p.name] == []


def test_write_returns_the_sha256_to_pin(compiled: Path) -> None:
    digest = RunRecord.of_run(compiled).write(compiled.parent)
    assert digest == hashlib.sha256(sidecar_path(compiled).read_bytes()).hexdigest()


def test_a_record_written_before_schema_2_is_read(compiled: Path) -> None:
    """Files keyed by name with a `paths` list, no schema_version: what the pipeline wrote before."""
    sidecar = sidecar_path(compiled)
    raw = json.loads(sidecar.read_text())
    del raw["schema_version"]
    raw["artifact"]["files"] = {Path(p).name: h for p, h in raw["artifact"]["files"].items()}
    sidecar.write_text(json.dumps(raw))
    record = RunRecord.read(compiled)
    assert record.artifact is not None
    assert [p for p, _ in record.artifact.files] == ["lib/a.bin", "b.txt"]
    assert record.artifact_for(compiled).main.read_bytes() == b"\x7fELF pretend library"


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("../m.onnx", "which leaves the model's folder"),
        ("lib/../../x", "which leaves the model's folder"),
        ("/etc/passwd", "an absolute path outside the model's folder"),
        ("C:\\x.dll", "an absolute path outside the model's folder"),
        ("lib\\a.bin", "with a backslash"),
        ("", "empty or invalid"),
        (".", "which names no file"),
    ],
)
def test_recorded_paths_are_confined(compiled: Path, path: str, why: str) -> None:
    sidecar = sidecar_path(compiled)
    raw = json.loads(sidecar.read_text())
    raw["artifact"]["paths"] = [path]
    raw["artifact"]["files"] = {path: "0" * 64}
    sidecar.write_text(json.dumps(raw))
    with pytest.raises(ModelError, match=f"records artifact path .*{why}"):
        RunRecord.read(compiled)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"sha256": "not-a-digest"}, "is not a sha256"),
        ({"model": "../m.onnx"}, "which is not a file name beside it"),
        ({"model": "other.onnx"}, "records model 'other.onnx', not 'm.onnx': renamed or replaced"),
        ({"schema_version": 9}, "unknown schema_version 9"),
        ({"external_data": {"m.onnx.data": 5}}, "is not a sha256"),
    ],
)
def test_a_malformed_record_is_refused(compiled: Path, edit: dict, message: str) -> None:
    sidecar = sidecar_path(compiled)
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), **edit}))
    with pytest.raises(ModelError, match=message):
        RunRecord.read(compiled)


def test_a_symlinked_record_is_refused(compiled: Path, tmp_path: Path) -> None:
    sidecar = sidecar_path(compiled)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere.json"
    sidecar.rename(elsewhere)
    sidecar.symlink_to(elsewhere)
    with pytest.raises(
        ModelError, match=r"is or passes through a symbolic link \(m\.edgeplug\.json\); refused"
    ):
        RunRecord.read(compiled)


def test_the_artifact_is_a_private_copy_of_the_hashed_bytes_and_nothing_else(compiled: Path) -> None:
    folder = compiled.parent
    (folder / "lib" / "unlisted.so").write_bytes(b"a neighbour the record does not list")
    artifact = RunRecord.read(compiled).artifact_for(compiled)
    copy = artifact.files[0].parents[1]
    assert copy != folder and folder not in copy.parents
    assert stat.S_IMODE(copy.stat().st_mode) == 0o700
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == [
        "b.txt",
        "lib/a.bin",
    ]
    assert artifact.sha256 == dict(RunRecord.read(compiled).artifact.files)  # type: ignore[union-attr]
    (folder / "lib" / "a.bin").write_bytes(b"swapped after the check")
    assert artifact.main.read_bytes() == b"\x7fELF pretend library"  # the copy is what runs
    with pytest.raises(ModelError, match=r"lib/a\.bin does not match its recorded sha256"):
        RunRecord.read(compiled).artifact_for(compiled)


def test_check_artifact_accepts_only_the_recorded_bytes(compiled: Path, tmp_path: Path) -> None:
    record = RunRecord.read(compiled)
    artifact = record.artifact_for(compiled)
    record.check_artifact(artifact)
    other = tmp_path / "other"
    (other / "lib").mkdir(parents=True)
    (other / "lib" / "a.bin").write_bytes(b"something else")
    (other / "b.txt").write_text("notes")
    forged = Artifact(
        artifact.kind, (other / "lib" / "a.bin", other / "b.txt"), artifact.sha256, artifact.info
    )
    with pytest.raises(ModelError, match=r"does not match the sha256 its run record gives for lib/a\.bin"):
        record.check_artifact(forged)
    with pytest.raises(ModelError, match="not the one its run record describes"):
        record.check_artifact(Artifact(artifact.kind, artifact.files[:1], artifact.sha256, artifact.info))


def test_a_record_of_no_compiled_artifact_says_so(compiled: Path) -> None:
    RunRecord.of_run(compiled, [], Artifact.of("onnx", [compiled])).write(compiled.parent)
    with pytest.raises(ModelError, match="records no compiled artifact"):
        RunRecord.read(compiled).artifact_for(compiled)


def test_an_artifact_outside_the_output_folder_is_not_recorded(compiled: Path, tmp_path: Path) -> None:
    stray = tmp_path.parent / f"{tmp_path.name}-stray.bin"
    stray.write_bytes(np.zeros(4).tobytes())
    with pytest.raises(PluginError, match="is outside the output folder"):
        RunRecord.of_run(compiled, [], Artifact.of("test-kind", [stray]))
