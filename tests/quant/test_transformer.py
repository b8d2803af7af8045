"""A transformer encoder (tests/zoo.py bert_encoder) quantized dynamically and statically."""

from __future__ import annotations

import json
from pathlib import Path

import edgeplug
import numpy as np
import pytest

from tests import zoo

from .conftest import run_cli


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> tuple[Path, Path]:
    model = zoo.cached("bert_encoder")
    rng = np.random.default_rng(0)
    n, length = 48, 16
    mask = np.ones((n, length), np.int64)
    mask[:, 12:] = rng.integers(0, 2, (n, 4))
    types = np.zeros((n, length), np.int64)
    types[:, 8:] = 1
    data = tmp_path_factory.mktemp("bert") / "tokens.npz"
    np.savez(data, input_ids=rng.integers(0, 1000, (n, length)), attention_mask=mask, token_type_ids=types)
    return model, data


def _step(report: dict) -> dict:
    return next(s for s in report["steps"] if s["plugin"] == "quant")


def test_bert_dynamic_int8_cli(bert, tmp_path):
    model, data = bert
    out = tmp_path / "out"
    result = run_cli(
        "run", model, "--plugins", "quant", "--data", data, "-o", "quant.mode=dynamic", "--output-dir", out
    )
    assert result.exit_code == 0, result.output
    step = _step(json.loads((out / "report.json").read_text()))
    assert step["status"] == "applied"
    ops = step["details"]["recipe"]["op_counts"]
    assert ops.get("MatMulInteger", 0) >= 12  # Q, K, V, output, FFN x2 per layer, 2 layers
    assert "QuantizeLinear" not in ops  # activations are quantized at run time, not calibrated
    vs = step["verification"]["vs_previous"]
    assert vs["last_hidden_state"]["cosine"] > 0.995
    assert step["bought"]["size_ratio"] > 1.5


def test_bert_static_int8_python_api(bert, tmp_path):
    model, data = bert
    result = edgeplug.optimize(
        model, ["quant"], data=data, output_dir=tmp_path / "out", options={"quant": {"mode": "static"}}
    )
    step = _step(result.report)
    assert step["details"]["mode"] == "static"
    ops = step["details"]["recipe"]["op_counts"]
    assert ops["QuantizeLinear"] >= 20 and ops["DequantizeLinear"] >= 40
    assert step["verification"]["passed"]
    assert step["verification"]["vs_previous"]["last_hidden_state"]["cosine"] > 0.99


def test_bert_fused_by_onnxruntime_then_dynamic_int8(bert, tmp_path):
    pytest.importorskip("edgeplug_fuse")
    model, data = bert
    result = edgeplug.optimize(
        model,
        ["fuse", "quant"],
        data=data,
        output_dir=tmp_path / "out",
        options={"fuse": {"target": "onnxruntime"}, "quant": {"mode": "dynamic"}},
    )
    step = _step(result.report)
    assert step["status"] == "applied", step.get("error")
    ops = step["details"]["recipe"]["op_counts"]
    assert ops.get("QAttention", 0) + ops.get("MatMulInteger", 0) >= 4


def test_dynamic_output_carries_no_inferred_value_info(bert, tmp_path):
    """Measured: inferred value_info left in a dynamic INT8 model slows onnxruntime by ~25% on BERT-base."""
    model, data = bert
    assert len(edgeplug.Model.load(model).proto.graph.value_info) > 0  # the core's shape inference adds it
    result = edgeplug.optimize(
        model, ["quant"], data=data, options={"quant": {"mode": "dynamic"}}, output_dir=tmp_path / "o"
    )
    assert result.report["steps"][0]["status"] == "applied"
    assert len(result.model.proto.graph.value_info) == 0
    assert any(n.op_type == "MatMulInteger" for n in result.model.proto.graph.node)
