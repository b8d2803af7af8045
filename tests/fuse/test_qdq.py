"""fuse on a quantized (QDQ) model: the Q/DQ nodes and int8 weights stay, and the file does not grow."""

from __future__ import annotations

from collections import Counter
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import edgeplug
import onnx
import onnx_graphsurgeon as gs
import pytest
from click.testing import CliRunner
from edgeplug.cli import main
from edgeplug_fuse import folding

from tests.conftest import quantize_example

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits_cnn.onnx"
TEST_DATA = ROOT / "examples" / "digits_test.npz"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@pytest.fixture(scope="module")
def qdq_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example CNN quantized to QDQ by onnxruntime.quantization.quantize_static."""
    return quantize_example(tmp_path_factory.mktemp("qdq") / "digits_qdq.onnx", DIGITS)


def _qdq_nodes(proto: onnx.ModelProto) -> Counter[tuple[str, str]]:
    return Counter((n.op_type, n.name) for n in proto.graph.node if n.op_type in QDQ_OPS)


def _int8_weights(proto: onnx.ModelProto) -> set[str]:
    """Names of the integer initializers read by DequantizeLinear (the quantized weights)."""
    ints = {
        t.name
        for t in proto.graph.initializer
        if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(t.dims) > 1
    }
    return {n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in ints}


def test_fuse_keeps_the_qdq_nodes_and_adds_no_value_info(qdq_digits: Path, tmp_path: Path) -> None:
    before = onnx.load(qdq_digits)
    del before.graph.value_info[:]  # as quantize_static wrote it, without the shapes the core's loader infers
    assert sum(_qdq_nodes(before).values()) >= 20
    weights = _int8_weights(before)
    assert len(weights) == 4  # 3 Conv + 1 Gemm weights, int8 behind DequantizeLinear
    run = edgeplug.optimize(edgeplug.Model(before), ["fuse"], data=TEST_DATA, output_dir=tmp_path)
    assert run.report["steps"][0]["status"] == "applied"  # it merges duplicate scales and zero points
    after = run.model.proto
    assert _qdq_nodes(after) == _qdq_nodes(before)
    assert len(_int8_weights(after)) == len(weights)
    assert not any(
        t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4 for t in after.graph.initializer
    ), "a Conv weight was folded back to float"
    assert not after.graph.value_info
    assert after.ByteSize() <= before.ByteSize()


def test_constant_folding_excludes_quantize_and_dequantize(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    original = gs.Graph.fold_constants

    def spy(self: gs.Graph, *args: Any, **kwargs: Any) -> gs.Graph:
        seen.update(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(gs.Graph, "fold_constants", spy)
    graph = gs.import_onnx(onnx.load(DIGITS))
    folding.fold_constants(graph)
    exclude = seen.get("should_exclude_node")
    assert exclude is not None, "fold_constants called without should_exclude_node"
    assert exclude(gs.Node("QuantizeLinear")) and exclude(gs.Node("DequantizeLinear"))
    assert not exclude(gs.Node("Conv")) and not exclude(gs.Node("Add"))


def test_quant_then_fuse_does_not_grow_the_file(tmp_path: Path) -> None:
    if "quant" not in {e.name for e in entry_points(group="edgeplug")}:
        pytest.skip("the quant plugin is not installed")
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(DIGITS),
            "--plugins",
            "quant,fuse",
            "--data",
            str(TEST_DATA),
            "--output-dir",
            str(tmp_path),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    quant = tmp_path / "steps" / "01-quant.onnx"
    final = tmp_path / DIGITS.name
    assert final.stat().st_size <= quant.stat().st_size
    before, after = onnx.load(quant), onnx.load(final)
    assert _qdq_nodes(after) == _qdq_nodes(before)
    assert {vi.name for vi in after.graph.value_info} <= {vi.name for vi in before.graph.value_info}
