"""The model zoo: real trained models and their data, built from installed packages into a cache folder.

    from benchmarks.zoo import get
    zoo_model = get("mobilenetv2")      # builds on first use, then checks the files' sha256
    zoo_model.model, zoo_model.models["model_bn"], zoo_model.data["evaluation"], zoo_model.metric

    python -m benchmarks.zoo build [--cache DIR] [--only NAME ...] [--force] [--list]

Not part of the installed edgeplug package: tests and benchmarks use it from a checkout.
"""

from __future__ import annotations

from .cache import DEFAULT_CACHE, Recipe, cache_dir, missing_requirements
from .entries import ENTRIES
from .errors import MissingRequirement, ZooError
from .registry import ZooModel, get, missing, names

__all__ = [
    "DEFAULT_CACHE",
    "ENTRIES",
    "MissingRequirement",
    "Recipe",
    "ZooError",
    "ZooModel",
    "cache_dir",
    "get",
    "missing",
    "missing_requirements",
    "names",
]
