"""Stand-ins for the three `torchvision.ops` names onnx2torch imports at load, used only while it loads and
only when torchvision is not installed (the torchvision wheel pip pairs with torch 2.13 breaks the
`transformers` imports of the environment, so it is not installed; README.md, "Converter").

onnx2torch needs torchvision for exactly two operators: NonMaxSuppression (`torchvision.ops.nms`,
`box_convert`) and RoiAlign (`roi_align`). The stand-ins are placed in `sys.modules` for the import and
taken out again right after it, so no other package ever sees a fake torchvision; the converter refuses
models holding those operators while they are in use (`NEEDS_TORCHVISION`).
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

NEEDS_TORCHVISION = frozenset({"NonMaxSuppression", "RoiAlign"})
NAMES = ("nms", "box_convert", "roi_align")


def _unavailable(name: str) -> Callable[..., NoReturn]:
    def call(*args: Any, **kwargs: Any) -> NoReturn:
        raise RuntimeError(f"torchvision.ops.{name} is not installed (edgeplug-distill torchvision stand-in)")

    call.__name__ = name
    return call


def _module(name: str) -> types.ModuleType:
    module = types.ModuleType(name, "edgeplug-distill stand-in: torchvision is not installed")
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    return module


@contextmanager
def standing_in() -> Iterator[None]:
    """Place the stand-in `torchvision` and `torchvision.ops` in sys.modules for the block, then remove
    exactly what was placed (a real torchvision is never shadowed: the caller checks that none exists)."""
    package, ops = _module("torchvision"), _module("torchvision.ops")
    package.__path__ = []  # a package, so `from torchvision.ops import x` resolves the submodule
    for name in NAMES:
        setattr(ops, name, _unavailable(name))
    package.ops = ops  # type: ignore[attr-defined]
    placed = {"torchvision": package, "torchvision.ops": ops}
    if any(name in sys.modules for name in placed):
        raise RuntimeError("torchvision is already imported; the stand-in is not needed")
    sys.modules.update(placed)
    try:
        yield
    finally:
        for name, module in placed.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
