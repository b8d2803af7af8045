"""Issue 15, item 1: `edgeplug infer MODEL --artifact --guard security` loaded the compiled library
(ctypes runs its constructors) before the guard started, so a tampered model was refused too late. Now
no byte of the artifact loads before the run record, the pins and every hash are checked."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from .conftest import RELU, Deployment, infer_artifact


def test_the_untampered_artifact_runs_and_is_what_answers(deployment: Deployment) -> None:
    """The control: the marker shows the library loads exactly once, and its answer is the one returned."""
    done = infer_artifact(deployment, "isolate=false")
    assert done.code == 0, done.stderr
    np.testing.assert_array_equal(done.outputs()["y"], RELU)
    assert deployment.loads() == ["genuine"]


@pytest.mark.parametrize("isolate", ["true", "false"])
def test_a_tampered_model_is_refused_before_its_artifact_loads(deployment: Deployment, isolate: str) -> None:
    """The .onnx replaced by another valid model with the same inputs: refused, and the (genuine,
    hash-matching) library never loaded, because the guard's checks come first."""
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "neg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(deployment.model))
    done = infer_artifact(deployment, f"isolate={isolate}")
    assert done.code == 2
    assert done.error == (
        f"edgeplug: error: model {deployment.model} does not match its recorded sha256: tampered or replaced"
    )
    assert deployment.loads() == []


@pytest.mark.parametrize("options", [("isolate=false",), ("isolate=true",), ()])
def test_a_replaced_library_is_refused_before_it_loads(
    deployment: Deployment, options: tuple[str, ...]
) -> None:
    """The attacker's library over the genuine one, the run record untouched: refused with exit 2 and
    never loaded, whether the guard runs isolated, in process, or not at all (the core checks too)."""
    deployment.evil_library()
    done = infer_artifact(deployment, *options, guard=bool(options))
    assert done.code == 2
    assert done.error == (
        f"edgeplug: error: artifact file {deployment.library} does not match its recorded sha256 in "
        "m.edgeplug.json: tampered or replaced"
    )
    assert deployment.loads() == []
