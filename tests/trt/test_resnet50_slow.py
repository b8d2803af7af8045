"""The benchmark's inputs, checked where no GPU is: ResNet-50 prepared exactly, and its Q/DQ copy accepted
by the INT8 checks (slow: quantize_static on ResNet-50)."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeplug import Model
from edgeplug.verify import outputs_of
from edgeplug_trt.preparation import prepare
from edgeplug_trt.qdq import require_int8_qdq

from tests import zoo

ROOT = Path(__file__).resolve().parents[2]


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("trt_resnet50", ROOT / "benchmarks" / "trt_resnet50.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_resnet50_and_its_qdq_copy_are_ready_for_tensorrt(tmp_path: Path) -> None:
    path = zoo.cached("resnet50")
    model = Model.load(path)
    prep = prepare(model)
    assert prep.operators["unsupported"] == [] and prep.operators["operators"]["Conv"] == 53
    sample = zoo.example_inputs(model.proto)
    ref, got = outputs_of(model, [sample]), outputs_of(prep.model, [sample])
    np.testing.assert_array_equal(got["logits"], ref["logits"])

    qdq = _benchmark_module().qdq_model(path, tmp_path / "resnet50_qdq.onnx", samples=2)
    prepared = prepare(Model.load(qdq))
    summary = require_int8_qdq(prepared.model.proto)
    assert summary["dequantize_nodes"] > 53 and summary["nonzero_zero_points"] == []
    counts = Counter(n.op_type for n in onnx.load(qdq).graph.node)
    assert (
        Counter(n.op_type for n in prepared.model.proto.graph.node)["DequantizeLinear"]
        == counts["DequantizeLinear"]
    )
