"""Fixtures of the model-zoo tests (benchmarks/zoo). This folder has no __init__.py on purpose: a package
named tests.zoo would shadow tests/zoo.py, the random-weight architecture zoo other tests import."""

from __future__ import annotations

import pytest

from benchmarks import zoo


def built(name: str) -> zoo.ZooModel:
    """The zoo entry, built on demand into the shared cache; skipped only when something it is built from
    is not installed (the reason names the install command)."""
    reason = zoo.missing(name)
    if reason:
        pytest.skip(reason)
    return zoo.get(name)


@pytest.fixture(scope="session")
def imagenet_photos() -> zoo.ZooModel:
    return built("imagenet_photos")


@pytest.fixture(scope="session")
def mobilenetv2() -> zoo.ZooModel:
    return built("mobilenetv2")


@pytest.fixture(scope="session")
def yolov8n() -> zoo.ZooModel:
    return built("yolov8n")


@pytest.fixture(scope="session")
def minilm() -> zoo.ZooModel:
    return built("minilm")


@pytest.fixture(scope="session")
def fashion_cnn() -> zoo.ZooModel:
    return built("fashion_cnn")
