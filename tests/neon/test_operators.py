"""Every supported operator, compiled to C and run on the host build and under qemu, against onnxruntime."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import helper

from tests.neon.conftest import assert_close, make_model, needs_aarch64

R = np.random.default_rng(1)


def w(*shape: int) -> np.ndarray:
    return R.normal(size=shape).astype(np.float32)


def node(op: str, ins: list[str], outs: list[str], **attrs) -> onnx.NodeProto:
    return helper.make_node(op, ins, outs, **attrs)


def conv(
    name: str = "y",
    x: str = "x",
    cin: int = 4,
    cout: int = 8,
    k: tuple[int, int] = (3, 3),
    bias: bool = True,
    group: int = 1,
    **attrs,
) -> tuple[onnx.NodeProto, dict[str, np.ndarray]]:
    inits = {f"{name}_w": w(cout, cin // group, *k)}
    ins = ["x" if x == "x" else x, f"{name}_w"]
    if bias:
        inits[f"{name}_b"] = w(cout)
        ins.append(f"{name}_b")
    return node("Conv", ins, [name], group=group, **attrs), inits


def conv_case(x_shape=(1, 4, 9, 9), **kw) -> onnx.ModelProto:
    n, inits = conv(**kw)
    return make_model([n], {"x": x_shape}, ["y"], inits)


X = {"x": (1, 4, 9, 9)}


def unary(op: str, opset: int = 17, inits: dict | None = None, extra: list[str] | None = None, **attrs):
    return make_model([node(op, ["x", *(extra or [])], ["y"], **attrs)], X, ["y"], inits, opset=opset)


CASES: dict[str, Callable[[], onnx.ModelProto]] = {
    # Conv: kernels, strides, padding (explicit, asymmetric, auto_pad), dilation, groups, depthwise
    "conv3x3_pad1": lambda: conv_case(pads=[1, 1, 1, 1]),
    "conv5x5_stride2": lambda: conv_case(k=(5, 5), strides=[2, 2], pads=[2, 2, 2, 2]),
    "conv1x1_nobias": lambda: conv_case(k=(1, 1), bias=False),
    "conv1x1_stride2": lambda: conv_case(k=(1, 1), strides=[2, 2]),
    "conv_dilation2": lambda: conv_case(dilations=[2, 2], pads=[2, 2, 2, 2]),
    "conv_asym_pads_1x3": lambda: conv_case(k=(1, 3), pads=[0, 2, 1, 0]),
    "conv_same_upper_s2": lambda: conv_case(auto_pad="SAME_UPPER", strides=[2, 2]),
    "conv_same_lower_s2": lambda: conv_case(auto_pad="SAME_LOWER", strides=[2, 2]),
    "conv_valid": lambda: conv_case(auto_pad="VALID"),
    "conv_groups2": lambda: conv_case(group=2, pads=[1, 1, 1, 1]),
    "depthwise3x3": lambda: conv_case(cout=4, group=4, pads=[1, 1, 1, 1]),
    "depthwise3x3_s2": lambda: conv_case(
        x_shape=(1, 4, 16, 16), cout=4, group=4, pads=[1, 1, 1, 1], strides=[2, 2]
    ),
    "depthwise_mult2_d2": lambda: conv_case(cout=8, group=4, pads=[2, 2, 2, 2], dilations=[2, 2]),
    "depthwise_wide_s2": lambda: conv_case(
        x_shape=(1, 3, 12, 40), cout=3, group=3, k=(3, 5), pads=[1, 2, 1, 2], strides=[2, 2]
    ),
    "depthwise_wide_s1_relu6": lambda: make_model(
        [
            node("Conv", ["x", "dw"], ["c"], group=3, pads=[1, 1, 1, 1]),
            node("Clip", ["c", "lo", "hi"], ["y"]),
        ],
        {"x": (1, 3, 10, 37)},
        ["y"],
        {"dw": w(3, 1, 3, 3), "lo": np.float32(0), "hi": np.float32(6)},
    ),
    "conv1d": lambda: make_model(
        [node("Conv", ["x", "w1"], ["y"], pads=[1, 1], strides=[2])],
        {"x": (1, 3, 20)},
        ["y"],
        {"w1": w(5, 3, 3)},
    ),
    # Gemm / MatMul
    "gemm_transB": lambda: make_model(
        [node("Gemm", ["x", "B", "C"], ["y"], transB=1)], {"x": (1, 24)}, ["y"], {"B": w(10, 24), "C": w(10)}
    ),
    "gemm_alpha_beta_transA": lambda: make_model(
        [node("Gemm", ["x", "B", "C"], ["y"], transA=1, alpha=0.5, beta=2.0)],
        {"x": (24, 3)},
        ["y"],
        {"B": w(24, 7), "C": w(3, 7)},
    ),
    "gemm_runtime_B": lambda: make_model(
        [node("Gemm", ["x", "b"], ["y"], transB=1)], {"x": (2, 12), "b": (2, 12)}, ["y"]
    ),
    "matmul_3d_const": lambda: make_model(
        [node("MatMul", ["x", "B"], ["y"])], {"x": (1, 6, 16)}, ["y"], {"B": w(16, 9)}
    ),
    "matmul_batched_runtime": lambda: make_model(
        [node("MatMul", ["a", "b"], ["y"])], {"a": (1, 2, 5, 7), "b": (1, 2, 7, 3)}, ["y"]
    ),
    # elementwise with broadcasting
    "add_channel_bcast": lambda: make_model([node("Add", ["x", "c"], ["y"])], X, ["y"], {"c": w(4, 1, 1)}),
    "mul_two_inputs": lambda: make_model(
        [node("Mul", ["x", "z"], ["y"])], {"x": (1, 4, 9, 9), "z": (1, 4, 9, 9)}, ["y"]
    ),
    "mul_scalar_first": lambda: make_model(
        [node("Mul", ["s", "x"], ["y"])], X, ["y"], {"s": np.float32(1.5)}
    ),
    "add_row_bcast": lambda: make_model([node("Add", ["x", "r"], ["y"])], X, ["y"], {"r": w(1, 9)}),
    "add_h_bcast_runtime": lambda: make_model(
        [node("Add", ["x", "h"], ["y"])], {"x": (1, 4, 9, 9), "h": (1, 1, 9, 1)}, ["y"]
    ),
    # activations
    "relu": lambda: unary("Relu"),
    "clip_0_6": lambda: unary("Clip", inits={"lo": np.float32(0), "hi": np.float32(6)}, extra=["lo", "hi"]),
    "clip_min_only": lambda: unary("Clip", inits={"lo": np.float32(-0.5)}, extra=["lo"]),
    "sigmoid": lambda: unary("Sigmoid"),
    "hardsigmoid": lambda: unary("HardSigmoid", alpha=0.3, beta=0.4),
    "hardswish": lambda: unary("HardSwish"),
    # pooling
    "maxpool3x3_s2_p1": lambda: unary("MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    "maxpool_ceil_dilated": lambda: unary(
        "MaxPool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, dilations=[1, 2]
    ),
    "avgpool_include_pad": lambda: unary(
        "AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1
    ),
    "avgpool_exclude_pad_ceil": lambda: unary(
        "AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1
    ),
    "avgpool_same_upper": lambda: unary(
        "AveragePool", kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER"
    ),
    "global_avgpool": lambda: unary("GlobalAveragePool"),
    # shape ops, concat, softmax
    "flatten_gemm": lambda: make_model(
        [node("Flatten", ["x"], ["f"]), node("Gemm", ["f", "B"], ["y"])], X, ["y"], {"B": w(324, 5)}
    ),
    "reshape_relu": lambda: make_model(
        [node("Reshape", ["x", "s"], ["r"]), node("Relu", ["r"], ["y"])],
        X,
        ["y"],
        {"s": np.array([1, 36, 9], np.int64)},
    ),
    "reshape_is_output": lambda: make_model(
        [node("Reshape", ["x", "s"], ["y"])], X, ["y"], {"s": np.array([1, -1], np.int64)}
    ),
    "exporter_shape_arithmetic": lambda: make_model(  # Shape->Gather->Unsqueeze->Concat folded at codegen
        [
            node("Shape", ["x"], ["s"]),
            node("Gather", ["s", "i0"], ["b"], axis=0),
            node("Unsqueeze", ["b", "ax"], ["bu"]),
            node("Concat", ["bu", "m1"], ["shp"], axis=0),
            node("Reshape", ["x", "shp"], ["r"]),
            node("Relu", ["r"], ["y"]),
        ],
        X,
        ["y"],
        {"i0": np.array(0, np.int64), "ax": np.array([0], np.int64), "m1": np.array([-1], np.int64)},
    ),
    "c_keyword_names": lambda: make_model(  # tensor names that are C keywords or kernel names
        [node("Add", ["int", "ep_pool"], ["return"]), node("Relu", ["return"], ["float"])],
        {"int": (1, 4, 3), "ep_pool": (1, 4, 3)},
        ["float", "return"],
    ),
    "resize_nearest_x2_asymmetric": lambda: make_model(  # yolov5's upsample
        [
            node(
                "Resize",
                ["x", "", "sc"],
                ["y"],
                mode="nearest",
                coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            )
        ],
        X,
        ["y"],
        {"sc": np.array([1, 1, 2, 2], np.float32)},
    ),
    "resize_nearest_sizes_half_pixel": lambda: make_model(
        [node("Resize", ["x", "", "", "sz"], ["y"], mode="nearest")],
        X,
        ["y"],
        {"sz": np.array([1, 4, 13, 6], np.int64)},
    ),
    "concat_axis1": lambda: make_model(
        [
            node("Relu", ["x"], ["a"]),
            node("Sigmoid", ["x"], ["b"]),
            node("Concat", ["a", "b", "x"], ["y"], axis=1),
        ],
        X,
        ["y"],
    ),
    "concat_last_const": lambda: make_model(
        [node("Concat", ["x", "c"], ["y"], axis=-1)], X, ["y"], {"c": w(1, 4, 9, 2)}
    ),
    "softmax_last": lambda: unary("Softmax"),
    "softmax_axis1": lambda: unary("Softmax", axis=1),
    "softmax_opset11_coerced": lambda: unary("Softmax", opset=11, axis=1),
    "two_outputs_shared": lambda: make_model(
        [node("Relu", ["x"], ["a"]), node("Add", ["a", "x"], ["y"]), node("Mul", ["a", "a"], ["z"])],
        X,
        ["y", "a", "z"],
    ),
}


@needs_aarch64
@pytest.mark.parametrize("case", sorted(CASES))
def test_operator_host_and_qemu(case: str, compile_model) -> None:
    got = compile_model(CASES[case](), samples=3)
    assert_close(got["host"], got["reference"])
    assert_close(got["aarch64"], got["reference"])
    compiled = got["result"].report["compile"]
    assert compiled["details"]["verification"]["aarch64"]["passed"]  # neon, under qemu
    assert compiled["verification"]["passed"]  # the core, the host library


def test_generated_source_uses_neon_and_scalar_paths(compile_model) -> None:
    got = compile_model(CASES["depthwise3x3_s2"](), samples=2, target="host")
    source = (got["out"] / "model.c").read_text()
    assert "vfmaq_f32" in source and "vmlaq_f32" not in source
    assert "#ifdef EP_NEON" in source and "#else" in source
    assert "malloc" not in source
    header = (got["out"] / "model.h").read_text()
    assert (
        "EDGEPLUG_MODEL_SCRATCH_BYTES" in header
        and "int edgeplug_model_run(const float* x, float* y" in header
    )
    assert_close(got["host"], got["reference"])
