"""CPU fit: types chosen for VNNI / non-VNNI x86 / ARM, and symmetric s8 when trt or neon follows."""

from __future__ import annotations

import edgeplug
import numpy as np
import onnx
from edgeplug_quantize import plugin
from edgeplug_quantize.cpu_fit import choose_types
from onnx import numpy_helper

from .conftest import DIGITS, DIGITS_TEST, make_ctx

VNNI = {"machine": "x86_64", "vnni": True, "dotprod": False, "flags": ["avx512_vnni", "avx2"]}
AVX2 = {"machine": "x86_64", "vnni": False, "dotprod": False, "flags": ["avx2"]}
ARM = {"machine": "aarch64", "vnni": False, "dotprod": True, "flags": ["asimd", "asimddp"]}
NONE = {
    "activation_type": None,
    "weight_type": None,
    "reduce_range": None,
    "symmetric": None,
    "per_channel": True,
}


def test_vnni_gets_u8_activations_s8_weights_without_range_reduction():
    choice = choose_types(NONE, VNNI, ())
    assert (choice.activation_type, choice.weight_type, choice.reduce_range, choice.symmetric) == (
        "u8",
        "s8",
        False,
        False,
    )
    assert "VNNI" in choice.reasons[0]


def test_x86_without_vnni_reduces_the_weight_range_and_says_why():
    choice = choose_types(NONE, AVX2, ())
    assert choice.reduce_range is True
    assert "saturat" in choice.reasons[0] and "without VNNI" in choice.reasons[0]


def test_arm_gets_s8_s8():
    choice = choose_types(NONE, ARM, ())
    assert (choice.activation_type, choice.weight_type) == ("s8", "s8")


def test_trt_or_neon_later_in_the_chain_wins_over_the_cpu():
    for following in (("trt",), ("security", "neon")):
        choice = choose_types(NONE, AVX2, following)
        assert (choice.activation_type, choice.weight_type, choice.symmetric, choice.reduce_range) == (
            "s8",
            "s8",
            True,
            False,
        )


def test_user_settings_win_and_the_difference_is_recorded():
    choice = choose_types({**NONE, "reduce_range": False, "activation_type": "s8"}, AVX2, ())
    assert choice.reduce_range is False and choice.activation_type == "s8"
    assert "activation_type" not in choice.auto and "weight_type" in choice.auto
    assert any("as given by the user" in r for r in choice.reasons)


def test_symmetric_zero_points_when_trt_follows(tmp_path):
    model = edgeplug.Model.load(DIGITS)
    ctx = make_ctx(model, DIGITS_TEST, chain=("quant", "trt"), workdir=tmp_path)
    before = model.serialized()
    new = plugin.transform_graph(model, ctx)
    assert new is not None
    zps = [numpy_helper.to_array(t) for t in new.proto.graph.initializer if t.name.endswith("zero_point")]
    assert zps and all(z.dtype == np.int8 for z in zps)
    int32 = [t.name for t in new.proto.graph.initializer if t.data_type == onnx.TensorProto.INT32]
    assert not int32, "TensorRT parses INT8 Q/DQ only: biases stay float"
    assert all(not np.any(z) for z in zps), "TensorRT needs zero point 0 everywhere"
    assert ctx.details["types"]["symmetric"] is True
    assert "trt follows" in ctx.details["types"]["reasons"][0]
    assert model.serialized() == before  # the input Model is untouched


def test_dynamic_before_trt_is_refused(tmp_path):
    import pytest
    from edgeplug import PluginError

    model = edgeplug.Model.load(DIGITS)
    ctx = make_ctx(model, DIGITS_TEST, chain=("quant", "trt"), workdir=tmp_path, mode="dynamic")
    with pytest.raises(PluginError, match="TensorRT"):
        plugin.pre_optimize(model, ctx)
