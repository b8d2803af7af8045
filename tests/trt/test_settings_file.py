"""compile writes trt-settings.json and the build log with the settings the engine was built with and what
the build reported. TensorRT is not here, so the build itself is replaced by a stand-in that records what it
was asked; the real build is tested in test_engine_gpu.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest
from edgeplug import Dataset, Model, RunContext
from edgeplug.options import Tolerance
from edgeplug_trt import plugin
from edgeplug_trt.engine_build import BuildResult, BuildSettings
from edgeplug_trt.operators import TABLE_TENSORRT_VERSION
from edgeplug_trt.settings import TrtSettings


def test_settings_file_holds_the_options_and_the_build_result(
    tmp_path: Path, example_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[Path, BuildSettings]] = []

    def stand_in_build(onnx_path: Path, settings: BuildSettings, engine_path: Path) -> BuildResult:
        asked.append((onnx_path, settings))
        engine_path.write_bytes(b"engine")
        return BuildResult(engine_path, 0.5, "10.15", ["STRONGLY_TYPED"], ["TF32"], True, ["built", "done"])

    monkeypatch.setattr(plugin.availability, "missing", lambda: None)
    monkeypatch.setattr(plugin, "build_engine", stand_in_build)
    model = Model.load(example_model)
    settings = TrtSettings(
        workspace_mb=64,
        optimization_level=5,
        tf32=True,
        timing_cache=tmp_path / "shared.cache",
        min_shapes=["input:1x1x8x8"],
        opt_shapes=["input:4x1x8x8"],
        max_shapes=["input:16x1x8x8"],
    )
    data = Dataset([], [], "generated", 0, "none")
    ctx = RunContext("trt", {}, Tolerance(), data, ("trt",), tmp_path / "work", quiet=True, settings=settings)
    artifact = plugin.compile(model=model, ctx=ctx)

    ((onnx_path, settings),) = asked
    assert (settings.workspace_mb, settings.optimization_level, settings.tf32) == (64, 5, True)
    assert settings.precision == "fp32" and settings.timing_cache == tmp_path / "shared.cache"
    saved = onnx.load(onnx_path)
    assert [n.op_type for n in saved.graph.node] == [n.op_type for n in model.proto.graph.node]

    settings_path = tmp_path / "work" / "trt-settings.json"
    written = json.loads(settings_path.read_text())
    assert written == {
        "precision": "fp32",
        "workspace_mb": 64,
        "profile": {
            "dynamic": True,
            "inputs": {
                "input": {
                    "min": [1, 1, 8, 8],
                    "opt": [4, 1, 8, 8],
                    "max": [16, 1, 8, 8],
                    "source": "options",
                }
            },
        },
        "timing_cache": str(tmp_path / "shared.cache"),
        "tf32": True,
        "builder_optimization_level": 5,
        "tensorrt_version": "10.15",
        "operator_table_tensorrt_version": TABLE_TENSORRT_VERSION,
        "network_flags": ["STRONGLY_TYPED"],
        "builder_flags": ["TF32"],
        "timing_cache_reused": True,
        "build_seconds": 0.5,
        "onnx": "trt-input.onnx",
        "verification_tolerance": plugin.ENGINE_TOLERANCE["fp32"].as_dict(),
    }
    assert ctx.details["engine"] == {"built": True, **written}  # the report says the same

    log = (tmp_path / "work" / "trt-build.log").read_text().splitlines()
    assert log[0].startswith("[edgeplug] settings ") and log[1:] == ["built", "done"]
    requested = ("precision", "workspace_mb", "profile", "timing_cache", "tf32", "builder_optimization_level")
    assert json.loads(log[0].removeprefix("[edgeplug] settings ")) == {k: written[k] for k in requested}
    assert settings_path in artifact.files
    assert artifact.sha256[settings_path.name] == hashlib.sha256(settings_path.read_bytes()).hexdigest()


def test_default_timing_cache_lives_in_the_workdir(
    tmp_path: Path, example_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stand_in_build(onnx_path: Path, settings: BuildSettings, engine_path: Path) -> BuildResult:
        engine_path.write_bytes(b"engine")
        return BuildResult(engine_path, 0.1, "10.15", [], [], False, [])

    monkeypatch.setattr(plugin.availability, "missing", lambda: None)
    monkeypatch.setattr(plugin, "build_engine", stand_in_build)
    data = Dataset([], [], "generated", 0, "none")
    ctx = RunContext("trt", {}, Tolerance(), data, ("trt",), tmp_path, quiet=True, settings=TrtSettings())
    plugin.compile(model=Model.load(example_model), ctx=ctx)
    written = json.loads((tmp_path / "trt-settings.json").read_text())
    assert written["timing_cache"] == str(tmp_path / "trt-timing.cache")
    assert written["workspace_mb"] == 1024 and written["tf32"] is False
    assert written["timing_cache_reused"] is False
