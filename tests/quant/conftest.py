"""Fixtures and small model builders for the `quant` plugin's tests."""

from __future__ import annotations

import itertools
from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from edgeplug import plugins
from edgeplug.capabilities import chain_views
from edgeplug.cli import main
from edgeplug.data import load_data
from edgeplug.tolerance import is_tolerance_key, split_tolerance
from edgeplug_quantize import plugin as quant_plugin
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DIGITS = EXAMPLES / "digits_cnn.onnx"
DIGITS_TEST = EXAMPLES / "digits_test.npz"
DIGITS_TRAIN = EXAMPLES / "digits_train.npz"


def run_cli(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def accuracy(model_path: Path, data: Path = DIGITS_TEST) -> float:
    import onnxruntime as ort

    with np.load(data) as npz:
        inputs, labels = npz["input"], npz["labels"]
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: inputs})[0]
    return float(np.mean(logits.argmax(1) == labels))


def make_ctx(
    model: edgeplug.Model,
    data: Path | None,
    chain: tuple[str, ...] = ("quant",),
    workdir: Path | None = None,
    others: dict[str, dict[str, object]] | None = None,
    **options: object,
) -> edgeplug.RunContext:
    """A RunContext as the pipeline builds it (capabilities of the chain included; `others` sets options of
    the other plugins), for calling the plugin's hooks directly; ctx.previous is the model's own outputs."""
    values = {o.name: o.default for o in quant_plugin.plugin_options()}
    values.update(options)
    opts, tol = split_tolerance(values, [k for k in options if is_tolerance_key(k)])
    dataset = load_data(str(data) if data else None, model)
    ctx = edgeplug.RunContext("quant", opts, tol, dataset, chain, workdir or Path("."), quiet=True)
    pm = plugins.load_plugins()
    chosen = {}
    for name in chain:
        schema = plugins.options_schema(pm, name)
        chosen[name] = {k: o.default for k, o in schema.items()} | (others or {}).get(name, {})
    chosen["quant"] = opts
    ctx.view = chain_views(chain, plugins.chain_capabilities(pm, chain, chosen))["quant"]
    ctx.original = model
    ctx.reference = ctx.previous = ctx.evaluate(model)
    return ctx


def gemm_chain(
    widths: list[int], seed: int = 0, outlier_layer: int | None = None, opset: int = 17
) -> onnx.ModelProto:
    """An MLP of Gemm+Relu layers. With `outlier_layer`, one hidden unit feeding that layer is dead (always 0)
    and the layer's weights from it are huge: the float model is unchanged, but per-channel INT8 weight scales of
    that layer are dominated by the outliers, so every other weight of the layer rounds to zero."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "x"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        w = (rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.05).astype(np.float32)
        if outlier_layer is not None and i == outlier_layer - 1:
            w[0, :] = 0.0  # unit 0 of this layer's output is dead after Relu ...
            b[0] = -1.0
        if outlier_layer is not None and i == outlier_layer:
            w[:, 0] = 400.0 * (1 + rng.random(fan_out)).astype(
                np.float32
            )  # ... and the next layer's weights from it are huge
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "logits" if i == len(widths) - 2 else f"h{i}"
        nodes.append(
            helper.make_node(
                "Gemm",
                [current, f"w{i}", f"b{i}"],
                [out if out == "logits" else f"g{i}"],
                transB=1,
                name=f"fc{i}" if i != outlier_layer else "outlier_fc",
            )
        )
        if out != "logits":
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out], name=f"relu{i}"))
        current = out
    graph = helper.make_graph(
        nodes,
        "gemm_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", widths[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", widths[-1]])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def opset11_with_constants() -> onnx.ModelProto:
    """An old-style export: opset 11, weights in Constant nodes, Squeeze with an `axes` attribute (an input
    from opset 13 on), so bumping the opset number without converting would break the model."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    fc = rng.standard_normal((5, 8)).astype(np.float32) * 0.5
    nodes = [
        helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w), name="const_w"),
        helper.make_node("Constant", [], ["FC"], value=numpy_helper.from_array(fc), name="const_fc"),
        helper.make_node(
            "Constant",
            [],
            ["FCB"],
            value=numpy_helper.from_array(np.array([0.1, -0.1, 0.2, 0.0, 0.05], np.float32)),
            name="const_fcb",
        ),
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("ReduceMean", ["r"], ["m"], axes=[2, 3], keepdims=1, name="mean"),
        helper.make_node("Squeeze", ["m"], ["s"], axes=[2, 3], name="squeeze"),
        helper.make_node("Gemm", ["s", "FC", "FCB"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "old_export",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    return model


@pytest.fixture(scope="session")
def fuse_available() -> bool:
    try:
        import edgeplug_fuse  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def fake_timer(monkeypatch: pytest.MonkeyPatch):
    """Replace auto's timer (timing.timer_for) with a given one; returns the list of timed model paths."""
    from edgeplug_quantize import timing

    timed: list[Path] = []

    def install(timer):
        def counting(path, inputs):
            timed.append(Path(path))
            return timer(path, inputs)

        monkeypatch.setattr(timing, "timer_for", lambda ctx: counting)
        return timed

    return install
