"""Shared pieces of the distill tests: the example CNN and its data, a weight-perturbing test plugin, a tiny
model holding an operator the converter lacks, and one prune,distill run of the digits CNN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import edgeplug
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeplug import Model, Option, RunContext, hookimpl
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DIGITS = EXAMPLES / "digits_cnn.onnx"
TRAIN_DATA = EXAMPLES / "digits_train.npz"
TEST_DATA = EXAMPLES / "digits_test.npz"
# structured pruning of half the channels, verified loosely: the distill step is the one judged
PRUNE_HALF = {"mode": "structured", "sparsity": 0.5, "min_cosine": 0.0}


def run_onnx(model: bytes | str | Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feed)


def digits_accuracy(model: bytes | str | Path) -> float:
    """Labelled accuracy on the 450 test digits, which no step of these runs sees."""
    with np.load(TEST_DATA) as npz:
        images, labels = npz["input"], npz["labels"]
    return float((run_onnx(model, {"input": images})[0].argmax(1) == labels).mean())


class ScaleLastWeight:
    """A test step that changes what the model computes: the last Gemm weight times `factor`."""

    def __init__(self, factor: float = 0.7) -> None:
        self.factor = factor

    @hookimpl
    def plugin_options(self) -> list[Option]:
        return [Option("min_cosine", "float", -1.0, "any result passes")]

    @hookimpl
    def transform_graph(self, model: Model, ctx: RunContext) -> Model:
        proto = model.copy_proto()
        gemm = [n for n in proto.graph.node if n.op_type == "Gemm"][-1]
        for tensor in proto.graph.initializer:
            if tensor.name == gemm.input[1]:
                tensor.CopyFrom(
                    numpy_helper.from_array(numpy_helper.to_array(tensor) * self.factor, tensor.name)
                )
        return model.replace(proto)


def unsupported_op_model(path: Path) -> Path:
    """Conv -> ThresholdedRelu -> GlobalAveragePool -> Flatten -> Gemm: onnx2torch 1.5.15 has no converter
    for ThresholdedRelu."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "FC"),
        numpy_helper.from_array(np.zeros(3, np.float32), "FCB"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("ThresholdedRelu", ["c"], ["t"], alpha=0.1, name="thresholded"),
        helper.make_node("GlobalAveragePool", ["t"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "FC", "FCB"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "unsupported",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="session")
def pruned_and_distilled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of `prune,distill` on the digits CNN (half the channels pruned, then distilled without
    augmentation, which an 8x8 digit does not survive well), and one of `prune` alone, both at seed 0 on
    the same calibration/validation split of the training digits."""
    out = tmp_path_factory.mktemp("distill")
    data = str(TRAIN_DATA)
    pruned = edgeplug.optimize(
        DIGITS, ["prune"], data=data, options={"prune": PRUNE_HALF}, output_dir=out / "p"
    )
    distilled = edgeplug.optimize(
        DIGITS,
        ["prune", "distill"],
        data=data,
        options={"prune": PRUNE_HALF, "distill": {"augment": False, "lr": 3e-3, "min_top1": 0.97}},
        output_dir=out / "pd",
    )
    return {"pruned": pruned, "distilled": distilled}
