"""The pipeline: user order, verification, --on-fail, outputs, report, Python API."""

from __future__ import annotations

import json
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from edgeplug.cli import main
from edgeplug.model import get_metadata

from ..conftest import registered
from .plugins_for_tests import (
    Crasher,
    ExternalData,
    Mutator,
    NotApplicable,
    Refuse,
    ScaleWeights,
    Tag,
    TextFormat,
)


def run_cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("order", [["a", "b"], ["b", "a"]])
def test_steps_run_in_the_users_order_whatever_the_registration_order(tiny_model, tmp_path, order):
    with registered((Tag("b"), "b"), (Tag("a"), "a")):
        result = run_cli("run", tiny_model, "--plugins", ",".join(order), "--output-dir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["plugin"] for s in report["steps"]] == order
    final = onnx.load(tmp_path / "out" / "tiny.onnx")
    assert get_metadata(final, "order") == ",".join(order)
    assert get_metadata(final, "author") == "tests"  # metadata of the input survives


def test_a_step_that_changes_outputs_is_caught_and_named(tiny_model, tmp_path):
    before = tiny_model.read_bytes()
    with registered((ScaleWeights(), "scale")):
        result = run_cli(
            "run",
            tiny_model,
            "--plugins",
            "scale",
            "-o",
            "scale.factor=1.5",
            "--output-dir",
            tmp_path / "out",
        )
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("edgeplug: error: step 1 (scale) failed")
    assert "first diverging node: conv (Conv)" in line
    assert "Traceback" not in result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "failed"
    assert report["steps"][0]["verification"]["divergence"]["node"] == "conv"
    assert tiny_model.read_bytes() == before


def test_on_fail_skip_drops_the_step_and_finishes(tiny_model, tmp_path):
    with registered((ScaleWeights(), "scale"), (Tag("a"), "a")):
        result = run_cli(
            "run",
            tiny_model,
            "--plugins",
            "scale,a",
            "-o",
            "scale.factor=2",
            "--on-fail",
            "skip",
            "--output-dir",
            tmp_path / "out",
        )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["status"] for s in report["steps"]] == ["skipped", "applied"]
    # the final model is the original plus the tag: the skipped scaling is not in it
    ref = onnx.load(tiny_model)
    final = onnx.load(tmp_path / "out" / "tiny.onnx")
    assert [t.raw_data for t in final.graph.initializer] == [t.raw_data for t in ref.graph.initializer]


def test_a_user_loosened_tolerance_passes_and_is_reported(tiny_model, tmp_path):
    with registered((ScaleWeights(), "scale")):
        result = run_cli(
            "run",
            tiny_model,
            "--plugins",
            "scale",
            "-o",
            "scale.factor=1.0001",
            "-o",
            "scale.min_cosine=0.99",
            "-o",
            "scale.rtol=0.01",
            "--output-dir",
            tmp_path / "out",
        )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    tol = report["steps"][0]["tolerance"]
    assert tol["min_cosine"] == 0.99 and set(tol["user_set"]) == {"min_cosine", "rtol"}


