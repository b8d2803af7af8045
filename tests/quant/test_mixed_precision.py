"""Accuracy-budgeted mixed precision: a budget plain INT8 misses is met with few nodes kept in float."""

from __future__ import annotations

import json
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from edgeplug import OptionError

from .conftest import gemm_chain, run_cli

WIDTHS = [32] + [64] * 11 + [10]  # 12 Gemm layers


@pytest.fixture(scope="module")
def outlier_net(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("outlier")
    path = folder / "outlier_mlp.onnx"
    onnx.save(gemm_chain(WIDTHS, outlier_layer=5), path)
    data = folder / "data.npz"
    np.savez(data, x=np.random.default_rng(3).standard_normal((400, 32)).astype(np.float32))
    return path, data


def _step(report: dict) -> dict:
    return next(s for s in report["steps"] if s["plugin"] == "quant")


def test_plain_int8_misses_the_budget(outlier_net, tmp_path):
    path, data = outlier_net
    result = run_cli(
        "run",
        path,
        "--plugins",
        "quant",
        "--data",
        data,
        "--on-fail",
        "skip",
        "--output-dir",
        tmp_path / "plain",
    )
    assert result.exit_code == 0, result.output
    step = _step(json.loads((tmp_path / "plain" / "report.json").read_text()))
    assert step["status"] == "skipped"
    assert step["verification"]["vs_previous"]["logits"]["cosine"] < 0.9


def test_search_meets_the_budget_keeping_under_20_percent_in_float(outlier_net, tmp_path):
    path, data = outlier_net
    out = tmp_path / "mixed"
    result = run_cli(
        "run", path, "--plugins", "quant", "--data", data, "-o", "quant.min_cosine=0.995", "--output-dir", out
    )
    assert result.exit_code == 0, result.output
    assert "kept 1 of 12 compute nodes in float (outlier_fc)" in result.output
    step = _step(json.loads((out / "report.json").read_text()))
    assert step["status"] == "applied"
    assert step["verification"]["vs_previous"]["logits"]["cosine"] >= 0.995
    mixed = step["details"]["mixed_precision"]
    assert mixed["quantizable_nodes"] == 12
    assert mixed["kept_float"] == ["outlier_fc"]
    assert mixed["kept_float_fraction"] < 0.2
    assert mixed["plain"]["cosine"] < 0.995 <= mixed["final"]["cosine"]
    table = {row["node"]: row for row in mixed["sensitivity"]}
    assert len(table) == 12
    assert table["outlier_fc"]["rank"] == 1 and table["outlier_fc"]["kept_float"] is True
    assert all(not row["kept_float"] for name, row in table.items() if name != "outlier_fc")
    # the kept node really runs in float: its weight is a float initializer
    final = onnx.load(out / "outlier_mlp.onnx")
    node = next(n for n in final.graph.node if n.name == "outlier_fc")
    weight = next(t for t in final.graph.initializer if t.name == node.input[1])
    assert weight.data_type == onnx.TensorProto.FLOAT
    # every other Gemm is INT8
    others = [n for n in final.graph.node if n.op_type == "Gemm" and n.name != "outlier_fc"]
    int8 = {t.name for t in final.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    producers = {o: n for n in final.graph.node for o in n.output}
    assert all(producers[n.input[1]].input[0] in int8 for n in others)


def test_top1_budget_drives_the_search_too(outlier_net, tmp_path):
    path, data = outlier_net
    result = edgeplug.optimize(
        path, ["quant"], data=data, options={"quant": {"min_top1": 0.98}}, output_dir=tmp_path / "top1"
    )
    mixed = _step(result.report)["details"]["mixed_precision"]
    assert "min_top1" in mixed["budget"]["user_set"]
    assert mixed["final"]["top1"] >= 0.98 > mixed["plain"]["top1"]
    assert "outlier_fc" in mixed["kept_float"] and mixed["kept_float_fraction"] < 0.2


METRIC = '''
import numpy as np

def agreement(reference, candidate, labels):
    """Share of samples whose top class is unchanged."""
    ref, got = reference["logits"], candidate["logits"]
    return float(np.mean(ref.argmax(1) == got.argmax(1)))
'''


def test_a_user_metric_given_as_file_and_function(outlier_net, tmp_path):
    path, data = outlier_net
    metric = tmp_path / "my_metric.py"
    metric.write_text(METRIC)
    result = edgeplug.optimize(
        path,
        ["quant"],
        data=data,
        output_dir=tmp_path / "metric",
        options={"quant": {"metric": f"{metric}:agreement", "min_metric": 0.97}},
    )
    mixed = _step(result.report)["details"]["mixed_precision"]
    assert mixed["budget"]["metric"].endswith(":agreement")
    assert mixed["final"]["metric"] >= 0.97 > mixed["plain"]["metric"]
    assert mixed["kept_float"] == ["outlier_fc"]


def test_a_metric_that_cannot_be_imported_is_an_option_error(outlier_net, tmp_path):
    path, data = outlier_net
    with pytest.raises(OptionError, match="has no function"):
        edgeplug.optimize(
            path,
            ["quant"],
            data=data,
            output_dir=tmp_path / "x",
            options={"quant": {"metric": "numpy:no_such_metric", "min_metric": 0.5}},
        )


def test_a_budget_plain_int8_meets_keeps_nothing_in_float(tmp_path):
    path = tmp_path / "clean.onnx"
    onnx.save(gemm_chain([32, 64, 64, 10]), path)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((200, 32)).astype(np.float32))
    result = edgeplug.optimize(
        path, ["quant"], data=data, options={"quant": {"min_cosine": 0.99}}, output_dir=tmp_path / "out"
    )
    mixed = _step(result.report)["details"]["mixed_precision"]
    assert mixed["kept_float"] == [] and mixed["sensitivity"] == []


def test_a_user_metric_given_as_a_python_callable(outlier_net, tmp_path):
    path, data = outlier_net
    calls = []

    def agreement(reference, candidate, labels):
        calls.append(1)
        return float(np.mean(reference["logits"].argmax(1) == candidate["logits"].argmax(1)))

    result = edgeplug.optimize(
        path,
        ["quant"],
        data=data,
        output_dir=tmp_path / "callable",
        options={"quant": {"metric": agreement, "min_metric": 0.97}},
    )
    mixed = _step(result.report)["details"]["mixed_precision"]
    assert calls and mixed["budget"]["metric"].endswith("agreement")
    assert mixed["final"]["metric"] >= 0.97 > mixed["plain"]["metric"]
    assert mixed["kept_float"] == ["outlier_fc"]
