"""CPU fit: types chosen for VNNI / non-VNNI x86 / ARM, symmetric s8 when the target wants it (capabilities,
not plugin names), and int8 chains to exact-int8 targets that verify on any x86 CPU (Q/DQ judged as float)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from edgeplug import PluginError
from edgeplug.capabilities import INT8_EXACT, INT8_QDQ_ONLY, SYMMETRIC_INT8
from edgeplug_quantize import plugin
from edgeplug_quantize.cpu_fit import choose_types
from onnx import numpy_helper

from .conftest import DIGITS, DIGITS_TEST, make_ctx, run_cli

VNNI = {"machine": "x86_64", "vnni": True, "dotprod": False, "flags": ["avx512_vnni", "avx2"]}
AVX2 = {"machine": "x86_64", "vnni": False, "dotprod": False, "flags": ["avx2"]}
ARM = {"machine": "aarch64", "vnni": False, "dotprod": True, "flags": ["asimd", "asimddp"]}
NONE = {
    "activation_type": None,
    "weight_type": None,
    "reduce_range": None,
    "symmetric": None,
    "per_channel": None,
}
HAVE = {name: importlib.util.find_spec(f"edgeplug_{name}") is not None for name in ("fuse", "trt", "neon")}


def test_vnni_gets_u8_activations_s8_weights_without_range_reduction():
    choice = choose_types(NONE, VNNI)
    assert (choice.activation_type, choice.weight_type, choice.reduce_range, choice.symmetric) == (
        "u8",
        "s8",
        False,
        False,
    )
    assert "VNNI" in choice.reasons[0]


def test_x86_without_vnni_reduces_the_weight_range_and_says_why():
    choice = choose_types(NONE, AVX2)
    assert choice.reduce_range is True
    assert "saturat" in choice.reasons[0] and "without VNNI" in choice.reasons[0]


def test_arm_gets_s8_s8():
    choice = choose_types(NONE, ARM)
    assert (choice.activation_type, choice.weight_type) == ("s8", "s8")


def test_a_symmetric_int8_target_wins_over_the_cpu():
    for target in ({SYMMETRIC_INT8, INT8_EXACT}, {SYMMETRIC_INT8, INT8_EXACT, INT8_QDQ_ONLY}):
        choice = choose_types(NONE, AVX2, target)
        assert (choice.activation_type, choice.weight_type, choice.symmetric, choice.reduce_range) == (
            "s8",
            "s8",
            True,
            False,
        )
        assert "symmetric-int8" in choice.reasons[0]
    assert choose_types(NONE, AVX2, {INT8_EXACT}).symmetric is False  # exact, but not symmetric


def test_user_settings_win_and_the_difference_is_recorded():
    choice = choose_types({**NONE, "reduce_range": False, "activation_type": "s8"}, AVX2)
    assert choice.reduce_range is False and choice.activation_type == "s8"
    assert "activation_type" not in choice.auto and "weight_type" in choice.auto
    assert any("as given by the user" in r for r in choice.reasons)


@pytest.mark.skipif(not HAVE["trt"], reason="the trt plugin is not installed")
def test_symmetric_zero_points_and_float_biases_for_an_int8_qdq_only_target(tmp_path):
    model = edgeplug.Model.load(DIGITS)
    ctx = make_ctx(
        model, DIGITS_TEST, chain=("quant", "trt"), workdir=tmp_path, others={"trt": {"precision": "int8"}}
    )
    assert {SYMMETRIC_INT8, INT8_QDQ_ONLY, INT8_EXACT} <= ctx.target
    before = model.serialized()
    new = plugin.transform_graph(model, ctx)
    assert new is not None
    zps = [numpy_helper.to_array(t) for t in new.proto.graph.initializer if t.name.endswith("zero_point")]
    assert zps and all(z.dtype == np.int8 for z in zps)
    int32 = [t.name for t in new.proto.graph.initializer if t.data_type == onnx.TensorProto.INT32]
    assert not int32, "an int8-qdq-only target parses INT8 Q/DQ only: biases stay float"
    assert all(not np.any(z) for z in zps), "a symmetric-int8 target needs zero point 0 everywhere"
    assert ctx.details["types"]["symmetric"] is True
    assert model.serialized() == before  # the input Model is untouched


@pytest.mark.skipif(not HAVE["trt"], reason="the trt plugin is not installed")
def test_dynamic_mode_is_refused_when_a_later_plugin_does_not_consume_it(tmp_path):
    model = edgeplug.Model.load(DIGITS)
    ctx = make_ctx(model, DIGITS_TEST, chain=("quant", "trt"), workdir=tmp_path, mode="dynamic")
    with pytest.raises(PluginError, match="dynamic-int8, which a later plugin does not consume"):
        plugin.pre_optimize(model, ctx)
    # the core refuses the chain before any step, from the capabilities, naming both sides
    result = run_cli(
        "run", DIGITS, "--plugins", "quant,trt", "-o", "quant.mode=dynamic", "--data", DIGITS_TEST,
        "--output-dir", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "dynamic int8" in result.output


def _chain_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


@pytest.mark.int8
@pytest.mark.skipif(not HAVE["trt"], reason="the trt plugin is not installed")
def test_quant_then_trt_int8_chain_verifies_on_any_x86_cpu(tmp_path):
    """The int8 model is judged with Q/DQ as float operators (what TensorRT computes), so the verdict does not
    depend on this CPU's int8 instructions; TensorRT itself is missing here, so the run stops at compile."""
    out = tmp_path / "out"
    result = run_cli(
        "run", DIGITS, "--plugins", "quant,trt", "-o", "trt.precision=int8", "--data", DIGITS_TEST,
        "--output-dir", out, "--quiet",
    )  # fmt: skip
    report = _chain_report(out)
    quant = report["steps"][0]
    assert quant["plugin"] == "quant" and quant["status"] == "applied", quant.get("error")
    assert quant["verification"]["passed"]
    assert "Q/DQ as float" in report["evaluation"]
    assert quant["details"]["timing"].startswith("not timed")
    assert quant["details"]["chosen"]["recipe"].startswith("static s8/s8")
    assert report["steps"][1]["status"] == "applied"  # trt prepared the int8 model
    if result.exit_code != 0:  # no TensorRT: stopped at compile with one sentence
        assert result.exit_code == 2 and "tensorrt" in result.output.lower()


@pytest.mark.int8
@pytest.mark.skipif(not (HAVE["fuse"] and HAVE["neon"]), reason="fuse and neon plugins needed")
def test_fuse_quant_neon_int8_chain_verifies_on_any_x86_cpu(tmp_path):
    # the aarch64 build runs under qemu-aarch64 in its own process; a host build would be compiled for the real
    # CPU (-march=native) and crash a process run under the AVX2 emulator with an illegal instruction
    cross = shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")
    out = tmp_path / "out"
    result = run_cli(
        "run", DIGITS, "--plugins", "fuse,quant,neon", "-o", f"neon.target={'aarch64' if cross else 'host'}",
        "--data", DIGITS_TEST, "--output-dir", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = _chain_report(out)
    quant = next(s for s in report["steps"] if s["plugin"] == "quant")
    assert quant["status"] == "applied" and quant["verification"]["passed"]
    assert quant["details"]["chosen"]["recipe"].startswith("static s8/s8")
    compiled = report["compile"]
    verdicts = [compiled["verification"]] if "verification" in compiled else []
    verdicts += list(compiled["details"].get("verification", {}).values())  # the aarch64 build, under qemu
    assert verdicts and all(v["passed"] for v in verdicts)