def test_not_applicable_and_output_files(tiny_model, tmp_path):
    with registered((NotApplicable(), "noop"), (Tag("a"), "a")):
        result = run_cli("run", tiny_model, "--plugins", "noop,a", "--output-dir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert [s["status"] for s in report["steps"]] == ["not_applicable", "applied"]
    assert (out / "steps" / "02-a.onnx").exists()
    sidecar = json.loads((out / "tiny.edgeplug.json").read_text())
    assert sidecar["sha256"] == edgeplug.context.sha256_file(out / "tiny.onnx")
    for key in (
        "schema_version",
        "tools",
        "cpu",
        "execution_provider",
        "threads",
        "seed",
        "settings",
        "data",
    ):
        assert key in report
    assert report["data"]["source"] == "generated"
    metrics = report["steps"][1]["metrics"]
    assert metrics["parameters"] == metrics["nonzero_parameters"] > 0


def test_a_plugin_that_mutates_its_input_is_refused(tiny_model, tmp_path):
    with registered((Mutator(), "mutator")):
        result = run_cli("run", tiny_model, "--plugins", "mutator", "--output-dir", tmp_path / "out")
    assert result.exit_code == 2
    assert "modified the model it was given" in result.output


def test_a_crashing_plugin_fails_its_step(tiny_model, tmp_path):
    with registered((Crasher(), "crash"), (Tag("a"), "a")):
        failed = run_cli("run", tiny_model, "--plugins", "crash", "--output-dir", tmp_path / "o1")
        skipped = run_cli(
            "run", tiny_model, "--plugins", "crash,a", "--on-fail", "skip", "--output-dir", tmp_path / "o2"
        )
    assert failed.exit_code == 1 and "RuntimeError: boom" in failed.output
    assert skipped.exit_code == 0, skipped.output


def test_python_api_with_real_data_reports_accuracy(example_model, example_test_data, tmp_path):
    with registered((Tag("a"), "a")):
        result = edgeplug.optimize(example_model, ["a"], data=example_test_data, output_dir=tmp_path)
    assert isinstance(result.model, edgeplug.Model)
    assert result.model.history == ("a",)
    acc = result.report["original"]["metrics"]["accuracy"]
    assert acc > 0.95
    assert result.report["steps"][0]["metrics"]["accuracy"] == acc
    assert result.report["data"]["calibration_samples"] + result.report["data"]["validation_samples"] == 450


def test_hooks_are_callable_directly_through_the_plugin_manager(tiny_model, tmp_path):
    pm = edgeplug.load_plugins()
    model = edgeplug.Model.load(tiny_model)
    with registered((Tag("a"), "a")):
        caller = pm.subset_hook_caller(
            "transform_graph", remove_plugins=[p for n, p in pm.list_name_plugin() if n != "a"]
        )
        ctx = edgeplug.RunContext("a", {}, edgeplug.Tolerance(), None, ("a",), tmp_path)  # type: ignore[arg-type]
        new = caller(model=model, ctx=ctx)
    assert get_metadata(new.proto, "order") == "a"
    assert get_metadata(model.proto, "order") is None


def test_bench_flag_measures_latency_per_step(tiny_model, tmp_path):
    with registered((Tag("a"), "a")):
        result = edgeplug.optimize(tiny_model, ["a"], output_dir=tmp_path / "out", bench=True, bench_runs=5)
    assert result.report["original"]["metrics"]["latency"]["p50_ms"] > 0
    assert result.report["steps"][0]["metrics"]["latency"]["p50_ms"] > 0
    assert "speedup_p50" in result.report["steps"][0]["bought"]


def test_calibration_and_validation_never_share_samples(example_model, example_test_data):
    model = edgeplug.Model.load(example_model)
    data = edgeplug.data.load_data(example_test_data, model, seed=3)
    cal = {d["input"].tobytes() for d in data.calibration}
    val = {d["input"].tobytes() for d in data.validation}
    assert not cal & val
    again = edgeplug.data.load_data(example_test_data, model, seed=3)
    assert np.array_equal(again.validation_labels, data.validation_labels)


def test_input_shapes_pin_dynamic_dimensions(tiny_model, tmp_path):
    with registered((Tag("a"), "a")):
        result = run_cli(
            "run",
            tiny_model,
            "--plugins",
            "a",
            "--input-shapes",
            "x:2x3x8x8",
            "--output-dir",
            tmp_path / "out",
        )
    assert result.exit_code == 0, result.output
    final = edgeplug.Model.load(Path(tmp_path) / "out" / "tiny.onnx")
    assert final.inputs[0].shape == (2, 3, 8, 8)


def test_pre_optimize_refusal_is_one_line(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with registered((Refuse(), "refuse")):
        result = run_cli("run", path, "--plugins", "refuse", "--output-dir", tmp_path / "o")
    assert result.exit_code == 2
    assert (
        result.output.strip().splitlines()[-1]
        == "edgeplug: error: refuse: this plugin needs a model with a Conv node"
    )


def test_load_model_hook_reads_another_format(tmp_path):
    text = tmp_path / "m.onnxtxt"
    text.write_text("""<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 4] x) => (float[1, 4] y) { y = Relu(x) }""")
    with registered((TextFormat(), "text"), (Tag("a"), "a")):
        result = run_cli("run", text, "--plugins", "text,a", "--output-dir", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert Path(tmp_path / "o" / "m.onnx").exists()


def test_compiled_artifact_is_verified_through_make_runner(tiny_model, tmp_path):
    with registered((ExternalData(), "ext")):
        ok = run_cli("run", tiny_model, "--plugins", "ext", "--output-dir", tmp_path / "ok")
        bad = run_cli(
            "run", tiny_model, "--plugins", "ext", "-o", "ext.offset=0.5", "--output-dir", tmp_path / "bad"
        )
    assert ok.exit_code == 0, ok.output
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert report["compile"]["kind"] == "onnx-external"
    assert report["compile"]["verification"]["passed"] is True
    sidecar = json.loads((tmp_path / "ok" / "tiny.edgeplug.json").read_text())
    assert set(sidecar["artifact"]["files"]) == {"external/model.onnx", "external/weights.bin"}
    assert bad.exit_code == 1
    assert "compiled onnx-external differs from the final model" in bad.output


def test_two_compiling_plugins_are_refused(tiny_model, tmp_path):
    class Other(ExternalData):
        pass

    with registered((ExternalData(), "ext"), (Other(), "ext2")):
        result = run_cli("run", tiny_model, "--plugins", "ext,ext2", "--output-dir", tmp_path / "o")
    assert result.exit_code == 2 and "at most one compiling plugin" in result.output


def test_a_nan_metric_fails_verification():
    from edgeplug import Tolerance
    from edgeplug.verify import evaluate

    ref = {"y": np.ones((2, 3), np.float32)}
    got = {"y": np.full((2, 3), np.nan, np.float32)}
    _, failures = evaluate(ref, got, Tolerance(min_cosine=0.9, min_top1=0.5, max_abs_error=1.0))
    assert any("cosine" in f for f in failures) and any("max abs error" in f for f in failures)
