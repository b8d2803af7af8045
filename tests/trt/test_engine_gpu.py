"""Real engine builds and runs. They need the tensorrt package, cuda-python and an NVIDIA GPU, and are
skipped, with the reason, anywhere else (no stand-in tensorrt module exists in these tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeplug import DataError, Model, optimize
from edgeplug.verify import outputs_of
from edgeplug_trt import availability

from tests.trt.models import quantize_example, with_custom_op

MISSING = availability.missing()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


def _build(model: Path, out: Path, data: Path, **options: object):
    return optimize(model, ["trt"], data=data, output_dir=out, options={"trt": options})


def _settings(out: Path) -> dict:
    return json.loads((out / "trt-settings.json").read_text())


def test_fp32_engine_builds_and_matches_onnxruntime(
    tmp_path: Path, example_model: Path, example_test_data: Path
) -> None:
    result = _build(example_model, tmp_path, example_test_data)
    artifact = result.artifact
    assert artifact is not None and artifact.kind == "tensorrt-engine"
    assert [f.name for f in artifact.files] == ["model.engine", "trt-build.log", "trt-settings.json"]
    assert all(f.stat().st_size > 0 for f in artifact.files)
    verification = result.report["compile"]["verification"]
    assert verification["passed"], verification
    assert verification["vs_final_model"]["logits"]["top1"] == 1.0
    settings = _settings(tmp_path)
    assert int(settings["tensorrt_version"].split(".")[0]) >= 10
    assert settings["builder_flags"] == [] and settings["precision"] == "fp32"
    assert settings["profile"]["inputs"]["input"]["max"] == [8, 1, 8, 8]
    assert (tmp_path / "trt-timing.cache").stat().st_size > 0


def test_timing_cache_is_reused_across_builds(
    tmp_path: Path, example_model: Path, example_test_data: Path
) -> None:
    cache = tmp_path / "shared.cache"
    _build(example_model, tmp_path / "a", example_test_data, timing_cache=str(cache))
    assert not _settings(tmp_path / "a")["timing_cache_reused"]
    _build(example_model, tmp_path / "b", example_test_data, timing_cache=str(cache))
    assert _settings(tmp_path / "b")["timing_cache_reused"]


def test_fp16_engine_within_its_budget(tmp_path: Path, example_model: Path, example_test_data: Path) -> None:
    result = _build(example_model, tmp_path, example_test_data, precision="fp16")
    assert result.report["compile"]["verification"]["passed"]
    assert _settings(tmp_path)["builder_flags"] == ["FP16"]
    assert _settings(tmp_path)["verification_tolerance"]["min_cosine"] == 0.999


def test_int8_engine_from_symmetric_qdq(
    tmp_path: Path, example_model: Path, example_train_data: Path, example_test_data: Path
) -> None:
    qdq = quantize_example(example_model, example_train_data, tmp_path / "qdq.onnx")
    result = _build(qdq, tmp_path / "out", example_test_data, precision="int8")
    assert result.report["compile"]["verification"]["passed"]
    settings = _settings(tmp_path / "out")
    assert "FP16" not in settings["builder_flags"]
    assert settings["network_flags"] == ["STRONGLY_TYPED"] or settings["builder_flags"] == ["INT8"]


def test_engine_runs_dynamic_batches_within_its_profile(
    tmp_path: Path, example_model: Path, example_test_data: Path
) -> None:
    from edgeplug_trt.engine_runner import EngineRunner

    _build(example_model, tmp_path, example_test_data, max_batch=8)
    runner = EngineRunner(tmp_path / "model.engine")
    images = np.load(example_test_data)["input"][:4].astype(np.float32)
    got = runner({"input": images})["logits"]
    ref = outputs_of(Model.load(example_model), [{"input": images}])["logits"]
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)
    with pytest.raises(DataError, match="outside the engine's profile"):
        runner({"input": np.zeros((16, 1, 8, 8), np.float32)})


def test_parser_rejection_names_the_node(tmp_path: Path) -> None:
    from edgeplug_trt.engine_build import BuildFailure, BuildSettings, build_engine
    from edgeplug_trt.profiles import build_profile

    proto = with_custom_op()
    proto.graph.node[1].op_type = "NoSuchOperator"
    proto.graph.node[1].domain = "edgeplug.test"
    proto.opset_import.append(onnx.helper.make_opsetid("edgeplug.test", 1))
    path = tmp_path / "unknown.onnx"
    onnx.save(proto, path)
    model = Model(proto)
    settings = BuildSettings("fp32", 256, build_profile(model.inputs, {}), tmp_path / "cache")
    with pytest.raises(BuildFailure, match="ONNX parser rejected the model") as failure:
        build_engine(path, settings, tmp_path / "unknown.engine")
    assert any("ms_gelu" in line or "NoSuchOperator" in line for line in failure.value.log)
    assert not (tmp_path / "unknown.engine").exists()
