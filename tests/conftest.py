"""Shared fixtures: the example model, small hand-built models, and in-process plugin registration."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from edgeplug import plugins as plugin_registry
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def example_model() -> Path:
    return EXAMPLES / "digits_cnn.onnx"


@pytest.fixture(scope="session")
def example_test_data() -> Path:
    return EXAMPLES / "digits_test.npz"


@pytest.fixture(scope="session")
def example_train_data() -> Path:
    return EXAMPLES / "digits_train.npz"


def conv_net(opset: int = 17, batch: int | str = "N") -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm: a real, tiny image classifier."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B"),
        numpy_helper.from_array(rng.standard_normal((5, 8)).astype(np.float32), "FC"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "FCB"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "FC", "FCB"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.metadata_props.add(key="author", value="tests")
    return model


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(conv_net(), path)
    return path


def quantize_example(
    out: Path,
    source: Path = EXAMPLES / "digits_cnn.onnx",
    *,
    samples: np.ndarray | None = None,
    per_channel: bool = True,
    activations: str = "u8",
    symmetric: bool = False,
    quantize_bias: bool = True,
) -> Path:
    """A QDQ model made by onnxruntime's own quantize_static (s8 weights; activations u8 or s8, symmetric
    or not; biases int32 or left float), calibrated on `samples` (default: 32 training digits)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    images = np.load(EXAMPLES / "digits_train.npz")["input"][:32] if samples is None else samples

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{"input": images[i : i + 1].astype(np.float32)} for i in range(len(images))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    quantize_static(
        str(source),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={
            "ActivationSymmetric": symmetric,
            "WeightSymmetric": True,
            "QuantizeBias": quantize_bias,
        },
    )
    return out


@contextlib.contextmanager
def registered(*pairs: tuple[object, str]) -> Iterator[None]:
    """Register in-process plugins for the duration of a test, always unregistering them."""
    pm = edgeplug.load_plugins()
    for plugin, name in pairs:
        pm.register(plugin, name=name)
    try:
        yield
    finally:
        for _, name in pairs:
            if pm.has_plugin(name):
                pm.unregister(name=name)


@pytest.fixture
def fresh_plugins() -> Iterator[None]:
    """Reload entry points before and after a test that changes what is installed."""
    plugin_registry.load_plugins(refresh=True)
    try:
        yield
    finally:
        plugin_registry.load_plugins(refresh=True)


@pytest.fixture(autouse=True)
def _quant_timer_priced_by_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    """quant's auto mode chooses by the latency it measures; no test may depend on this machine's clock or
    load for that choice (the quant issue), so its timer is replaced by one that prices each operator
    (tests/quant/models.py: int8 MatMul/Conv cheaper than float, ConvInteger dearer). A test that wants
    another timer installs it with tests/quant's `fake_timer`; test_auto.py runs the real one once."""
    try:
        from edgeplug_quantize import timing
    except ImportError:
        return
    from tests.quant.models import CPU_LIKE, op_cost_timer

    timer = op_cost_timer(CPU_LIKE)
    monkeypatch.setattr(timing, "timer_for", lambda ctx: timer)


@pytest.fixture(autouse=True)
def _quant_without_nncf(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """quant's auto mode adds NNCF's recipe where nncf is installed. The tests of onnxruntime's recipes, their
    repair and their choice are written against onnxruntime's quantizer, so NNCF is hidden from every test
    except those marked `nncf` (tests/quant/test_nncf.py), whatever the environment holds."""
    if request.node.get_closest_marker("nncf"):
        return
    try:
        from edgeplug_quantize import plugin
    except ImportError:
        return
    monkeypatch.setattr(plugin, "nncf_available", lambda: False)
