"""The security guard is a pluggy wrapper: it stacks with another guard plugin, outermost first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import edgeplug
import numpy as np
from edgeplug import InferenceRequest, hookimpl

from tests.conftest import registered


class Audit:
    """A second guard that records what it sees on the way in and out."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    @hookimpl(wrapper=True)
    def guard_inference(self, request: InferenceRequest):  # type: ignore[no-untyped-def]
        self.seen.append(("in", request.run.__qualname__))
        result = yield
        self.seen.append(("out", result.abstained, dict(result.flags)))
        result.flags["audited"] = True
        return result


def test_security_stacks_inside_another_guard(
    guarded_digits: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    audit = Audit()
    with registered((audit, "audit")):
        result = edgeplug.infer(
            guarded_digits,
            {"input": digits[0][:2]},
            guards=["audit", "security"],
            options={"security": {"min_confidence": 0.999999}},
        )
    assert result.flags["audited"] is True and "confidence" in result.flags
    (_, abstained, flags) = audit.seen[1]
    assert audit.seen[0][0] == "in"
    assert abstained == result.abstained and flags["model_sha256"] == result.flags["model_sha256"]
