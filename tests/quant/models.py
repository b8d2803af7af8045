"""Models and data for the quant tests that look like real exports: a MiniLM-class encoder with an attention
mask path, a PP-OCR-like classifier with its weights in Constant nodes at opset 11, a detector head, and a
fake timer that prices a model by its operators (the seam auto's timing choice is tested through)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests import zoo

Timer = Callable[[Path, Mapping[str, np.ndarray]], float]


def minilm_class() -> Path:
    """transformers' BertModel at MiniLM's shape class (scaled down: hidden 64, 2 layers, 4 heads, sequence 32),
    exported with the eager attention: the mask path is `Where(mask == 0, -3.4e38, 0)` added to the scores.
    Weights drawn with std 0.1 (BERT's init uses 0.02) so that attention is sharp and the model depends on it,
    as a trained MiniLM does; with near-uniform attention, destroying the scores would go unnoticed."""
    return zoo.cached(
        "bert_encoder", initializer_range=0.1, hidden_size=64, intermediate_size=256, seq_len=32
    )


def token_data(path: Path, count: int = 64, length: int = 32, seed: int = 0) -> Path:
    """Token ids with padded sentences of varying lengths (the mask path matters)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, length + 1, count)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
    np.savez(
        path,
        input_ids=rng.integers(0, 1000, (count, length)),
        attention_mask=mask,
        token_type_ids=np.zeros((count, length), np.int64),
    )
    return path


