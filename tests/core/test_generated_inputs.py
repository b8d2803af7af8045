"""Issue 17, item 3: inputs generated from the model's spec respect the value constraints of the
operators they feed (a non-zero integer divisor, axes in range, pads and repeats the op accepts, a shape
that fits the data), or the run is refused with a sentence naming the input to supply with --data; and
one-sample data is enough for a step that needs no calibration.

Each model is built here with onnx.helper and run through `--plugins fuse` with no --data: exit 0 and
the final model's outputs equal onnxruntime's on the original for the generated inputs, or exit 2 with
the sentence."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from edgeplug import DataError, Model, RunContext, hookimpl
from edgeplug import generated_inputs as generated_module
from edgeplug.cli import main
from edgeplug.data import GENERATED_SAMPLES, load_data
from edgeplug.generated_inputs import generate_inputs, value_plans
from onnx import TensorProto, helper

from ..conftest import conv_net, registered

pytest.importorskip("edgeplug_fuse", reason="the cases run through the fuse plugin")

V = helper.make_tensor_value_info
F, I32, I64, B, S = (
    TensorProto.FLOAT,
    TensorProto.INT32,
    TensorProto.INT64,
    TensorProto.BOOL,
    TensorProto.STRING,
)


def model_of(
    nodes: Sequence[onnx.NodeProto], inputs: Sequence, outputs: Sequence, opset: int = 18
) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "case", list(inputs), list(outputs))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def out(name: str, elem: int, rank: int) -> onnx.ValueInfoProto:
    """An output of known rank and unknown sizes (they depend on the generated values)."""
    return V(name, elem, [f"{name}{i}" for i in range(rank)])


CASES = {
    "pad_with_a_pads_input": model_of(
        [helper.make_node("Pad", ["x", "pads"], ["y"])],
        [V("x", F, [1, 3, 4]), V("pads", I64, [6])],
        [out("y", F, 3)],
    ),
    "pad_with_axes_input": model_of(
        [helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"])],
        [V("x", F, [2, 3, 4]), V("pads", I64, [2]), V("axes", I64, [1])],
        [out("y", F, 3)],
    ),
    "constant_of_shape": model_of(
        [helper.make_node("ConstantOfShape", ["shape"], ["y"], value=helper.make_tensor("v", F, [1], [3.0]))],
        [V("shape", I64, [3])],
        [out("y", F, 3)],
    ),
    "reduce_with_an_axes_input": model_of(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
        [V("x", F, [2, 3, 4]), V("axes", I64, [2])],
        [out("y", F, 1)],
    ),
    "reduce_max_with_axes_and_keepdims": model_of(
        [helper.make_node("ReduceMax", ["x", "axes"], ["y"], keepdims=1)],
        [V("x", F, [2, 3, 4]), V("axes", I64, [1])],
        [out("y", F, 3)],
    ),
    "bool_reduce_max": model_of(
        [helper.make_node("ReduceMax", ["x"], ["y"], keepdims=1)],
        [V("x", B, [2, 3])],
        [out("y", B, 2)],
        opset=20,
    ),
    "div_by_an_int_input": model_of(
        [helper.make_node("Div", ["a", "b"], ["y"])],
        [V("a", I32, [1, 4]), V("b", I32, [1, 4])],
        [V("y", I32, [1, 4])],
    ),
    "mod_by_an_int_input_through_a_cast": model_of(
        [helper.make_node("Cast", ["b"], ["b64"], to=I64), helper.make_node("Mod", ["a", "b64"], ["y"])],
        [V("a", I64, [1, 4]), V("b", I32, [1, 4])],
        [V("y", I64, [1, 4])],
    ),
    "reshape_with_a_shape_input": model_of(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        [V("x", F, [2, 3, 4]), V("shape", I64, [2])],
        [out("y", F, 2)],
    ),
    "tile": model_of(
        [helper.make_node("Tile", ["x", "repeats"], ["y"])],
        [V("x", F, [2, 3]), V("repeats", I64, [2])],
        [out("y", F, 2)],
    ),
    "expand": model_of(
        [helper.make_node("Expand", ["x", "shape"], ["y"])],
        [V("x", F, [2, 3]), V("shape", I64, [3])],
        [out("y", F, 3)],
    ),
    "unsqueeze": model_of(
        [helper.make_node("Unsqueeze", ["x", "axes"], ["y"])],
        [V("x", F, [2, 3]), V("axes", I64, [2])],
        [out("y", F, 4)],
    ),
    "squeeze": model_of(
        [helper.make_node("Squeeze", ["x", "axes"], ["y"])],
        [V("x", F, [2, 1, 3]), V("axes", I64, [1])],
        [out("y", F, 2)],
    ),
    "split": model_of(
        [helper.make_node("Split", ["x", "split"], ["y", "z"], axis=1)],
        [V("x", F, [2, 5]), V("split", I64, [2])],
        [out("y", F, 2), out("z", F, 2)],
    ),
    "gather_on_an_axis_of_one": model_of(
        [helper.make_node("Gather", ["x", "i"], ["y"], axis=1)],
        [V("x", F, [2, 1]), V("i", I64, [3])],
        [out("y", F, 2)],
    ),
    "resize_with_a_scales_input": model_of(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")],
        [V("x", F, [1, 1, 4, 4]), V("scales", F, [4])],
        [out("y", F, 4)],
    ),
    "topk": model_of(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"])],
        [V("x", F, [2, 5]), V("k", I64, [1])],
        [out("v", F, 2), out("i", I64, 2)],
    ),
    "string_input": model_of(
        [helper.make_node("StringNormalizer", ["x"], ["y"], case_change_action="LOWER", locale="C")],
        [V("x", S, [3])],
        [out("y", S, 1)],
    ),
}


def edgeplug(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def ort_outputs(path: Path, sample: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, sample)


@pytest.mark.parametrize("case", sorted(CASES))
def test_generated_inputs_run_through_fuse_and_match_onnxruntime(tmp_path, case):
    path = tmp_path / f"{case}.onnx"
    onnx.save(CASES[case], path)
    code, output = edgeplug("run", path, "--plugins", "fuse", "--output-dir", tmp_path / "out", "--quiet")
    assert code == 0, output
    final = tmp_path / "out" / f"{case}.onnx"
    samples = load_data(None, Model.load(path), seed=0).validation  # what the run verified on
    assert len(samples) == GENERATED_SAMPLES
    for sample in samples:
        for want, got in zip(ort_outputs(path, sample), ort_outputs(final, sample)):
            np.testing.assert_array_equal(got, want)


def test_integer_divisors_are_never_zero():
    model = Model(CASES["div_by_an_int_input"])
    for sample in generate_inputs(model, 64, seed=3):
        assert np.all(sample["b"] != 0)
    assert {int(v) for s in generate_inputs(model, 64, seed=3) for v in s["a"].ravel()} == {0, 1}


def test_axes_are_in_range_and_distinct():
    model = Model(CASES["reduce_with_an_axes_input"]).infer_shapes()
    axes = generate_inputs(model, 2, seed=0)[0]["axes"]
    assert len(set(axes.tolist())) == 2 and all(-3 <= a < 3 for a in axes)


def refused(case: onnx.ModelProto, tmp_path: Path) -> str:
    path = tmp_path / "case.onnx"
    onnx.save(case, path)
    code, output = edgeplug("run", path, "--plugins", "fuse", "--output-dir", tmp_path / "out")
    lines = [line for line in output.splitlines() if line.startswith("edgeplug: error:")]
    assert code == 2 and len(lines) == 1, output
    return lines[0]


def test_a_shape_input_that_cannot_be_generated_names_the_input_to_supply(tmp_path):
    case = model_of(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], allowzero=1, name="to_3d")],
        [V("x", F, [2, 3, 4]), V("shape", I64, [3])],
        [out("y", F, 3)],
        opset=18,
    )
    line = refused(case, tmp_path)
    assert (
        "input shape feeds Reshape 'to_3d''s shape" in line
        and "pass real inputs with --data FILE.npz" in line
    )


def test_squeeze_axes_without_a_size_one_dimension_name_the_input(tmp_path):
    case = model_of(
        [helper.make_node("Squeeze", ["x", "axes"], ["y"], name="sq")],
        [V("x", F, [2, 3]), V("axes", I64, [1])],
        [out("y", F, 1)],
    )
    line = refused(case, tmp_path)
    assert "input axes feeds Squeeze 'sq''s axes" in line and "--data" in line


def test_one_input_feeding_two_different_constraints_is_refused():
    case = model_of(
        [helper.make_node("Tile", ["x", "r"], ["t"]), helper.make_node("Reshape", ["x", "r"], ["y"])],
        [V("x", F, [2, 3]), V("r", I64, [2])],
        [out("t", F, 2), out("y", F, 2)],
    )
    with pytest.raises(DataError, match="input r feeds both"):
        value_plans(Model(case).infer_shapes())


def test_inputs_without_constraints_get_no_plan(tmp_path):
    assert value_plans(Model(conv_net())) == {}


# -- one sample --------------------------------------------------------------------------------------------------
@pytest.fixture
def one_sample(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "m.onnx"
    onnx.save(conv_net(), model)
    data = tmp_path / "one.npz"
    np.savez(data, x=np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32))
    return model, data


def test_one_sample_is_enough_for_a_step_without_calibration(tmp_path, one_sample):
    model, data = one_sample
    code, output = edgeplug(
        "run", model, "--plugins", "fuse", "--data", data, "--output-dir", tmp_path / "out"
    )
    assert code == 0, output
    summary = json.loads((tmp_path / "out" / "report.json").read_text())["data"]
    assert (summary["validation_samples"], summary["calibration_samples"]) == (1, 0)
    assert "1 sample, used for validation" in summary["description"]


def test_one_sample_dataset_refuses_calibration_with_a_sentence(one_sample):
    model, data = one_sample
    dataset = load_data(data, Model.load(model))
    with pytest.raises(
        DataError, match=r"quant: static calibration needs calibration samples, but .*one\.npz"
    ):
        dataset.require_calibration("quant", "static calibration")


class Calibrates:
    @hookimpl
    def transform_graph(self, model: Model, ctx: RunContext) -> None:
        ctx.require_real_data("static calibration")


def test_a_step_that_calibrates_on_one_sample_is_refused(tmp_path, one_sample):
    model, data = one_sample
    with registered((Calibrates(), "calibrates")):
        code, output = edgeplug(
            "run", model, "--plugins", "calibrates", "--data", data, "--output-dir", tmp_path / "o"
        )
    assert code == 2, output
    assert "calibrates: static calibration needs calibration samples" in output


def test_generated_inputs_are_checked_against_memory_before_allocating(monkeypatch):
    monkeypatch.setattr(generated_module, "available_memory", lambda: 10_000)
    wide = model_of([helper.make_node("Relu", ["x"], ["y"])], [V("x", F, [1, 4096])], [V("y", F, [1, 4096])])
    with pytest.raises(
        DataError, match=r"generated inputs would take 256\.0 KiB \(16 samples of x 1x4096 float32\)"
    ):
        load_data(None, Model(wide))
