"""Transformer encoders: detection, heads/hidden size read off the graph, onnxruntime's fusions, options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from click.testing import CliRunner
from edgeplug.cli import main
from edgeplug_fuse.transformer import detect_encoder

from tests import zoo

from .graphs import domains, ops, step


@pytest.fixture(scope="module")
def bert() -> Path:
    return zoo.cached("bert_encoder")


@pytest.fixture
def bert_data(tmp_path: Path, bert: Path) -> Path:
    """12 samples of length 16; masks padded on the right AND with holes (any 0/1 pattern)."""
    rng = np.random.default_rng(0)
    n, length = 12, 16
    mask = np.ones((n, length), np.int64)
    for i in range(n):
        mask[i, length - i :] = 0  # right padding of i tokens
    mask[::3, 2] = 0  # and holes, which a 1-D "valid length" mask index would get wrong
    data = {
        "input_ids": rng.integers(0, 1000, (n, length)).astype(np.int64),
        "attention_mask": mask,
        "token_type_ids": (np.arange(length)[None, :] >= length // 2).astype(np.int64).repeat(n, 0),
    }
    path = tmp_path / "bert.npz"
    np.savez(path, **data)
    return path


def run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.output


def test_detects_encoder_heads_and_hidden_size(bert: Path) -> None:
    info = detect_encoder(gs.import_onnx(onnx.load(str(bert))))
    assert info.found
    assert (info.attention_blocks, info.num_heads, info.hidden_size) == (2, 4, 64)
    assert info.layernorms == 5  # embeddings + 2 per layer


def test_cnn_is_not_an_encoder() -> None:
    assert not detect_encoder(gs.import_onnx(onnx.load(str(zoo.cached("resnet_style"))))).found


@pytest.mark.parametrize(
    "options",
    [
        ["-o", "fuse.target=onnxruntime"],
        ["-o", "fuse.transformer=bert"],
        ["-o", "fuse.target=onnxruntime", "-o", "fuse.num_heads=4", "-o", "fuse.hidden_size=64"],
    ],
)
def test_bert_encoder_fused_exactly(tmp_path: Path, bert: Path, bert_data: Path, options: list[str]) -> None:
    out = tmp_path / "out"
    code, output = run(
        ["run", str(bert), "--plugins", "fuse", "--data", str(bert_data), *options, "--output-dir", str(out)]
    )
    assert code == 0, output
    entry = json.loads((out / "report.json").read_text())["steps"][0]
    fused = entry["details"]["transformer"]["fused"]
    assert fused == {"EmbedLayerNormalization": 1, "Attention": 2, "BiasGelu": 2, "SkipLayerNormalization": 4}
    assert entry["details"]["transformer"]["num_heads"] == 4
    assert entry["details"]["transformer"]["hidden_size"] == 64
    # the core verified at the default, exact tolerance, on masks with holes
    assert entry["tolerance"]["rtol"] == 1e-4 and entry["tolerance"]["atol"] == 1e-5
    assert entry["verification"]["passed"]
    model = onnx.load(str(out / bert.name))
    assert ops(model)["Attention"] == 2 and ops(model)["Softmax"] == 0
    assert [o.name for o in model.graph.output] == ["last_hidden_state", "pooler_output"]


def test_bert_default_target_stays_standard(fuse, bert: Path, bert_data: Path) -> None:
    result = fuse(bert, data=str(bert_data))
    entry = step(result)
    assert entry["details"]["transformer"]["fused"] == {}
    assert entry["details"]["transformer"]["detected"]["num_heads"] == 4
    assert domains(result.model.proto) <= {""}
    assert ops(result.model.proto)["Softmax"] == 2


def test_transformer_off(fuse, bert: Path, bert_data: Path) -> None:
    result = fuse(bert, data=str(bert_data), target="onnxruntime", transformer="off")
    assert step(result)["details"]["transformer"]["fused"] == {}
    assert domains(result.model.proto) <= {""}


def test_inconsistent_heads_is_a_user_error(tmp_path: Path, bert: Path, bert_data: Path) -> None:
    code, output = run(
        [
            "run",
            str(bert),
            "--plugins",
            "fuse",
            "--data",
            str(bert_data),
            "-o",
            "fuse.transformer=bert",
            "-o",
            "fuse.num_heads=3",
            "-o",
            "fuse.hidden_size=64",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "num_heads" in output


def test_encoder_fusion_dropped_when_it_misses_the_tolerance(fuse, bert: Path, bert_data: Path) -> None:
    """With a zero budget the fused kernels' rounding (~1e-6) is a miss: only the encoder fusion is dropped,
    the measured error is reported, and the bit-exact clean-ups still apply."""
    result = fuse(bert, data=str(bert_data), target="onnxruntime", rtol=0.0, atol=0.0)
    entry = step(result)
    record = entry["details"]["transformer"]
    assert "dropped" in record and 0 < record["max_abs_error"] < 1e-4
    assert entry["status"] == "applied"
    assert ops(result.model.proto)["Attention"] == 0
    assert entry["details"]["constant_nodes_to_initializers"] > 0


def test_static_export_below_opset_17_stays_valid(fuse) -> None:
    """A static-shape export keeps the embeddings' LayerNorm outside EmbedLayerNormalization; the fusion
    emits a LayerNormalization node, standard only from opset 17: below it is written back as primitives."""
    path = zoo.cached("bert_encoder", dynamic_axes=False, opset=13)
    result = fuse(path, target="onnxruntime")
    entry = step(result)
    after = result.model.proto
    assert entry["status"] == "applied"
    assert entry["details"]["transformer"]["fused"] == {
        "Attention": 2,
        "BiasGelu": 2,
        "SkipLayerNormalization": 4,
    }
    assert ops(after)["LayerNormalization"] == 0 and ops(after)["Attention"] == 2
    assert result.model.opset == 13
    onnx.checker.check_model(after)
