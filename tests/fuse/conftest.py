"""The `fuse` fixture: run the plugin through edgeplug.optimize (core verification included)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import edgeplug
import onnx
import pytest
from edgeplug import Model


@pytest.fixture
def fuse(tmp_path: Path) -> Callable[..., edgeplug.pipeline.RunResult]:
    """Run `edgeplug.optimize(model, ["fuse"])` (core verification included) with fuse options."""
    counter = iter(range(1000))

    def run(proto: onnx.ModelProto | Path, data: str | None = None, **options: Any) -> Any:
        source = Model(proto) if isinstance(proto, onnx.ModelProto) else proto
        out = tmp_path / f"run{next(counter)}"
        return edgeplug.optimize(source, ["fuse"], data=data, options={"fuse": options}, output_dir=out)

    return run
