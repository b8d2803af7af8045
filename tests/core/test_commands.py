"""`edgeplug plugins`, `inspect`, `bench`, `infer` and guards."""

from __future__ import annotations

import json

import edgeplug
import numpy as np
import pytest
from click.testing import CliRunner
from edgeplug import InferenceResult, Option, hookimpl
from edgeplug.cli import main
from edgeplug.options import declared_options

from ..conftest import registered
from .plugins_for_tests import ScaleWeights


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_inspect(example_model):
    result = invoke("inspect", example_model, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["opset"] == 17 and info["ops"]["Conv"] == 3
    assert info["parameters"] > 1000
    text = invoke("inspect", example_model)
    assert "input   input: float32" in text.output


def test_bench_side_by_side(example_model, tiny_model):
    result = invoke("bench", example_model, tiny_model, "--runs", "5", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["model"] for r in rows] == [str(example_model), str(tiny_model)]
    assert [r["size_bytes"] for r in rows] == [example_model.stat().st_size, tiny_model.stat().st_size]
    assert all(r["runs"] == 5 and r["p50_ms"] > 0 and r["p90_ms"] >= r["p50_ms"] for r in rows)
    base, other = rows
    # every ratio is the first model's figure over this model's: 1 for the first, measured for the others
    assert base["speedup_p50"] == base["size_ratio"] == 1.0
    assert other["speedup_p50"] == pytest.approx(base["p50_ms"] / other["p50_ms"])
    assert other["size_ratio"] == pytest.approx(base["size_bytes"] / other["size_bytes"])
    assert other["size_ratio"] > 10  # the example CNN's weights against the tiny 8-channel net's
    assert other["memory_ratio"] == pytest.approx(base["memory_bytes"] / other["memory_bytes"])
    for row in rows:  # three alternated rounds, the spread their range
        assert len(row["rounds"]) == 3
        assert row["spread_ms"] == pytest.approx(max(row["rounds"]) - min(row["rounds"]), abs=1e-5)
    table = invoke("bench", example_model, tiny_model, "--runs", "5", "--label", "cnn", "--label", "tiny")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert "threads 1, 3 rounds x 5 runs, alternated" in lines[0] and "[" in lines[0]  # CPU flags first
    assert lines[1].split()[:4] == ["model", "p50", "ms", "spread"]
    assert [line.split()[0] for line in lines[2:4]] == ["cnn", "tiny"]
    assert lines[2].split()[-2:] == ["1.00x", "1.00x"]


def test_bench_labels_same_named_models_by_relative_path_and_counts_external_data(example_model, tmp_path):
    import onnx

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        proto = onnx.load(example_model)
        onnx.save(proto, tmp_path / folder / "m.onnx", save_as_external_data=folder == "b", location="m.data",
                  size_threshold=0)  # fmt: skip
    result = invoke("bench", tmp_path / "a" / "m.onnx", tmp_path / "b" / "m.onnx", "--runs", "3", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["label"] for r in rows] == ["a/m.onnx", "b/m.onnx"]
    external = (tmp_path / "b" / "m.onnx").stat().st_size + (tmp_path / "b" / "m.data").stat().st_size
    assert rows[1]["size_bytes"] == external > (tmp_path / "b" / "m.onnx").stat().st_size
    assert rows[1]["size_ratio"] == pytest.approx(rows[0]["size_bytes"] / external)
    mismatch = invoke("bench", tmp_path / "a" / "m.onnx", tmp_path / "b" / "m.onnx", "--label", "one")
    assert mismatch.exit_code == 2 and "--label given 1 times for 2 models" in mismatch.output


def test_bench_refuses_a_broken_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage")
    assert invoke("bench", bad).exit_code == 2


def declared_by(plugin: object) -> dict[str, Option]:
    """The options a plugin declares itself (a settings dataclass, or Option objects, flattened); the core
    adds its tolerance options to every plugin's table."""
    declare = getattr(plugin, "plugin_options", None)
    result = declare() if declare else []
    items = [result] if isinstance(result, type) else result
    flat: list[Option] = []
    for item in items:
        if isinstance(item, type):
            flat.extend(declared_options(item))
        else:
            flat.extend(item if isinstance(item, list) else [item])
    return {o.name: o for o in flat}


def test_plugins_lists_options():
    """Each plugin's declared options with type, default, help and choices (JSON and text), the core's
    tolerance options beside them; installed plugins list exactly what their plugin_options declares."""
    with registered((ScaleWeights(), "scale")):
        result = invoke("plugins", "--json")
        text = invoke("plugins")
        pm = edgeplug.load_plugins()
        declared = {
            name: declared_by(pm.get_plugin(name))
            for name in ("fuse", "quant", "prune", "neon", "trt", "security")
        }
    assert result.exit_code == 0 and text.exit_code == 0, result.output + text.output
    listed = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
    assert listed["core"]["options"] == {} and "load_model" in listed["core"]["hooks"]
    scale = listed["scale"]
    assert {"plugin_options", "transform_graph"} <= set(scale["hooks"])
    assert scale["options"]["factor"] == {
        "type": "float",
        "default": 1.0,
        "help": "multiply float weights by this",
        "choices": None,
    }
    assert scale["options"]["min_cosine"]["type"] == "float"  # the core's tolerance options, for every plugin
    assert "  -o scale.factor=1.0  (float) multiply float weights by this" in text.stdout.splitlines()
    for name, options in declared.items():
        shown = listed[name]["options"]
        for key, option in options.items():
            assert shown[key]["type"] == option.type and shown[key]["help"] == option.help, (name, key)
            assert shown[key]["choices"] == (list(option.choices) if option.choices else None), (name, key)
            if isinstance(option.default, (bool, int, float, str, type(None))):
                assert shown[key]["default"] == option.default, (name, key)
    assert listed["fuse"]["options"]["target"]["choices"] == ["onnx", "onnxruntime"]
    assert "  -o fuse.target=onnx  (str [onnx|onnxruntime]) " in text.stdout


def test_infer_without_guards(example_model, example_test_data, tmp_path):
    out = tmp_path / "out.npz"
    result = invoke("infer", example_model, "--input", example_test_data, "--output", out, "--json")
    assert result.exit_code == 0, result.output
    logits = np.load(out)["logits"]
    labels = np.load(example_test_data)["labels"]
    assert np.mean(logits.argmax(1) == labels) > 0.95


class Doubler:
    """A guard that runs the model itself and scales the result: proves guards wrap request.run."""

    @hookimpl(wrapper=True)
    def guard_inference(self, request):
        original = request.run
        request.run = lambda inputs: {k: v * 2 for k, v in original(inputs).items()}
        result = yield
        result.flags["doubled"] = True
        return result


class Refuser:
    @hookimpl(wrapper=True)
    def guard_inference(self, request):
        if float(np.max(next(iter(request.inputs.values())))) > 0.5:
            raise edgeplug.GuardRefusal("input x: values above 0.5 are refused")
        return (yield)


def test_guards_wrap_the_run_and_only_selected_ones_run(example_model, example_test_data):
    with registered((Doubler(), "doubler")):
        plain = edgeplug.infer(example_model, example_test_data)
        guarded = edgeplug.infer(example_model, example_test_data, guards=["doubler"])
    assert isinstance(guarded, InferenceResult)
    assert guarded.flags == {"doubled": True} and plain.flags == {}
    np.testing.assert_allclose(guarded.outputs["logits"], 2 * plain.outputs["logits"], rtol=1e-6)


def test_guard_refusal_is_exit_2(example_model, example_test_data):
    with registered((Refuser(), "refuser")):
        result = invoke("infer", example_model, "--input", example_test_data, "--guard", "refuser")
    assert result.exit_code == 2
    assert result.output.strip() == "edgeplug: error: input x: values above 0.5 are refused"


def test_infer_refuses_mismatched_inputs_and_unknown_guards(example_model, tmp_path):
    npz = tmp_path / "x.npz"
    np.savez(npz, wrong=np.zeros((1, 1, 8, 8), np.float32))
    assert invoke("infer", example_model, "--input", npz).exit_code == 2
    with pytest.raises(edgeplug.OptionError):
        edgeplug.infer(example_model, {"input": np.zeros((1, 1, 8, 8), np.float32)}, guards=["nope"])


def test_bench_takes_inputs_for_dynamic_dimensions(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S"])],
    )
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    refused = invoke("bench", path, "--runs", "3")
    assert refused.exit_code == 2
    assert "dynamic dimension" in refused.output and "pass --inputs" in refused.output
    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.ones((2, 7), np.float32))
    ok = invoke("bench", path, "--runs", "3", "--inputs", npz, "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)[0]["p50_ms"] > 0


def test_infer_runs_the_recorded_artifact(tiny_model, tmp_path):
    from .plugins_for_tests import ExternalData

    x = np.random.default_rng(0).random((3, 3, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    with registered((ExternalData(), "ext")):
        # offset 0: the artifact passes verification at run time; the runner adds the offset at infer time
        ran = invoke("run", tiny_model, "--plugins", "ext", "--output-dir", tmp_path / "out")
        assert ran.exit_code == 0, ran.output
        final = tmp_path / "out" / "tiny.onnx"
        plain = edgeplug.infer(final, tmp_path / "x.npz")
        compiled = edgeplug.infer(final, tmp_path / "x.npz", artifact=True)
        assert compiled.outputs["logits"].shape == (3, 5)
        np.testing.assert_allclose(compiled.outputs["logits"], plain.outputs["logits"], rtol=1e-5, atol=1e-6)
        sidecar_path = tmp_path / "out" / "tiny.edgeplug.json"
        sidecar = json.loads(sidecar_path.read_text())
        assert sidecar["artifact"]["paths"] == ["external/model.onnx", "external/weights.bin"]
        # proof that the artifact's runner, not onnxruntime on the .onnx, served the request
        sidecar["artifact"]["info"]["offset"] = 0.5
        sidecar_path.write_text(json.dumps(sidecar))
        shifted = edgeplug.infer(final, tmp_path / "x.npz", artifact=True)
        np.testing.assert_allclose(
            shifted.outputs["logits"], plain.outputs["logits"] + 0.5, rtol=1e-5, atol=1e-5
        )
        weights = tmp_path / "out" / "external" / "weights.bin"
        weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x80\x3f")
        tampered = invoke("infer", final, "--input", tmp_path / "x.npz", "--artifact")
    assert tampered.exit_code == 2
    assert "does not match its recorded sha256" in tampered.output
    missing = invoke("infer", tiny_model, "--input", tmp_path / "x.npz", "--artifact")
    assert missing.exit_code == 2 and "records no compiled artifact" in missing.output
