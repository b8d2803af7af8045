"""The guarded session, in the worker or in this process, takes the caller's thread count."""

from __future__ import annotations

import shutil
from pathlib import Path

import edgeplug
import numpy as np
import pytest
from edgeplug import OptionError
from edgeplug_security import inprocess, isolation


def test_guarded_session_takes_the_request_threads(
    guarded_digits: Path, digits: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("digits_cnn.onnx", "digits_cnn.edgeplug.json"):
        shutil.copy(guarded_digits.with_name(name), folder / name)
    model = folder / "digits_cnn.onnx"
    x = {"input": digits[0][:2]}
    edgeplug.infer(model, x, ["security"], {"security": {"isolate": False}}, threads=2)
    assert any(key[0] == str(model.resolve()) and key[2] == 2 for key in inprocess._sessions)
    edgeplug.infer(model, x, ["security"], threads=2)
    assert any(k.path == str(model.resolve()) and k.threads == 2 for k in isolation.POOL.workers)
    with pytest.raises(OptionError, match="threads"):
        edgeplug.infer(model, x, ["security"], {"security": {"threads": 2}})
