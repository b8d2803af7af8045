"""Budgets plain INT8 misses: the repair keeps the culprit in float (an outlier layer's weight), the per-node
sensitivity search handles damage no single tensor explains, and budgets come from the core (min_<metric>,
--metric, --budget) and are judged exactly as the core's verification judges them."""

from __future__ import annotations

import json
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest

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


def test_without_repair_plain_int8_misses_the_budget(outlier_net, tmp_path):
    path, data = outlier_net
    out = tmp_path / "plain"
    result = run_cli(
        "run", path, "--plugins", "quant", "--data", data, "-o", "quant.mode=static", "-o", "quant.repair=false",
        "--on-fail", "skip", "--output-dir", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    step = _step(json.loads((out / "report.json").read_text()))
    assert step["status"] == "skipped"
    assert step["verification"]["vs_previous"]["logits"]["cosine"] < 0.9
    assert "repair" not in step["details"]


def test_the_repair_keeps_exactly_the_outlier_layer_in_float(outlier_net, tmp_path):
    path, data = outlier_net
    out = tmp_path / "mixed"
    result = run_cli(
        "run", path, "--plugins", "quant", "--data", data, "-o", "quant.mode=static", "--output-dir", out
    )
    assert result.exit_code == 0, result.output
    step = _step(json.loads((out / "report.json").read_text()))
    assert step["status"] == "applied" and step["verification"]["passed"]
    rounds = step["details"]["repair"][0]["rounds"]
    culprits = {c["tensor"]: c for r in rounds for c in r.get("culprits", [])}
    assert culprits["w5"]["kind"] == "weight" and culprits["w5"]["nodes_kept_float"] == ["outlier_fc"]
    assert step["details"]["recipe"]["float_tensors"] == ["w5"]
    # the kept node really runs in float: its weight is a float initializer ...
    final = onnx.load(out / "outlier_mlp.onnx")
    node = next(n for n in final.graph.node if n.name == "outlier_fc")
    weight = next(t for t in final.graph.initializer if t.name == node.input[1])
    assert weight.data_type == onnx.TensorProto.FLOAT
    # ... and every other Gemm is INT8
    others = [n for n in final.graph.node if n.op_type == "Gemm" and n.name != "outlier_fc"]
    int8 = {t.name for t in final.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    producers = {o: n for n in final.graph.node for o in n.output}
    assert len(others) == 11 and all(producers[n.input[1]].input[0] in int8 for n in others)


def test_the_sensitivity_search_meets_a_budget_no_single_tensor_explains(tmp_path):
    """A clean 12-layer MLP: every layer adds a little rounding noise; at min_cosine 0.9999 no quantized tensor
    stands out, so the per-node search keeps the fewest layers in float that meet the budget."""
    path = tmp_path / "clean.onnx"
    onnx.save(gemm_chain(WIDTHS), path)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(3).standard_normal((400, 32)).astype(np.float32))
    result = edgeplug.optimize(
        path, ["quant"], data=data, output_dir=tmp_path / "out", quiet=True,
        options={"quant": {"mode": "static", "min_cosine": 0.9999}},
    )  # fmt: skip
    step = _step(result.report)
    assert step["verification"]["passed"]
    search = step["details"]["mixed_precision"]
    assert search["quantizable_nodes"] == 12 and 0 < len(search["kept_float"]) < 12
    assert not search["plain"]["passed"] and search["final"]["passed"]
    assert len(search["sensitivity"]) == 12 and {r["rank"] for r in search["sensitivity"]} == set(
        range(1, 13)
    )
    assert step["details"]["chosen"]["origin"] == "sensitivity search"
    assert step["verification"]["metrics"]["cosine"]["value"] >= 0.9999


def test_a_top1_budget_is_met(outlier_net, tmp_path):
    path, data = outlier_net
    result = edgeplug.optimize(
        path,
        ["quant"],
        data=data,
        options={"quant": {"min_top1": 0.98}},
        output_dir=tmp_path / "top1",
        quiet=True,
    )
    step = _step(result.report)
    assert step["verification"]["passed"]
    assert step["verification"]["budgets"]["top1"]["set_by"] == "user"
    assert step["verification"]["metrics_vs_original"]["top1"]["value"] >= 0.98


METRIC = '''
import numpy as np

def agreement(reference, candidate, labels):
    """Share of samples whose top class is unchanged."""
    return float(np.mean(reference["logits"].argmax(1) == candidate["logits"].argmax(1)))
'''


def test_a_user_metric_from_the_core_drives_the_repair(outlier_net, tmp_path):
    """--metric FILE.py:agreement with -o quant.min_agreement=0.97: the core's metric and budget, judged against
    the original model, replace quant's default cosine budget."""
    path, data = outlier_net
    metric = tmp_path / "my_metric.py"
    metric.write_text(METRIC)
    out = tmp_path / "metric"
    result = run_cli(
        "run", path, "--plugins", "quant", "--data", data, "--metric", f"{metric}:agreement",
        "-o", "quant.min_agreement=0.97", "-o", "quant.mode=static", "--output-dir", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    step = _step(json.loads((out / "report.json").read_text()))
    budgets = step["verification"]["budgets"]
    assert budgets["agreement"]["set_by"] == "user" and budgets["agreement"]["value"] >= 0.97
    assert "cosine" not in budgets  # the user's metric judges the step: the default cosine budget gives way
    plain = next(r for r in step["details"]["candidates"] if r["origin"] == "plain")
    assert plain["metrics"]["agreement"] < 0.97


def test_quant_has_no_metric_options_of_its_own():
    from edgeplug_quantize.plugin import plugin_options

    names = {o.name for o in plugin_options()}
    assert not {"metric", "min_metric"} & names


def test_a_budget_plain_int8_meets_keeps_nothing_in_float(tmp_path):
    path = tmp_path / "clean.onnx"
    onnx.save(gemm_chain([32, 64, 64, 10]), path)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((200, 32)).astype(np.float32))
    result = edgeplug.optimize(
        path, ["quant"], data=data, options={"quant": {"mode": "static", "min_cosine": 0.99}},
        output_dir=tmp_path / "out", quiet=True,
    )  # fmt: skip
    details = _step(result.report)["details"]
    assert details["chosen"]["origin"] == "plain"
    assert "repair" not in details and "mixed_precision" not in details


def test_no_variant_meets_an_impossible_budget_exit_1_with_every_score(outlier_net, tmp_path):
    """min_cosine 1.0 cannot be met by any int8 variant: the run fails verification (exit 1) instead of
    ending with nothing said, and the report holds what every tried variant scored."""
    path, data = outlier_net
    out = tmp_path / "impossible"
    result = run_cli(
        "run", path, "--plugins", "quant", "--data", data, "-o", "quant.mode=static", "-o", "quant.min_cosine=1.0",
        "-o", "quant.time_budget_s=20s", "--output-dir", out,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    report = json.loads((out / "report.json").read_text())
    step = _step(report)
    assert step["status"] == "failed"
    rows = step["details"]["candidates"]
    assert len(rows) >= 2 and all("metrics" in r for r in rows if r["status"] != "not tried")
    assert step["details"]["chosen"]["status"].startswith("closest")


@pytest.mark.int8
def test_a_search_trial_onnxruntime_cannot_load_is_reported_not_fatal(tmp_path, monkeypatch):
    """The step goes on without the search (here: to its closest variant, exit 1 as for any miss) and the
    report says why the search gave nothing."""
    from edgeplug.plugin_api import EdgeplugError
    from edgeplug_quantize import selection

    def broken(self, start=None):
        raise EdgeplugError("onnxruntime cannot load the model: Duplicate definition of name (w)")

    monkeypatch.setattr(selection.Search, "run", broken)
    path = tmp_path / "clean.onnx"
    onnx.save(gemm_chain(WIDTHS), path)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(3).standard_normal((400, 32)).astype(np.float32))
    result = run_cli(
        "run", path, "--plugins", "quant", "--data", data, "--output-dir", tmp_path / "out",
        "-o", "quant.mode=static", "-o", "quant.min_cosine=0.9999",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    search = _step(report)["details"]["mixed_precision"]
    assert search["result"].startswith("failed: onnxruntime cannot load the model")
