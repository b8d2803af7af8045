"""Issue 15, item 7 (its security part): `security.timeout_s` did not cover the worker's start (a fixed
120 s did), and was silently ignored with `isolate=false`. It now bounds every call into the worker,
starting it included, and is refused where nothing can enforce it; so is `memory_mb`."""

from __future__ import annotations

from pathlib import Path

import edgeplug
import numpy as np
import pytest
from edgeplug import GuardRefusal, OptionError
from edgeplug_security.isolation import POOL

from .conftest import RELU, X, cli, save_relu


def test_timeout_covers_starting_the_worker(tmp_path: Path) -> None:
    model = save_relu(tmp_path / "m.onnx")
    with pytest.raises(GuardRefusal) as refused:
        edgeplug.infer(model, {"x": X}, guards=["security"], options={"security": {"timeout_s": 0.01}})
    assert str(refused.value) == (
        "the inference worker did not start and load the model within security.timeout_s=0.01s; worker "
        "killed (a large model needs a larger timeout_s)"
    )
    assert not [w for k, w in POOL.workers.items() if k.path == str(model.resolve()) and w.alive]
    result = edgeplug.infer(model, {"x": X}, guards=["security"], options={"security": {"timeout_s": 60}})
    np.testing.assert_array_equal(result.outputs["y"], RELU)


@pytest.mark.parametrize("option", ["timeout_s=5", "memory_mb=512"])
def test_worker_limits_are_refused_where_no_worker_runs(tmp_path: Path, option: str) -> None:
    model = save_relu(tmp_path / "m.onnx")
    np.savez(tmp_path / "x.npz", x=X)
    done = cli(
        *("infer", model, "--input", tmp_path / "x.npz", "--guard", "security"),
        *("-o", "security.isolate=false", "-o", f"security.{option}"),
    )
    name = option.split("=")[0]
    assert done.code == 2
    assert done.error == (
        f"edgeplug: error: security.{name} limits the isolated worker, and security.isolate=false runs the "
        f"model in this process, where nothing enforces it: drop security.{name} or set security.isolate=true"
    )
    with pytest.raises(OptionError, match=f"security.{name} limits the isolated worker"):
        edgeplug.infer(model, {"x": X}, ["security"], {"security": {"isolate": False, name: 5}})
    ok = edgeplug.infer(model, {"x": X}, ["security"], {"security": {"isolate": False}})
    np.testing.assert_array_equal(ok.outputs["y"], RELU)
