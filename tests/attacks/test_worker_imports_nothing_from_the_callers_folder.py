"""Issue 15, item 4: the isolated worker started with `python -m`, which puts the working directory first
on sys.path, so an `onnxruntime.py` beside the model ran inside the worker (`cd dir && edgeplug infer
m.onnx --input x.npz --guard security`). It now starts with `python -I` in a fresh folder of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import edgeplug
import numpy as np
import pytest
from edgeplug_security.isolation import POOL

from .conftest import RELU, X, run_edgeplug, save_relu

PLANTED = "import pathlib\npathlib.Path({marker!r}).write_text({name!r})\nraise ImportError('planted')\n"


def plant(folder: Path, marker: Path) -> None:
    """Modules the worker imports, planted where an attacker can write: they leave a mark if they run."""
    for name in ("onnxruntime", "numpy"):
        (folder / f"{name}.py").write_text(PLANTED.format(marker=str(marker), name=name))


def test_modules_planted_in_the_folder_of_the_model_and_of_the_caller_do_not_run(tmp_path: Path) -> None:
    folder = tmp_path / "dir"
    folder.mkdir()
    save_relu(folder / "m.onnx")
    marker = tmp_path / "planted-ran.txt"
    plant(folder, marker)
    # the control: a Python that puts this folder on sys.path runs the planted module
    subprocess.run([sys.executable, "-c", "import onnxruntime"], cwd=folder, capture_output=True, timeout=120)
    assert marker.read_text() == "onnxruntime"
    marker.unlink()
    np.savez(folder / "x.npz", x=X)
    done = run_edgeplug(
        "infer",
        "m.onnx",
        "--input",
        "x.npz",
        "--guard",
        "security",
        "--output",
        tmp_path / "y.npz",
        cwd=folder,
        output=tmp_path / "y.npz",
    )
    assert done.code == 0, done.stderr
    np.testing.assert_array_equal(done.outputs()["y"], RELU)
    assert not marker.exists()


def test_the_workers_sys_path_holds_neither_the_callers_folders_nor_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "dir"
    folder.mkdir()
    model = save_relu(folder / "m.onnx")
    planted = tmp_path / "pythonpath"
    planted.mkdir()
    marker = tmp_path / "planted-ran.txt"
    plant(planted, marker)
    plant(folder, marker)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("PYTHONPATH", str(planted))
    monkeypatch.setenv("PYTHONSTARTUP", str(planted / "numpy.py"))
    result = edgeplug.infer(model, {"x": X}, guards=["security"])
    np.testing.assert_array_equal(result.outputs["y"], RELU)
    (worker,) = [w for k, w in POOL.workers.items() if k.path == str(model.resolve())]
    path = worker.info["sys_path"]
    assert "" not in path and str(folder) not in path and str(planted) not in path
    assert worker.info["cwd"] != str(folder)
    assert not marker.exists()
