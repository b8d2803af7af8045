"""Issue 15, item 9: nothing that looks like success is silently wrong. Labels that are not class indices
are refused (not scored 0.0), options nobody will read are refused, an impossible --input-shapes is
refused, `infer --output` writes exactly the path named, integers are never rounded through a float, and
the suggestion for a dynamic dimension is a shape that works."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from edgeplug.cli import main
from onnx import TensorProto, helper

from ..conftest import conv_net, registered
from ..core.plugins_for_tests import Tag


def edgeplug(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def refusal(*args: object) -> str:
    code, output = edgeplug(*args)
    lines = [line for line in output.splitlines() if line.startswith("edgeplug: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"  # logits [N, 5]: five classes
    onnx.save(conv_net(), path)
    return path


@pytest.fixture
def tag():
    with registered((Tag("a"), "tag_a")):
        yield


def identity(path: Path, elem: int, shape: list) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem, shape)],
        [helper.make_tensor_value_info("y", elem, shape)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


# -- labels ----------------------------------------------------------------------------------------------------
X = np.random.default_rng(0).random((6, 3, 8, 8), dtype=np.float32)


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        (np.array(list("abcdef")), "labels are <U1"),
        (np.array([0, 1, np.nan, 2, 3, 4]), "1 of the labels are NaN or infinite"),
        (
            np.array([0, 1, 2, 3, 4, 9]),
            "label 9 is out of range: the model has 5 classes, so labels must lie in 0..4",
        ),
        (np.array([0, 1, -1, 2, 3, 4]), "label -1 is out of range"),
        (np.array([0, 1, 2.5, 2, 3, 4]), "label 2.5 is not a class index"),
    ],
)
def test_labels_that_are_not_class_indices_are_refused(model, tmp_path, tag, labels, words):
    data = tmp_path / "d.npz"
    np.savez(data, x=X, labels=labels)
    line = refusal("run", model, "--plugins", "tag_a", "--data", data, "--output-dir", tmp_path / "out")
    assert words in line


def test_labels_as_a_column_and_as_integral_floats_are_accepted(model, tmp_path, tag):
    data = tmp_path / "d.npz"
    np.savez(data, x=X, labels=np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [0.0]]))
    code, output = edgeplug(
        "run", model, "--plugins", "tag_a", "--data", data, "--output-dir", tmp_path / "out"
    )
    assert code == 0, output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["labels"] is True


# -- options nobody reads --------------------------------------------------------------------------------------
def test_security_options_without_the_security_guard_are_refused(model, tmp_path):
    """Decision: refused (exit 2), not warned: the user believes the model runs guarded."""
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=X[:1])
    line = refusal("infer", model, "--input", inputs, "-o", "security.isolate=false")
    assert "options given for 'security', which is not selected (--guard: none)" in line
    assert "--guard security" in line


def test_options_for_a_plugin_not_in_the_chain_are_refused(model, tmp_path, tag):
    line = refusal(
        "run", model, "--plugins", "tag_a", "-o", "quant.mode=static", "--output-dir", tmp_path / "out"
    )
    assert "options given for 'quant', which is not selected (--plugins: tag_a)" in line
    assert not (tmp_path / "out").exists()


def test_config_tables_for_plugins_not_in_the_chain_are_ignored_with_a_warning(model, tmp_path, tag):
    """Decision: one config file may serve `run` and `infer`, so its other tables are ignored, and said so."""
    config = tmp_path / "edgeplug.toml"
    config.write_text("[security]\nisolate = false\n\n[tag_a]\n")
    code, output = edgeplug(
        "run", model, "--plugins", "tag_a", "--config", config, "--output-dir", tmp_path / "out"
    )
    assert code == 0, output
    assert (
        f"edgeplug: warning: config file {config}: [security] is ignored: security is not in the chain"
        in output
    )


# -- shapes ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", ["-1x3x8x8", "0x3x8x8"])
def test_input_shapes_must_be_positive(model, tmp_path, tag, dims):
    line = refusal(
        "run", model, "--plugins", "tag_a", "--input-shapes", f"x:{dims}", "--output-dir", tmp_path / "out"
    )
    assert f"--input-shapes x: dimension {dims.split('x')[0]} at axis 0 must be a positive integer" in line


def test_a_dynamic_dimension_error_suggests_a_shape_that_works(tmp_path, tag):
    model = identity(tmp_path / "dyn.onnx", TensorProto.FLOAT, ["N", "L", 3])
    line = refusal("run", model, "--plugins", "tag_a", "--output-dir", tmp_path / "out")
    assert "--input-shapes x:1x1x3" in line
    suggestion = line.split("--input-shapes ")[1].split()[0]
    code, output = edgeplug(
        "run", model, "--plugins", "tag_a", "--input-shapes", suggestion, "--output-dir", tmp_path / "out"
    )
    assert code == 0, output


def test_a_fixed_zero_dimension_is_an_empty_tensor_not_an_error(tmp_path, tag):
    model = identity(tmp_path / "empty.onnx", TensorProto.FLOAT, [1, 0])
    code, output = edgeplug("run", model, "--plugins", "tag_a", "--output-dir", tmp_path / "out")
    assert code == 0, output


# -- infer --output ------------------------------------------------------------------------------------------------
def test_infer_output_writes_exactly_the_path_named(model, tmp_path):
    """Decision: the path as given, no `.npz` appended (numpy.savez would write g.npz for g)."""
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=X[:2])
    target = tmp_path / "g"
    code, output = edgeplug("infer", model, "--input", inputs, "--output", target)
    assert code == 0, output
    assert target.is_file() and not (tmp_path / "g.npz").exists()
    with np.load(target) as saved:
        assert saved["logits"].shape == (2, 5)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("which", ["model", "input"])
def test_infer_output_never_replaces_an_input(model, tmp_path, which):
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=X[:1])
    target = model if which == "model" else inputs
    before = target.read_bytes()
    line = refusal("infer", model, "--input", inputs, "--output", target)
    assert "would replace" in line
    assert target.read_bytes() == before


# -- integers ------------------------------------------------------------------------------------------------------
BIG = 2**53 + 1  # float64 cannot hold it; float32 cannot hold 16777217 (2**24 + 1)


def test_int64_inputs_reach_the_model_exactly(tmp_path):
    model = identity(tmp_path / "ids.onnx", TensorProto.INT64, ["N", 3])
    inputs, target = tmp_path / "ids.npz", tmp_path / "out.npz"
    ids = np.array([[BIG, -BIG, 16_777_217], [1, 2, 3]], np.int64)
    np.savez(inputs, x=ids)
    code, output = edgeplug("infer", model, "--input", inputs, "--output", target)
    assert code == 0, output
    with np.load(target) as saved:
        np.testing.assert_array_equal(saved["y"], ids)


@pytest.mark.parametrize(
    ("elem", "values", "shown"),
    [
        (TensorProto.FLOAT, [16_777_217, 1, 2], "16777217"),  # rounded to 16777216 through float32
        (TensorProto.INT32, [2**40, 1, 2], str(2**40)),  # wrapped by int32
        (TensorProto.UINT8, [-1, 1, 2], "-1"),  # wrapped to 255
    ],
)
def test_integers_the_input_type_cannot_hold_are_refused(tmp_path, elem, values, shown):
    model = identity(tmp_path / "m.onnx", elem, ["N", 3])
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=np.array([values], np.int64))
    line = refusal("infer", model, "--input", inputs)
    assert f"cannot hold exactly (e.g. {shown})" in line
