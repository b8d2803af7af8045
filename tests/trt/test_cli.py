"""The trt plugin through the CLI and the Python API, on this machine (no TensorRT, no GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from edgeplug import Artifact, MissingDependencyError, PluginError, load_plugins, optimize
from edgeplug.cli import main
from edgeplug_trt import availability

from tests.trt.models import quantize_example, with_custom_op, with_det

needs_no_tensorrt = pytest.mark.skipif(
    availability.missing() is None, reason="TensorRT and a GPU are here; the gpu tests build engines instead"
)
INSTALL = "pip install tensorrt --extra-index-url https://pypi.nvidia.com"


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["run", *args, "--quiet"])
    return result.exit_code, result.output


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


@needs_no_tensorrt
def test_cli_stops_with_one_sentence_after_the_preparation(
    tmp_path: Path, example_model: Path, example_test_data: Path
) -> None:
    out = tmp_path / "out"
    code, output = _run(
        str(example_model), "--plugins", "trt", "--data", str(example_test_data), "--output-dir", str(out)
    )
    assert code == 2
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgeplug: error: trt:")
    assert INSTALL in lines[0] and lines[0].count(". ") == 0  # one sentence
    report = _report(out)
    assert report["status"] == "failed" and "MissingDependencyError" in report["error"]
    step = report["steps"][0]
    assert step["plugin"] == "trt" and step["status"] == "applied"
    assert (
        step["verification"]["passed"]
        and step["verification"]["vs_previous"]["logits"]["max_abs_error"] == 0.0
    )
    details = step["details"]
    assert details["operators"]["unsupported"] == [] and details["operators"]["operators"]["Conv"] == 3
    assert details["constant_folding"]["enabled"] and "narrowed_to_int32" in details["int64"]
    assert details["profile"]["inputs"]["input"]["max"] == [8, 1, 8, 8]
    assert details["build_settings"]["precision"] == "fp32"
    assert details["engine"] == {"built": False, "reason": lines[0].removeprefix("edgeplug: error: ")}
    assert not (out / "model.engine").exists()


def test_cli_bare_command_without_data(tmp_path: Path, example_model: Path) -> None:
    """The issue's command as written: `edgeplug run examples/digits_cnn.onnx --plugins trt`."""
    out = tmp_path / "bare"
    code, output = _run(str(example_model), "--plugins", "trt", "--output-dir", str(out))
    if availability.missing() is None:
        assert code == 0, output
        return
    assert code == 2 and INSTALL in output
    assert _report(out)["steps"][0]["details"]["operators"]["table"].startswith("onnx/onnx-tensorrt")


@needs_no_tensorrt
def test_python_api_raises_missing_dependency(
    tmp_path: Path, example_model: Path, example_test_data: Path
) -> None:
    with pytest.raises(MissingDependencyError, match="NVIDIA's package index"):
        optimize(
            example_model,
            ["trt"],
            data=example_test_data,
            output_dir=tmp_path,
            options={"trt": {"precision": "fp16", "max_batch": 4, "workspace_mb": 512}},
        )
    details = _report(tmp_path)["steps"][0]["details"]
    assert details["build_settings"]["workspace_mb"] == 512
    assert details["build_settings"]["profile"]["inputs"]["input"]["max"] == [4, 1, 8, 8]
    assert details["build_settings"]["timing_cache"] == str(tmp_path / "trt-timing.cache")


def test_unsupported_op_refused_before_any_build(tmp_path: Path) -> None:
    model = tmp_path / "det.onnx"
    onnx.save(with_det(), model)
    out = tmp_path / "out"
    code, output = _run(str(model), "--plugins", "trt", "--data", "random", "--output-dir", str(out))
    assert code == 2
    assert "does not support determinant (Det)" in output and "10.15" in output
    details = _report(out)["steps"][0]["details"]
    assert details["operators"]["unsupported"][0]["node"] == "determinant"
    assert "build_settings" not in details and not (out / "model.engine").exists()


def test_custom_domain_op_is_listed_and_left_to_tensorrt_plugins() -> None:
    """An op of a custom domain may be served by a TensorRT plugin library: listed, not refused. (A run of such
    a model stops at the core's reference pass, since onnxruntime cannot execute it on the CPU.)"""
    from edgeplug_trt.operators import check_operators

    report = check_operators(with_custom_op())
    assert [row["node"] for row in report["custom_domain"]] == ["ms_gelu"]
    assert not report["unsupported"]


def test_onnxruntime_contrib_ops_are_refused_by_capability_before_any_work(tmp_path: Path) -> None:
    model = tmp_path / "contrib.onnx"
    onnx.save(with_custom_op("com.microsoft"), model)
    out = tmp_path / "out"
    code, output = _run(str(model), "--plugins", "trt", "--output-dir", str(out))
    assert code == 2
    line = output.strip().splitlines()[-1]
    assert "plugin 'trt' cannot take this model" in line
    assert "onnxruntime contrib ops (com.microsoft)" in line and "int8 Q/DQ" in line  # both capabilities
    assert _report(out)["steps"] == []  # refused before any step or reference pass


