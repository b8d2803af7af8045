"""A cascade whose files changed does not run: every model is hashed against the manifest before any
session is made, and `edgeplug infer --artifact` refuses it before any of its code loads."""

from __future__ import annotations

import json
from pathlib import Path

import edgeplug
import numpy as np
import pytest
from click.testing import CliRunner
from edgeplug.cli import main
from edgeplug.plugin_api import Artifact
from edgeplug_adaptive import runner as runner_module
from edgeplug_adaptive.gates import Gate
from edgeplug_adaptive.runner import CascadeRunner

from .conftest import offset_model, save, write_cascade


def _no_sessions(monkeypatch):
    made = []
    monkeypatch.setattr(
        runner_module, "session", lambda *a, **k: made.append(a) or pytest.fail("session made")
    )
    return made


def test_a_changed_model_is_refused_before_any_session(tmp_path, monkeypatch):
    artifact = write_cascade(
        tmp_path, [offset_model(0), offset_model(100)], Gate("confidence", output="logits"), [0.8]
    )
    CascadeRunner(artifact)  # intact: runs
    save(offset_model(5), artifact.files[2])  # the large model replaced by another valid model
    unrecorded = Artifact(artifact.kind, artifact.files, {}, artifact.info)  # only the manifest vouches
    made = _no_sessions(monkeypatch)
    with pytest.raises(edgeplug.ModelError, match=r"cascade model .*1-m1\.onnx does not match the sha256"):
        CascadeRunner(unrecorded)
    assert made == []


def test_a_changed_manifest_is_refused_by_the_artifacts_hashes(tmp_path, monkeypatch):
    artifact = write_cascade(
        tmp_path, [offset_model(0), offset_model(100)], Gate("confidence", output="logits"), [0.8]
    )
    manifest = json.loads(artifact.main.read_text())
    manifest["thresholds"] = ["-inf"]  # never escalate: a consistent, but not the recorded, manifest
    artifact.main.write_text(json.dumps(manifest))
    made = _no_sessions(monkeypatch)
    with pytest.raises(edgeplug.ModelError, match=r"cascade\.json of the artifact does not match"):
        CascadeRunner(artifact)
    assert made == []


@pytest.mark.parametrize("broken", ["missing", "symlink", "escape"])
def test_manifest_paths_stay_plain_files_beside_it(tmp_path, broken):
    artifact = write_cascade(
        tmp_path, [offset_model(0), offset_model(100)], Gate("confidence", output="logits"), [0.8]
    )
    folder = artifact.main.parent
    target = folder / "1-m1.onnx"
    if broken == "missing":
        target.unlink()
        match = "is missing"
    elif broken == "symlink":
        real = tmp_path / "elsewhere.onnx"
        target.rename(real)
        target.symlink_to(real)
        match = "cannot be opened"
    else:
        manifest = json.loads(artifact.main.read_text())
        manifest["models"][1]["file"] = "../1-m1.onnx"
        artifact.main.write_text(json.dumps(manifest))
        artifact = Artifact(artifact.kind, artifact.files, {}, artifact.info)
        match = "is not a plain file name"
    with pytest.raises(edgeplug.ModelError, match=match):
        CascadeRunner(artifact)


def test_infer_refuses_a_cascade_whose_model_changed(cascade_copy, digits_split):
    large = cascade_copy / "cascade" / "1-digits_cnn.onnx"
    data = bytearray(large.read_bytes())
    data[-8] ^= 1  # one bit of a weight
    large.write_bytes(bytes(data))
    x = Path(cascade_copy / "x.npz")
    with np.load(digits_split[1]) as npz:
        np.savez(x, input=npz["input"][:4])
    result = CliRunner().invoke(
        main, ["infer", str(cascade_copy / "digits_cnn.onnx"), "--input", str(x), "--artifact"]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "1-digits_cnn.onnx does not match its recorded sha256" in lines[0]


def test_the_core_gets_the_reference_model_and_the_budget(tmp_path):
    """The artifact hands the core its largest model and the cascade's budget, to be verified against."""
    from edgeplug.plugin_api import Tolerance
    from edgeplug_adaptive import cascade as cascade_module

    artifact = write_cascade(
        tmp_path, [offset_model(0), offset_model(100)], Gate("confidence", output="logits"), [0.8]
    )
    budget = Tolerance(min_top1=0.98)
    built = cascade_module.Built(artifact, verdict=None, reference=artifact.files[2], tolerance=budget)
    handed = cascade_module.with_reference(built)
    assert handed.reference == artifact.files[2] and handed.tolerance == budget
    assert handed.files == artifact.files and handed.kind == "cascade"
