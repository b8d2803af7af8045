"""The accuracy budget of the mixed-precision search: the step's tolerance (checked exactly as the core's
verification checks it) plus an optional user metric given as 'module:function' or 'file.py:function'."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from edgeplug import OptionError, Tolerance
from edgeplug.verify import evaluate

Outputs = Mapping[str, np.ndarray]
Metric = Callable[[Outputs, Outputs, "np.ndarray | None"], float]


def load_metric(spec: str) -> Metric:
    """Import `package.module:function` or `path/to/file.py:function`."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise OptionError(f"quant.metric {spec!r}: write it as module:function or path/to/file.py:function")
    try:
        if where.endswith(".py"):
            path = Path(where).expanduser()
            if not path.is_file():
                raise OptionError(f"quant.metric: {path} does not exist")
            loader = importlib.util.spec_from_file_location(f"edgeplug_quant_metric_{path.stem}", path)
            if loader is None or loader.loader is None:
                raise OptionError(f"quant.metric: cannot import {path}")
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except OptionError:
        raise
    except Exception as exc:
        raise OptionError(f"quant.metric: importing {where} failed: {type(exc).__name__}: {exc}") from None
    func = getattr(module, name, None)
    if not callable(func):
        raise OptionError(f"quant.metric: {where} has no function {name!r}")
    return func


@dataclass
class Budget:
    """What a quantized candidate must meet against the float model's outputs."""

    tolerance: Tolerance
    metric: Metric | None = None
    min_metric: float | None = None
    metric_name: str | None = None

    def evaluate(self, reference: Outputs, candidate: Outputs, labels: np.ndarray | None) -> dict[str, Any]:
        """Per-output metrics, the failures (empty = within budget) and a scalar loss (lower is better)."""
        metrics, failures = evaluate(reference, candidate, self.tolerance)
        cosines = [m["cosine"] for m in metrics.values() if "cosine" in m]
        top1s = [m["top1"] for m in metrics.values() if "top1" in m]
        result: dict[str, Any] = {
            "cosine": min(cosines) if cosines else 0.0,
            "top1": min(top1s) if top1s else None,
            "max_abs_error": max((m.get("max_abs_error", np.inf) for m in metrics.values()), default=np.inf),
        }
        loss = 1.0 - result["cosine"]
        if self.tolerance.min_top1 is not None and result["top1"] is not None:
            loss += 1.0 - result["top1"]
        if self.metric is not None:
            try:
                score = float(self.metric(reference, candidate, labels))
            except Exception as exc:
                raise OptionError(
                    f"quant.metric {self.metric_name} raised {type(exc).__name__}: {exc}"
                ) from None
            result["metric"] = score
            if self.min_metric is not None and score < self.min_metric:
                failures.append(f"metric {self.metric_name} {score:.5g} < {self.min_metric:g}")
            loss += max(0.0, (self.min_metric or score) - score)
        result["loss"] = float(loss)
        result["failures"] = failures
        return result
