"""`edgeplug infer --artifact` runs the neon host library recorded beside the model."""

from __future__ import annotations

import edgeplug
import numpy as np
import pytest
from click.testing import CliRunner
from edgeplug.cli import main

pytest.importorskip("edgeplug_fuse")


def test_infer_runs_the_compiled_c_library(example_model, example_test_data, tmp_path):
    out = tmp_path / "out"
    ran = CliRunner().invoke(
        main,
        [
            "run",
            str(example_model),
            "--plugins",
            "fuse,neon",
            "-o",
            "neon.target=host",
            "--data",
            str(example_test_data),
            "--output-dir",
            str(out),
        ],
    )
    assert ran.exit_code == 0, ran.output
    data = np.load(example_test_data)
    inputs = {"input": data["input"][:40]}
    compiled = edgeplug.infer(out / "digits_cnn.onnx", inputs, artifact=True)
    reference = edgeplug.infer(out / "digits_cnn.onnx", inputs)
    assert compiled.outputs["logits"].shape == (40, 10)
    np.testing.assert_allclose(compiled.outputs["logits"], reference.outputs["logits"], rtol=1e-3, atol=1e-4)
    assert np.mean(compiled.outputs["logits"].argmax(1) == data["labels"][:40]) > 0.95
