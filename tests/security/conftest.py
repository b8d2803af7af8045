"""Fixtures of the security tests: the example CNN optimized with `--plugins security`, and CLI helpers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from edgeplug.cli import main


@pytest.fixture(scope="session")
def guarded_digits(
    tmp_path_factory: pytest.TempPathFactory, example_model: Path, example_test_data: Path
) -> Path:
    """digits_cnn.onnx after `edgeplug run --plugins security --data digits_test.npz` (model + sidecar)."""
    out = tmp_path_factory.mktemp("guarded")
    result = cli(
        [
            "run",
            str(example_model),
            "--plugins",
            "security",
            "--data",
            str(example_test_data),
            "--output-dir",
            str(out),
            "--quiet",
        ]
    )
    assert result.exit_code == 0, result.output
    return out / "digits_cnn.onnx"


@pytest.fixture(scope="session")
def digits(example_test_data: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(example_test_data) as data:
        return data["input"], data["labels"]


def cli(args: Sequence[str]) -> Result:
    return CliRunner().invoke(main, list(args))


def infer_cli(model: Path, inputs: dict[str, np.ndarray], tmp_path: Path, *options: str) -> Result:
    """`edgeplug infer MODEL --input X.npz --guard security -o security.K=V ...`."""
    npz = tmp_path / "inputs.npz"
    np.savez(npz, **inputs)
    args = ["infer", str(model), "--input", str(npz), "--guard", "security"]
    for option in options:
        args += ["-o", f"security.{option}"]
    return cli(args)


def error_line(result: Result) -> str:
    """The one stderr line of a refused command (and check it is one line with exit 2)."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("edgeplug: error: ")
    return lines[0]
