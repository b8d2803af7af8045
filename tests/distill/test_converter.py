"""ONNX to PyTorch and back: exact conversions, the operators added, the torchvision stand-in, the export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from edgeplug import MissingDependencyError
from edgeplug_distill import converter, torchvision_shim
from edgeplug_distill.converter import to_torch
from edgeplug_distill.export import fidelity, to_onnx
from onnx import TensorProto, helper, numpy_helper

from .conftest import DIGITS, TEST_DATA, run_onnx


def relative_error(proto: onnx.ModelProto, feed: dict[str, np.ndarray]) -> float:
    converted = to_torch(proto)
    reference = run_onnx(proto.SerializeToString(), feed)
    with torch.no_grad():
        got = converted(*[torch.from_numpy(feed[n]) for n in converted.inputs])
    assert len(got) == len(reference)
    return max(
        float(np.abs(r - g.numpy()).max()) / max(1.0, float(np.abs(r).max())) for r, g in zip(reference, got)
    )


def test_digits_cnn_converts_exactly() -> None:
    images = np.load(TEST_DATA)["input"][:64]
    assert relative_error(onnx.load(DIGITS), {"input": images}) <= 1e-5


def _graph_model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_greater_or_equal_from_opset_16() -> None:
    """onnx2torch 1.5.15 registers GreaterOrEqual/LessOrEqual for opset 12 only; transformers' masks use it."""
    model = _graph_model(
        [
            helper.make_node("GreaterOrEqual", ["x", "y"], ["ge"]),
            helper.make_node("LessOrEqual", ["x", "y"], ["le"]),
            helper.make_node("Cast", ["ge"], ["out_ge"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["le"], ["out_le"], to=TensorProto.FLOAT),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 5]) for n in ("x", "y")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 5]) for n in ("out_ge", "out_le")],
    )
    assert converter.unsupported_operators(model) == {}
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (2, 5)).astype(np.float32)
    y = rng.integers(0, 3, (2, 5)).astype(np.float32)
    assert relative_error(model, {"x": x, "y": y}) == 0.0


@pytest.mark.parametrize("axis", [0, 2, -2])
def test_flatten_at_the_edges(axis: int) -> None:
    """Flatten at axis 0 or at the input's rank: onnx2torch 1.5.15 flattens to 1-D and fails; written as the
    Reshape it is before conversion."""
    model = _graph_model(
        [helper.make_node("Flatten", ["x"], ["f"], axis=axis), helper.make_node("Relu", ["f"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    assert relative_error(model, {"x": x}) == 0.0


def test_outputs_of_one_node_stay_separate() -> None:
    """Two graph outputs made by one Split node come back as two values, in the graph's order."""
    model = _graph_model(
        [helper.make_node("Split", ["x", "sizes"], ["b", "a"], axis=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("a", "b")],
        [numpy_helper.from_array(np.array([3, 3], np.int64), "sizes")],
    )
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    assert relative_error(model, {"x": x}) == 0.0


def test_the_stand_in_leaves_no_torchvision_behind() -> None:
    """onnx2torch loads, nothing named torchvision stays importable, and transformers imports BertModel in
    the same process (the torchvision wheel for torch 2.13 breaks that import)."""
    code = (
        "import importlib.util, sys\n"
        "from edgeplug_distill.converter import load_onnx2torch\n"
        "load_onnx2torch()\n"
        "assert 'torchvision' not in sys.modules and importlib.util.find_spec('torchvision') is None\n"
        "from transformers import BertModel\n"
        "print('ok', BertModel.__name__)\n"
    )
    if converter.torchvision_missing() is False:
        pytest.skip("a real torchvision is installed: the stand-in is not used")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok BertModel" in done.stdout, done.stderr[-2000:]


def test_the_stand_in_never_shadows_an_imported_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", object())
    with pytest.raises(RuntimeError, match="already imported"), torchvision_shim.standing_in():
        pass
    assert sys.modules["torchvision"] is not None


def test_missing_onnx2torch_names_the_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "onnx2torch", raising=False)
    real = converter.importlib.util.find_spec
    monkeypatch.setattr(
        converter.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnx2torch" else real(name, *a),
    )
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps onnx2torch==1\.5\.15"):
        converter.load_onnx2torch()


def test_export_computes_what_the_trained_module_computes(tmp_path: Path) -> None:
    """After a few optimizer steps (weights no longer the ONNX ones), the export matches the module to 1e-5
    relative to the output scale, keeps the names, the opset and the dynamic batch."""
    proto = onnx.load(DIGITS)
    converted = to_torch(proto)
    images = np.load(TEST_DATA)["input"]
    module = converted.module
    module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    for start in range(0, 96, 32):
        batch = torch.from_numpy(images[start : start + 32])
        loss = converted(batch)[0].pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    exported = to_onnx(converted, proto, {"input": images[:4]})
    samples = [{"input": images[i : i + 16]} for i in range(100, 228, 16)]
    assert fidelity(converted, exported, samples) <= 1e-5
    with torch.no_grad():
        trained = converted(torch.from_numpy(images[:8]))[0].numpy()
    original = run_onnx(DIGITS, {"input": images[:8]})[0]
    assert np.abs(trained - original).max() > 1e-2  # the weights did change
    assert [i.name for i in exported.graph.input] == ["input"]
    assert [o.name for o in exported.graph.output] == ["logits"]
    assert exported.opset_import[0].version == 17
    assert exported.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50"])
def test_imagenet_architectures_convert_exactly(name: str) -> None:
    """The tests zoo's MobileNetV2 and ResNet-50 (BatchNorm kept, converted BatchNorm put in eval mode)."""
    from tests import zoo

    path = zoo.cached(name)
    model = onnx.load(path)
    assert relative_error(model, zoo.example_inputs(model)) <= 1e-4
