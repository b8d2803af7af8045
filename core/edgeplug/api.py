"""The short Python way in: `edgeplug.optimize(...)`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .model import Model
from .pipeline import Pipeline, RunResult, RunSettings


def optimize(
    model: str | Path | Model,
    plugins: Sequence[str],
    data: str | Path | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    output_dir: str | Path | None = None,
    **settings: Any,
) -> RunResult:
    """Run the chain `plugins` on `model` with verification after every step; returns the final Model,
    the report dict and the output folder. Keyword settings are RunSettings fields (on_fail, bench, ...)."""
    run_settings = RunSettings(
        plugins=list(plugins),
        options={k: dict(v) for k, v in (options or {}).items()},
        data=str(data) if data is not None else None,
        output_dir=Path(output_dir) if output_dir else None,
        quiet=settings.pop("quiet", True),
        **settings,
    )
    source = model if isinstance(model, Model) else Path(model)
    return Pipeline(source, run_settings).run()