def ppocr_cls_like(opset: int = 11, seed: int = 0) -> onnx.ModelProto:
    """A PP-OCR direction-classifier-like export: every weight (and every shape or index) in a Constant node,
    opset 11, BatchNormalization unfolded, hard-swish as HardSigmoid * x, squeeze-excite blocks, a Slice whose
    starts/ends/axes come from Constant nodes (the node onnxruntime could not load after quantization),
    Reshape, MatMul + Add, Softmax over 2 classes. Input [N, 3, 48, 192]."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []

    def const(array: np.ndarray, hint: str) -> str:
        name = f"{hint}_{len(nodes)}"
        value = numpy_helper.from_array(np.asarray(array), name)
        nodes.append(helper.make_node("Constant", [], [name], value=value, name=f"Constant_{len(nodes)}"))
        return name

    def conv_bn(
        x: str, cin: int, cout: int, k: int, stride: int, act: str | None, name: str, group: int = 1
    ) -> str:
        w = rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / (cin // group * k * k))
        nodes.append(
            helper.make_node(
                "Conv",
                [x, const(w.astype(np.float32), f"{name}_w")],
                [f"{name}_conv"],
                kernel_shape=[k, k],
                pads=[k // 2] * 4,
                strides=[stride] * 2,
                group=group,
                name=f"{name}.conv",
            )
        )
        stats = [
            rng.random(cout) + 0.5,
            rng.standard_normal(cout) * 0.1,
            rng.standard_normal(cout) * 0.1,
            rng.random(cout) + 0.5,
        ]
        names = [const(s.astype(np.float32), f"{name}_bn{i}") for i, s in enumerate(stats)]
        nodes.append(
            helper.make_node(
                "BatchNormalization", [f"{name}_conv", *names], [f"{name}_bn"], name=f"{name}.bn"
            )
        )
        out = f"{name}_bn"
        if act == "relu":
            nodes.append(helper.make_node("Relu", [out], [f"{name}_relu"], name=f"{name}.relu"))
            return f"{name}_relu"
        if act == "hardswish":
            nodes.append(
                helper.make_node(
                    "HardSigmoid", [out], [f"{name}_hs"], alpha=1 / 6, beta=0.5, name=f"{name}.hs"
                )
            )
            nodes.append(helper.make_node("Mul", [out, f"{name}_hs"], [f"{name}_act"], name=f"{name}.hswish"))
            return f"{name}_act"
        return out

    def squeeze_excite(x: str, c: int, name: str) -> str:
        r = c // 4
        w1 = (rng.standard_normal((r, c, 1, 1)) * np.sqrt(2 / c)).astype(np.float32)
        w2 = (rng.standard_normal((c, r, 1, 1)) * np.sqrt(2 / r)).astype(np.float32)
        nodes.append(helper.make_node("GlobalAveragePool", [x], [f"{name}_p"], name=f"{name}.pool"))
        b1 = const(np.zeros(r, np.float32), f"{name}_b1")
        nodes.append(
            helper.make_node(
                "Conv", [f"{name}_p", const(w1, f"{name}_w1"), b1], [f"{name}_1"], name=f"{name}.c1"
            )
        )
        nodes.append(helper.make_node("Relu", [f"{name}_1"], [f"{name}_1r"], name=f"{name}.relu"))
        b2 = const(np.full(c, 0.1, np.float32), f"{name}_b2")
        nodes.append(
            helper.make_node(
                "Conv", [f"{name}_1r", const(w2, f"{name}_w2"), b2], [f"{name}_2"], name=f"{name}.c2"
            )
        )
        nodes.append(
            helper.make_node(
                "HardSigmoid", [f"{name}_2"], [f"{name}_g"], alpha=0.2, beta=0.5, name=f"{name}.gate"
            )
        )
        nodes.append(helper.make_node("Mul", [x, f"{name}_g"], [f"{name}_out"], name=f"{name}.scale"))
        return f"{name}_out"

    x = conv_bn("x", 3, 16, 3, 2, "hardswish", "stem")
    x = conv_bn(x, 16, 16, 3, 2, "relu", "dw1", group=16)
    x = squeeze_excite(x, 16, "se1")
    x = conv_bn(x, 16, 24, 1, 1, None, "pw1")
    x = conv_bn(x, 24, 48, 3, 2, "hardswish", "b2")
    x = squeeze_excite(x, 48, "se2")
    starts, ends = const(np.array([1], np.int64), "starts"), const(np.array([5], np.int64), "ends")
    axes = const(np.array([2], np.int64), "axes")
    nodes.append(helper.make_node("Slice", [x, starts, ends, axes], ["rows"], name="Slice@0"))
    nodes.append(helper.make_node("GlobalAveragePool", ["rows"], ["pooled"], name="pool"))
    nodes.append(
        helper.make_node(
            "Reshape", ["pooled", const(np.array([0, -1], np.int64), "shape")], ["flat"], name="flatten"
        )
    )
    fc = (rng.standard_normal((48, 2)) * 0.3).astype(np.float32)
    nodes.append(helper.make_node("MatMul", ["flat", const(fc, "fc_w")], ["fc"], name="fc.matmul"))
    bias = const(np.array([0.1, -0.1], np.float32), "fc_b")
    nodes.append(helper.make_node("Add", ["fc", bias], ["logits"], name="fc.add"))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"))
    graph = helper.make_graph(
        nodes,
        "ppocr_cls_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 48, 192])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 6
    onnx.checker.check_model(model, full_check=True)
    return model


def op_cost_timer(costs: Mapping[str, float], int8_factor: float = 0.3, default: float = 0.01) -> Timer:
    """A deterministic timer: the sum of a per-operator cost over the model's nodes (milliseconds). A
    MatMul/Conv/Gemm fed by a DequantizeLinear (onnxruntime fuses the pattern into an int8 kernel) costs
    `int8_factor` of its float price."""

    def timer(path: Path, inputs: Mapping[str, np.ndarray]) -> float:
        proto = onnx.load(str(path), load_external_data=False)
        made = {o: n.op_type for n in proto.graph.node for o in n.output}
        total = 0.0
        for node in proto.graph.node:
            cost = costs.get(node.op_type, default)
            if node.op_type in ("MatMul", "Conv", "Gemm") and made.get(node.input[0]) == "DequantizeLinear":
                cost *= int8_factor
            total += cost
        return total

    return timer


# Operator prices shaped like this CPU's measurements (benchmarks/results/quant_auto.md): an int8 MatMul of a
# dynamic model beats the Q/DQ pairs a static encoder needs around every attention op, while a static QDQ
# convolution runs on u8*s8 kernels and a dynamic one (ConvInteger) is slower than float.
CPU_LIKE = {
    "MatMul": 1.0,
    "Conv": 1.0,
    "Gemm": 1.0,
    "MatMulInteger": 0.3,
    "DynamicQuantizeLinear": 0.05,
    "ConvInteger": 3.0,
    "QuantizeLinear": 0.08,
    "DequantizeLinear": 0.02,
}
