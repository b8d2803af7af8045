"""`edgeplug plugins`, `inspect`, `bench`, `infer` and guards."""

from __future__ import annotations

import json

import edgeplug
import numpy as np
import pytest
from click.testing import CliRunner
from edgeplug import InferenceResult, hookimpl
from edgeplug.cli import main

from ..conftest import registered


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
    assert rows[0]["speedup_p50"] == 1.0
    assert all(r["p50_ms"] > 0 and r["p90_ms"] >= r["p50_ms"] for r in rows)


def test_bench_refuses_a_broken_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage")
    assert invoke("bench", bad).exit_code == 2


def test_plugins_lists_options():
    result = invoke("plugins", "--json")
    assert result.exit_code == 0
    names = [p["name"] for p in json.loads(result.stdout)["plugins"]]
    assert "core" in names


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
