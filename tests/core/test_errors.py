"""Bad input is refused with exit 2 and one line, and loses nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from edgeplug import hookimpl
from edgeplug.cli import main
from onnx import TensorProto, helper, numpy_helper

from ..conftest import conv_net, registered
from .plugins_for_tests import ScaleWeights, Tag


def refused(args: list, input_file: Path | None = None) -> str:
    before = input_file.read_bytes() if input_file and input_file.exists() else None
    result = CliRunner().invoke(main, [str(a) for a in args])
    lines = [line for line in result.output.strip().splitlines() if line.startswith("edgeplug: error:")]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    if before is not None:
        assert input_file.read_bytes() == before
    return lines[0]


@pytest.fixture
def tag_plugin():
    with registered((Tag("a"), "a"), (ScaleWeights(), "scale")):
        yield


def test_corrupt_file(tmp_path, tag_plugin):
    bad = tmp_path / "corrupt.onnx"
    data = bytearray(onnx.load_model_from_string(conv_net().SerializeToString()).SerializeToString())
    data[10:60] = b"\xff" * 50
    bad.write_bytes(bytes(data))
    line = refused(["run", bad, "--plugins", "a", "--output-dir", tmp_path / "o"], bad)
    assert "corrupt.onnx" in line and "not a valid ONNX model" in line


def test_truncated_file(tmp_path, tag_plugin):
    bad = tmp_path / "truncated.onnx"
    full = conv_net().SerializeToString()
    bad.write_bytes(full[: len(full) // 2])
    line = refused(["run", bad, "--plugins", "a", "--output-dir", tmp_path / "o"], bad)
    assert "truncated.onnx" in line


def test_not_onnx_at_all(tmp_path, tag_plugin):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is a text file, not a model\n")
    refused(["inspect", bad], bad)
    refused(["run", bad, "--plugins", "a", "--output-dir", tmp_path / "o"], bad)


def test_missing_file(tmp_path, tag_plugin):
    line = refused(["run", tmp_path / "nope.onnx", "--plugins", "a"])
    assert "does not exist" in line


def test_keras_file_without_a_keras_plugin(tmp_path, tag_plugin):
    keras = tmp_path / "model.h5"
    keras.write_bytes(b"\x89HDF\r\n\x1a\n")
    line = refused(["run", keras, "--plugins", "a", "--output-dir", tmp_path / "o"], keras)
    assert "Keras" in line


def test_wrong_plugin_name_suggests_the_closest(tiny_model, tag_plugin):
    line = refused(["run", tiny_model, "--plugins", "scal"], tiny_model)
    assert "unknown plugin 'scal'" in line and "scale" in line


def test_bad_option_value_and_unknown_key(tiny_model, tag_plugin):
    line = refused(["run", tiny_model, "--plugins", "scale", "-o", "scale.factor=lots"], tiny_model)
    assert "scale.factor" in line and "float" in line
    line = refused(["run", tiny_model, "--plugins", "scale", "-o", "scale.factr=2"], tiny_model)
    assert "scale.factor" in line or "factor" in line
    line = refused(["run", tiny_model, "--plugins", "scale", "-o", "factor=2"], tiny_model)
    assert "PLUGIN.KEY=VALUE" in line


def test_bad_config_file(tiny_model, tmp_path, tag_plugin):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[scale]\nfactor = 'x'\n")
    line = refused(["run", tiny_model, "--plugins", "scale", "--config", cfg], tiny_model)
    assert "scale.factor" in line
    cfg.write_text("[scale\n")
    assert "not valid TOML" in refused(["run", tiny_model, "--plugins", "scale", "--config", cfg])


def test_data_with_wrong_names(tiny_model, tmp_path, tag_plugin):
    npz = tmp_path / "d.npz"
    np.savez(npz, image=np.zeros((4, 3, 8, 8), np.float32))
    line = refused(
        ["run", tiny_model, "--plugins", "a", "--data", npz, "--output-dir", tmp_path / "o"], tiny_model
    )
    assert "missing x" in line and "unknown image" in line


def test_data_with_wrong_shape_or_dtype(tiny_model, tmp_path, tag_plugin):
    npz = tmp_path / "d.npz"
    np.savez(npz, x=np.zeros((4, 3, 9, 9), np.float32))
    line = refused(
        ["run", tiny_model, "--plugins", "a", "--data", npz, "--output-dir", tmp_path / "o"], tiny_model
    )
    assert "x has shape [4, 3, 9, 9]" in line
    np.savez(npz, x=np.zeros((4, 8, 8), np.float32))
    assert "rank" in refused(
        ["run", tiny_model, "--plugins", "a", "--data", npz, "--output-dir", tmp_path / "o"]
    )
    np.savez(npz, x=np.array([["a"] * 8] * 4).reshape(4, 1, 1, 8).repeat(3, 1).repeat(8, 2))
    assert "expects float32" in refused(
        ["run", tiny_model, "--plugins", "a", "--data", npz, "--output-dir", tmp_path / "o"]
    )


def test_external_data_escaping_the_models_folder(tmp_path, tag_plugin):
    folder = tmp_path / "m"
    folder.mkdir()
    model = conv_net()
    onnx.save(
        model,
        folder / "ext.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    (tmp_path / "secret.bin").write_bytes((folder / "w.bin").read_bytes())
    proto = onnx.load(folder / "ext.onnx", load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    path = folder / "escape.onnx"
    onnx.save(proto, path)
    line = refused(["run", path, "--plugins", "a", "--output-dir", tmp_path / "o"], path)
    assert "outside the model's folder" in line
    # the legitimate external-data model loads
    ok = CliRunner().invoke(main, ["inspect", str(folder / "ext.onnx")])
    assert ok.exit_code == 0, ok.output


def test_invalid_graph_is_refused_by_the_checker(tmp_path, tag_plugin):
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [w],
    )
    path = tmp_path / "bad_shapes.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    line = refused(["run", path, "--plugins", "a", "--output-dir", tmp_path / "o"], path)
    assert "not a valid ONNX model" in line


def test_output_dir_that_would_overwrite_the_input(tiny_model, tag_plugin):
    line = refused(["run", tiny_model, "--plugins", "a", "--output-dir", tiny_model.parent], tiny_model)
    assert "would replace the input model" in line


def test_bad_input_shapes(tiny_model, tmp_path, tag_plugin):
    assert "NAME:1x3x224x224" in refused(["run", tiny_model, "--plugins", "a", "--input-shapes", "x=1"])
    assert "inputs are x" in refused(
        ["run", tiny_model, "--plugins", "a", "--input-shapes", "y:1x3x8x8", "--output-dir", tmp_path / "o"]
    )


@pytest.mark.parametrize(
    ("plugin", "code", "raised", "line"),
    [
        (
            "nope",
            2,
            "edgeplug.errors.OptionError: unknown plugin 'nope'",
            "edgeplug: error: unknown plugin 'nope'",
        ),
        ("broken_options", 3, "KeyError: 'oops'", "edgeplug: error: internal error: KeyError: 'oops'"),
    ],
)
def test_debug_shows_the_traceback(tiny_model, tmp_path, tag_plugin, plugin, code, raised, line):
    """--debug prints the traceback (down to the raising frame) before the one error line; without it the
    same failure is the error line alone."""

    class BrokenOptions:
        @hookimpl
        def plugin_options(self):
            raise KeyError("oops")

    args = ["run", str(tiny_model), "--plugins", plugin, "--output-dir", str(tmp_path / "o")]
    with registered((BrokenOptions(), "broken_options")):
        debug = CliRunner().invoke(main, ["--debug", *args])
        plain = CliRunner().invoke(main, args)
    assert debug.exit_code == plain.exit_code == code
    stderr = debug.stderr.strip().splitlines()
    assert stderr[0] == "Traceback (most recent call last):", debug.stderr
    assert any(raised in text for text in stderr), debug.stderr
    assert any(text.lstrip().startswith('File "') for text in stderr)  # frames, not only the message
    assert stderr[-1].startswith(line) and sum(text.startswith("edgeplug: error:") for text in stderr) == 1
    assert plain.stderr.strip().splitlines() == [stderr[-1]]
    assert "Traceback" not in plain.output


def test_data_with_nan_is_refused(tiny_model, tmp_path, tag_plugin):
    npz = tmp_path / "nan.npz"
    x = np.zeros((4, 3, 8, 8), np.float32)
    x[1, 0, 0, 0] = np.nan
    np.savez(npz, x=x)
    line = refused(
        ["run", tiny_model, "--plugins", "a", "--data", npz, "--output-dir", tmp_path / "o"], tiny_model
    )
    assert "NaN or Inf" in line


def test_label_count_must_match_the_samples(tiny_model, tmp_path, tag_plugin):
    npz = tmp_path / "labels.npz"
    np.savez(npz, x=np.zeros((4, 3, 8, 8), np.float32), labels=np.zeros(3, np.int64))
    line = refused(
        ["run", tiny_model, "--plugins", "a", "--data", npz, "--output-dir", tmp_path / "o"], tiny_model
    )
    assert "3 labels for 4 samples" in line


def test_data_that_is_not_an_npz_archive(tiny_model, tmp_path, tag_plugin):
    npz = tmp_path / "fake.npz"
    npz.write_text("not a zip")
    line = refused(
        ["run", tiny_model, "--plugins", "a", "--data", npz, "--output-dir", tmp_path / "o"], tiny_model
    )
    assert "not a .npz archive" in line


@pytest.mark.parametrize(
    "option", ["scale.min_top1=1.5", "scale.min_cosine=2", "scale.atol=-1", "scale.rtol=nan"]
)
def test_tolerances_out_of_range_are_refused(tiny_model, tmp_path, tag_plugin, option):
    line = refused(
        ["run", tiny_model, "--plugins", "scale", "-o", option, "--output-dir", tmp_path / "o"], tiny_model
    )
    assert option.split("=")[0] in line and "expected a number" in line


def test_callable_options_take_callables_or_import_strings():
    from edgeplug import Option, OptionError

    opt = Option("metric", "callable", None, "a metric")
    assert opt.parse(len, "p") is len
    assert opt.parse("pkg.mod:fn", "p") == "pkg.mod:fn"
    with pytest.raises(OptionError, match="a Python callable or 'module:function'"):
        opt.parse(5, "p")


def test_a_bug_in_a_plugin_outside_a_step_is_exit_3_with_one_line(tiny_model, tmp_path, tag_plugin):
    class BrokenOptions:
        @hookimpl
        def plugin_options(self):
            raise KeyError("oops")

    with registered((BrokenOptions(), "broken_options")):
        result = CliRunner().invoke(
            main, ["run", str(tiny_model), "--plugins", "broken_options", "--output-dir", str(tmp_path / "o")]
        )
        unaffected = CliRunner().invoke(
            main, ["run", str(tiny_model), "--plugins", "a", "--output-dir", str(tmp_path / "o2")]
        )
        listing = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 3
    assert result.output.strip() == "edgeplug: error: internal error: KeyError: 'oops' (rerun with --debug)"
    assert unaffected.exit_code == 0, unaffected.output  # a run that does not select it is not broken by it
    assert (
        listing.exit_code == 0 and "broken_options  BROKEN: plugin 'broken_options' failed" in listing.output
    )