def test_int8_without_qdq_is_refused(tmp_path: Path, example_model: Path) -> None:
    code, output = _run(
        str(example_model), "--plugins", "trt", "-o", "trt.precision=int8", "--output-dir", str(tmp_path)
    )
    assert (
        code == 2
        and "needs a Q/DQ model" in output
        and "produces int8 Q/DQ" in output
        and "before trt" in output
    )


@needs_no_tensorrt
def test_int8_from_symmetric_qdq_model_reaches_compile(
    tmp_path: Path, example_model: Path, example_train_data: Path, example_test_data: Path
) -> None:
    qdq = quantize_example(example_model, example_train_data, tmp_path / "qdq.onnx")
    out = tmp_path / "out"
    code, output = _run(
        str(qdq),
        "--plugins",
        "trt",
        "-o",
        "trt.precision=int8",
        "--data",
        str(example_test_data),
        "--output-dir",
        str(out),
    )
    assert code == 2 and INSTALL in output
    details = _report(out)["steps"][0]["details"]
    assert (
        details["quantization"]["quantize_nodes"] == 13
        and details["quantization"]["nonzero_zero_points"] == []
    )


def test_qdq_model_at_fp32_is_refused(tmp_path: Path, example_model: Path, example_train_data: Path) -> None:
    qdq = quantize_example(example_model, example_train_data, tmp_path / "qdq.onnx")
    code, output = _run(str(qdq), "--plugins", "trt", "--output-dir", str(tmp_path / "out"))
    assert code == 2 and "trt.precision=int8" in output


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("trt.precision=int4", "expected one of fp32, fp16, int8"),
        ("trt.workspace_mb=0", "bad value '0' for trt.workspace_mb: expected an integer of at least 1"),
        (
            "trt.optimization_level=9",
            "bad value '9' for trt.optimization_level: expected an integer from 0 to 5",
        ),
        ("trt.max_shapes=input:8x1x8x8", "not in opt_shapes"),
        ("trt.opt_shapes=input:2x1x8", "rank 3"),
        ("trt.max_batch=-1", "bad value '-1' for trt.max_batch"),
        ("trt.workspace=1", "unknown option trt.workspace"),
    ],
)
def test_bad_options_exit_2(tmp_path: Path, example_model: Path, option: str, message: str) -> None:
    code, output = _run(str(example_model), "--plugins", "trt", "-o", option, "--output-dir", str(tmp_path))
    assert code == 2, output
    assert output.startswith("edgeplug: error:") and message in output


def test_plugins_listing_shows_the_interface() -> None:
    result = CliRunner().invoke(main, ["plugins", "--json"])
    trt = next(p for p in json.loads(result.output)["plugins"] if p["name"] == "trt")
    assert trt["distribution"] == "edgeplug-trt"
    assert {
        "precision",
        "min_shapes",
        "opt_shapes",
        "max_shapes",
        "workspace_mb",
        "timing_cache",
        "max_batch",
    } <= set(trt["options"])
    assert trt["options"]["precision"]["choices"] == ["fp32", "fp16", "int8"]
    assert trt["options"]["workspace_mb"]["default"] == 1024
    assert {"transform_graph", "compile", "make_runner"} <= set(trt["hooks"])


def test_make_runner_only_takes_engines(tmp_path: Path, example_model: Path) -> None:
    pm = load_plugins()
    trt = pm.get_plugin("trt")
    assert trt.make_runner(artifact=Artifact.of("onnx", [example_model]), options={}) is None
    fake = tmp_path / "model.engine"
    fake.write_bytes(b"not an engine")
    engine = Artifact.of("tensorrt-engine", [fake])
    if availability.missing() is not None:
        with pytest.raises(MissingDependencyError, match="tensorrt"):
            trt.make_runner(artifact=engine, options={})
    else:
        with pytest.raises(PluginError, match="could not be deserialized"):
            trt.make_runner(artifact=engine, options={})


@pytest.mark.int8
@needs_no_tensorrt
@pytest.mark.skipif(not load_plugins().has_plugin("quant"), reason="the quant plugin is not installed")
def test_quant_then_trt_int8_chain(tmp_path: Path, example_model: Path, example_test_data: Path) -> None:
    """quant's static QDQ, made for TensorRT (symmetric s8, float biases), is prepared exactly and passes the
    INT8 checks; the folding of int32 biases itself is tested on onnxruntime's own output in test_preparation."""
    out = tmp_path / "out"
    code, output = _run(
        str(example_model),
        "--plugins",
        "quant,trt",
        "-o",
        "quant.mode=static",
        "-o",
        "trt.precision=int8",
        "--data",
        str(example_test_data),
        "--output-dir",
        str(out),
    )
    assert code == 2 and INSTALL in output
    quant, trt = _report(out)["steps"]
    assert quant["status"] == trt["status"] == "applied"
    assert (
        trt["verification"]["passed"] and trt["verification"]["vs_previous"]["logits"]["max_abs_error"] == 0.0
    )
    assert trt["details"]["quantization"]["int32_biases"] == []
    assert trt["details"]["quantization"]["nonzero_zero_points"] == []
