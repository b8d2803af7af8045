"""Guarding `edgeplug infer --artifact`: the checks apply, the artifact's runner serves, isolation refuses."""

from __future__ import annotations

import json

import edgeplug
import numpy as np
import pytest

from tests.conftest import registered
from tests.core.plugins_for_tests import ExternalData


def test_security_guards_a_compiled_artifact(example_model, example_test_data, tmp_path):
    out = tmp_path / "out"
    with registered((ExternalData(), "ext")):
        edgeplug.optimize(example_model, ["security", "ext"], data=example_test_data, output_dir=out)
        final = out / "digits_cnn.onnx"
        sidecar = out / "digits_cnn.edgeplug.json"
        record = json.loads(sidecar.read_text())
        record["artifact"]["info"]["offset"] = 100.0  # makes the artifact's runner recognisable
        sidecar.write_text(json.dumps(record))
        x = {"input": np.load(example_test_data)["input"][:3]}
        with pytest.raises(edgeplug.OptionError, match="isolate=false"):
            edgeplug.infer(final, x, guards=["security"], artifact=True)
        guarded = edgeplug.infer(
            final, x, guards=["security"], artifact=True, options={"security": {"isolate": False}}
        )
        plain = edgeplug.infer(final, x)
        np.testing.assert_allclose(guarded.outputs["logits"], plain.outputs["logits"] + 100.0, rtol=1e-5)
        with pytest.raises(edgeplug.GuardRefusal, match="outside its allowed range"):
            edgeplug.infer(
                final,
                {"input": x["input"] + 5},
                guards=["security"],
                artifact=True,
                options={"security": {"isolate": False}},
            )
