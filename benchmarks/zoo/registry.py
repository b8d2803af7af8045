"""`get(name)`: an entry's files (built on demand) as a ZooModel."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import cache_dir, ensure, missing_requirements, problems, read_manifest
from .entries import ENTRIES
from .errors import ZooError

DATA_ROLES = ("calibration", "evaluation")


@dataclass(frozen=True)
class ZooModel:
    """One built entry. `models` by role ("model": the default export, "model_bn": BatchNorm kept),
    `data` the calibration/evaluation .npz (a dependency's when the entry has none of its own)."""

    name: str
    folder: Path
    models: dict[str, Path]
    data: dict[str, Path]
    files: dict[str, Path]
    metric: str | None
    notes: str
    properties: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def model(self) -> Path:
        return self.models["model"]


def names() -> list[str]:
    return list(ENTRIES)


def recipe_of(name: str):
    if name not in ENTRIES:
        raise ZooError(f"unknown zoo entry {name!r}; known: {', '.join(ENTRIES)}")
    return ENTRIES[name]


def missing(name: str) -> str | None:
    """Why `name` cannot be built here (its first missing requirement or a dependency's), else None."""
    recipe = recipe_of(name)
    for dep in recipe.depends:
        reason = missing(dep)
        if reason:
            return reason
    lines = missing_requirements(recipe)
    return lines[0] if lines else None


def get(
    name: str, cache: str | os.PathLike[str] | None = None, *, build: bool = True, force: bool = False
) -> ZooModel:
    """The entry `name`, built first (with its dependencies) when missing or invalid; with build=False a
    missing or invalid entry is a ZooError. `force` rebuilds this entry (not its dependencies)."""
    recipe = recipe_of(name)
    root = cache_dir(cache)
    deps = {dep: get(dep, root, build=build).folder for dep in recipe.depends}
    folder = root / name
    if build:
        manifest = ensure(recipe, root, deps, force=force)
    else:
        reasons = problems(recipe, folder, deps)
        if reasons:
            raise ZooError(
                f"zoo entry {name!r} in {root} is not usable ({reasons[0]}); "
                f"run: python -m benchmarks.zoo build --only {name}"
            )
        manifest = read_manifest(folder) or {}
    files = {role: folder / file for role, file in recipe.files.items()}
    data = {role: path for role, path in files.items() if role in DATA_ROLES}
    for dep in recipe.depends:
        dep_recipe = ENTRIES[dep]
        for role in DATA_ROLES:
            if role in dep_recipe.files:
                data.setdefault(role, deps[dep] / dep_recipe.files[role])
    return ZooModel(
        name=name,
        folder=folder,
        models={role: path for role, path in files.items() if role.startswith("model")},
        data=data,
        files=files,
        metric=recipe.metric,
        notes=recipe.notes,
        properties=manifest.get("properties", {}),
        manifest=manifest,
    )
