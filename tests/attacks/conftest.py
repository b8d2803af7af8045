"""What the attack tests share: a deployed model with a compiled C artifact whose every load leaves a mark,
and the `edgeplug` command run as a separate process, as an attacker's victim would run it.

The artifact is a neon-style `c-library` (kind, file name and io layout the neon plugin's make_runner
takes): `libedgeplug_model_host.so`, built here with gcc from a few lines of C. Its constructor appends
a line to a marker file when the library is loaded, so a test sees whether any of its code ran; the
genuine library computes Relu (what the model computes), an attacker's library answers 42.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeplug import Artifact
from edgeplug.run_record import RunRecord
from onnx import TensorProto, helper

LIBRARY = "libedgeplug_model_host.so"
IO = {
    "inputs": [{"name": "x", "shape": [1, 4]}],
    "outputs": [{"name": "y", "shape": [1, 4]}],
    "scratch_bytes": 0,
}
X = np.array([[-1.0, 0.5, -2.0, 3.0]], np.float32)
RELU = np.maximum(X, 0)
SOURCE = r"""
#include <stdio.h>
__attribute__((constructor)) static void loaded(void) {
    FILE *f = fopen(MARKER, "a");
    if (f) { fputs(WHO "\n", f); fclose(f); }
}
int edgeplug_model_run_v(void **in, void **out, void *scratch) {
    const float *x = (const float *)in[0];
    float *y = (float *)out[0];
    for (int i = 0; i < 4; i++) y[i] = EVIL ? 42.0f : (x[i] > 0.0f ? x[i] : 0.0f);
    return 0;
}
"""


def build_library(target: Path, marker: Path, evil: bool) -> Path:
    """A host library like neon's: genuine (Relu) or an attacker's (42), both marking `marker` on load."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: the attack libraries are built with it")
    source = target.with_suffix(".c")
    source.write_text(SOURCE)
    who = "evil" if evil else "genuine"
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-O1",
            f'-DMARKER="{marker}"',
            f'-DWHO="{who}"',
            f"-DEVIL={int(evil)}",
            str(source),
            "-o",
            str(target),
        ],
        check=True,
        capture_output=True,
    )
    source.unlink()
    return target


def save_relu(model: Path) -> Path:
    """m.onnx: y = Relu(x), x and y float [1, 4]; with a run record beside it (no artifact)."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    RunRecord.of_run(model).write(model.parent)
    return model


@dataclass
class Deployment:
    """A deployed model folder: m.onnx (Relu), its C artifact, its run record; and where loads are marked."""

    folder: Path
    model: Path
    library: Path
    marker: Path
    inputs: Path
    pin: str  # the sha256 of the genuine run record, as a deployment manifest would hold it

    @property
    def sidecar(self) -> Path:
        return self.folder / "m.edgeplug.json"

    def loads(self) -> list[str]:
        """Who loaded: one line per load of a library ('genuine' or 'evil'), none if nothing ran."""
        return self.marker.read_text().split() if self.marker.exists() else []

    def evil_library(self, where: Path | None = None) -> Path:
        """Build the attacker's library at `where` (default: over the genuine one)."""
        return build_library(where or self.library, self.marker, evil=True)


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    pytest.importorskip("edgeplug_neon", reason="the c-library artifact is run by the neon plugin")
    folder = tmp_path / "deploy"
    folder.mkdir()
    model = save_relu(folder / "m.onnx")
    marker = tmp_path / "loaded.txt"
    library = build_library(folder / LIBRARY, marker, evil=False)
    pin = RunRecord.of_run(model, [], Artifact.of("c-library", [library], io=IO, target="host")).write(folder)
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=X)
    return Deployment(folder, model, library, marker, inputs, pin)


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    output: Path | None = None  # the --output .npz, when asked for

    def outputs(self) -> dict[str, np.ndarray]:
        assert self.code == 0 and self.output is not None, self.stderr
        with np.load(self.output) as data:
            return dict(data)

    @property
    def error(self) -> str:
        """The one error line of a refusal."""
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgeplug: error: "), self.stderr
        return lines[0]


def run_edgeplug(
    *args: object, cwd: Path, env: dict[str, str] | None = None, output: Path | None = None
) -> Outcome:
    """The installed `edgeplug` command in a separate process (its console script: the caller's working
    directory is not on its own sys.path)."""
    script = Path(sys.executable).with_name("edgeplug")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "edgeplug"]
    done = subprocess.run(
        [*command, *map(str, args)],
        cwd=cwd,
        env=env if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return Outcome(done.returncode, done.stdout, done.stderr, output)


def cli(*args: object, output: Path | None = None) -> Outcome:
    """The `edgeplug` command in this process (click's runner): exit code, stdout and stderr as a user
    sees them, without the start-up of a new interpreter."""
    from click.testing import CliRunner
    from edgeplug.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    return Outcome(result.exit_code, result.stdout, result.stderr, output)


def infer_artifact(deploy: Deployment, *options: str, guard: bool = True) -> Outcome:
    """`edgeplug infer m.onnx --input x.npz --artifact [--guard security] -o security.K=V ...`, in process
    (a library that loads runs its constructor here, which the marker shows)."""
    output = deploy.folder.parent / "outputs.npz"
    output.unlink(missing_ok=True)
    args: list[object] = ["infer", deploy.model, "--input", deploy.inputs, "--artifact", "--output", output]
    if guard:
        args += ["--guard", "security"]
    for option in options:
        args += ["-o", f"security.{option}"]
    return cli(*args, output=output)
