"""Issue 15, item 3: artifact paths in the run record were not confined: "../outside/<library>" was
loaded and run, and absolute paths were read and hashed. Every recorded path must now be relative,
inside the model's folder, free of symbolic links and a regular file: anything else exits 2 before any
byte of it is read or loaded, with or without a guard."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from edgeplug.context import sha256_file

from .conftest import LIBRARY, Deployment, infer_artifact

GUARDS = [pytest.param(("isolate=false",), id="guarded"), pytest.param((), id="unguarded")]
LEGACY = [pytest.param(False, id="schema-2"), pytest.param(True, id="legacy-record")]


def point_record_at(deployment: Deployment, path: str, file: Path, legacy: bool = False) -> None:
    """Record `path` (with the true sha256 of `file`) as the artifact's library; `legacy`: as the record
    was written before schema 2 (no schema_version, hashes keyed by file name), the form of the report."""
    record = json.loads(deployment.sidecar.read_text())
    record["artifact"]["paths"] = [path]
    record["artifact"]["files"] = {Path(path).name if legacy else path: sha256_file(file)}
    if legacy:
        del record["schema_version"]
    deployment.sidecar.write_text(json.dumps(record))


def outside(deployment: Deployment) -> Path:
    folder = deployment.folder.parent / "outside"
    folder.mkdir(exist_ok=True)
    return deployment.evil_library(folder / LIBRARY)


@pytest.mark.parametrize("legacy", LEGACY)
@pytest.mark.parametrize("options", GUARDS)
def test_a_path_leaving_the_folder_is_refused(
    deployment: Deployment, options: tuple[str, ...], legacy: bool
) -> None:
    point_record_at(deployment, f"../outside/{LIBRARY}", outside(deployment), legacy)
    done = infer_artifact(deployment, *options, guard=bool(options))
    assert done.code == 2
    assert done.error == (
        f"edgeplug: error: {deployment.sidecar} records artifact path '../outside/{LIBRARY}', which leaves "
        "the model's folder ('..'); refused"
    )
    assert deployment.loads() == []


@pytest.mark.parametrize("legacy", LEGACY)
@pytest.mark.parametrize("options", GUARDS)
def test_an_absolute_path_is_refused(deployment: Deployment, options: tuple[str, ...], legacy: bool) -> None:
    library = outside(deployment)
    point_record_at(deployment, str(library), library, legacy)
    done = infer_artifact(deployment, *options, guard=bool(options))
    assert done.code == 2
    assert done.error == (
        f"edgeplug: error: {deployment.sidecar} records artifact path '{library}', an absolute path outside "
        "the model's folder; refused"
    )
    assert deployment.loads() == []


@pytest.mark.parametrize("options", GUARDS)
def test_a_symlink_to_a_file_outside_is_refused(deployment: Deployment, options: tuple[str, ...]) -> None:
    """The recorded name is inside, but it is a link to the attacker's file (whose hash the record holds)."""
    library = outside(deployment)
    deployment.library.unlink()
    deployment.library.symlink_to(library)
    point_record_at(deployment, LIBRARY, library)
    done = infer_artifact(deployment, *options, guard=bool(options))
    assert done.code == 2
    assert done.error == (
        f"edgeplug: error: artifact file {LIBRARY} recorded in m.edgeplug.json is or passes through a "
        f"symbolic link ({LIBRARY}); refused"
    )
    assert deployment.loads() == []


def test_a_symlinked_folder_on_the_path_is_refused(deployment: Deployment) -> None:
    library = outside(deployment)
    os.symlink(library.parent, deployment.folder / "build")
    point_record_at(deployment, f"build/{LIBRARY}", library)
    done = infer_artifact(deployment, "isolate=false")
    assert done.code == 2
    assert done.error == (
        f"edgeplug: error: artifact file build/{LIBRARY} recorded in m.edgeplug.json is or passes through a "
        "symbolic link (build); refused"
    )
    assert deployment.loads() == []


def test_a_path_that_is_not_a_regular_file_is_refused(deployment: Deployment) -> None:
    deployment.library.unlink()
    os.mkfifo(deployment.library)  # opening a FIFO for reading would block a careless reader forever
    done = infer_artifact(deployment, "isolate=false")
    assert done.code == 2
    assert done.error == (
        f"edgeplug: error: artifact file {LIBRARY} recorded in m.edgeplug.json is not a regular file; refused"
    )
