"""Issue 15, item 2: pinning `security.sha256` did not cover the artifact: replacing
`libedgeplug_model_host.so` and updating the run record's hash for it gave a guarded, pinned run with
exit 0 and the attacker's answers. The pin now is the run record's own sha256, and the record hashes
every file, so one pin covers the model, its external data and every artifact file."""

from __future__ import annotations

import json

import numpy as np
from edgeplug.context import sha256_file

from .conftest import Deployment, infer_artifact


def replace_library_and_record(deployment: Deployment) -> None:
    """What the attacker of item 2 does: their library in place, its hash written into the run record."""
    deployment.evil_library()
    record = json.loads(deployment.sidecar.read_text())
    record["artifact"]["files"]["libedgeplug_model_host.so"] = sha256_file(deployment.library)
    deployment.sidecar.write_text(json.dumps(record))


def test_a_pinned_run_refuses_a_replaced_library_with_an_updated_record(deployment: Deployment) -> None:
    replace_library_and_record(deployment)
    done = infer_artifact(deployment, "isolate=false", f"sha256={deployment.pin}")
    assert done.code == 2
    assert done.error == (
        f"edgeplug: error: run record m.edgeplug.json of model {deployment.model} does not match the pinned "
        "sha256 (security.sha256): tampered or replaced"
    )
    assert deployment.loads() == []


def test_without_a_pin_the_rewritten_record_is_trusted(deployment: Deployment) -> None:
    """The control, and the documented limit: the run record is a checksum, not a signature; whoever can
    rewrite it and the library wins unless the record's sha256 is pinned from a trusted source."""
    replace_library_and_record(deployment)
    done = infer_artifact(deployment, "isolate=false")
    assert done.code == 0, done.stderr
    np.testing.assert_array_equal(done.outputs()["y"], np.full((1, 4), 42.0, np.float32))
    assert deployment.loads() == ["evil"]


def test_the_pin_of_the_untampered_record_passes(deployment: Deployment) -> None:
    done = infer_artifact(deployment, "isolate=false", f"sha256={deployment.pin}")
    assert done.code == 0, done.stderr
    assert deployment.pin == sha256_file(deployment.sidecar)
    assert deployment.loads() == ["genuine"]


def test_the_attack_as_reported_pinning_the_model_file_is_refused(deployment: Deployment) -> None:
    """Item 2 as reported: the pin was the .onnx file's sha256, which leaves the library uncovered. With a
    run record beside the model that pin is refused, saying what to pin, and nothing loads."""
    replace_library_and_record(deployment)
    done = infer_artifact(deployment, "isolate=false", f"sha256={sha256_file(deployment.model)}")
    assert done.code == 2
    assert done.error == (
        "edgeplug: error: security.sha256 pins the run record m.edgeplug.json when the model has one (one "
        "pin for the model, its external data and its artifact); the value given is the .onnx file's own "
        "sha256: pin the sha256 of m.edgeplug.json instead"
    )
    assert deployment.loads() == []
