"""Graphs fuse does not (fully) understand are left valid and computing what they computed: recent opsets
(Attention, RotaryEmbedding, their function expansions), local functions, If/Loop/Scan bodies, causal
masks and convolutions, deep chains. Each goes through `edgeplug run --plugins fuse` without data (inputs
generated from the spec): exit 0, never an invalid model, outputs equal to onnxruntime's on the original."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.inliner
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from edgeplug.cli import main
from edgeplug_fuse import folding, order, patterns, plugin
from onnx import TensorProto, helper

from .graphs import ATOL, RTOL, ops, tensor

FLOAT = TensorProto.FLOAT
RNG = np.random.default_rng(7)


def weights(*shape: int) -> np.ndarray:
    return RNG.normal(0, 0.3, shape).astype(np.float32)


def value(name: str, shape: list[int] | None, dtype: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def build(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[str | onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] = (),
    opset: int = 23,
    functions: list[onnx.FunctionProto] = (),
    domains: tuple[str, ...] = (),
) -> onnx.ModelProto:
    """A checked model; outputs given by name get their types from shape inference."""
    declared = [helper.make_empty_tensor_value_info(o) if isinstance(o, str) else o for o in outputs]
    graph = helper.make_graph(nodes, "g", inputs, declared)
    graph.initializer.extend(initializers)
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    model = helper.make_model(graph, opset_imports=imports, functions=list(functions))
    model.ir_version = 10
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.output}
    for out, given in zip(model.graph.output, outputs):
        if isinstance(given, str):
            out.CopyFrom(inferred[out.name])
    onnx.checker.check_model(model, full_check=True)
    return model


def expansion(op: str, opset: int, node: onnx.NodeProto, types: list[onnx.TypeProto]) -> onnx.FunctionProto:
    """ONNX's own function body for `node` (a context-dependent function), as local function
    `local.Expanded<op>` with the formal inputs and outputs the body uses."""
    schema = onnx.defs.get_schema(op, opset, "")
    raw = schema.get_context_dependent_function_with_opset_version(
        opset, node.SerializeToString(), [t.SerializeToString() for t in types]
    )
    function = onnx.FunctionProto()
    function.ParseFromString(raw)
    function.domain, function.name = "local", f"Expanded{op}"
    read = {name for n in function.node for name in n.input}
    made = {name for n in function.node for name in n.output}
    formal_in = [name for name in function.input if name in read]
    formal_out = [name for name in function.output if name in made]
    del function.input[:], function.output[:], function.attribute[:]
    function.input.extend(formal_in)
    function.output.extend(formal_out)
    return function


def attention_models(causal: bool, opset: int = 23) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """3-D Attention (2 heads, q length 4, kv length 6) written as a call to its ONNX expansion, and the
    same with the expansion inlined (what an exporter that expands functions writes)."""
    shapes = {"Q": [1, 4, 16], "K": [1, 6, 16], "V": [1, 6, 16]}
    attrs = {"q_num_heads": 2, "kv_num_heads": 2, "is_causal": int(causal)}
    standard = helper.make_node("Attention", list(shapes), ["Y"], **attrs)
    function = expansion(
        "Attention", opset, standard, [helper.make_tensor_type_proto(FLOAT, s) for s in shapes.values()]
    )
    call = helper.make_node(function.name, list(shapes), ["Y"], domain="local")
    inputs = [value(name, shape) for name, shape in shapes.items()]
    with_function = build([call], inputs, ["Y"], opset=opset, functions=[function], domains=("local",))
    return with_function, onnx.inliner.inline_local_functions(with_function)


# -- the models ------------------------------------------------------------------------------------------


def attention_opset23() -> onnx.ModelProto:
    """Projections (MatMul+Add), ONNX Attention with a boolean mask, Identity, output projection."""
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Attention", ["q", "k", "v", "mask"], ["a"], q_num_heads=2, kv_num_heads=2),
        helper.make_node("Identity", ["a"], ["a_id"]),
        helper.make_node("MatMul", ["a_id", "wo"], ["o"]),
        helper.make_node("Add", ["o", "bo"], ["y"]),
    ]
    inits = [tensor(n, weights(16, 16)) for n in ("wq", "wk", "wv", "wo")] + [tensor("bo", weights(16))]
    return build(nodes, [value("x", [1, 4, 16]), value("mask", [4, 4], TensorProto.BOOL)], ["y"], inits)


def causal_attention_opset23() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Constant", [], ["scale"], value=helper.make_tensor("s", FLOAT, [], [0.5])),
        helper.make_node("Mul", ["q", "scale"], ["qs"]),
        helper.make_node("Attention", ["qs", "k", "v"], ["y"], is_causal=1, scale=1.0),
    ]
    shape = [1, 2, 4, 8]
    return build(nodes, [value("q", shape), value("k", shape), value("v", shape)], ["y"])


def rotary_opset23() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Identity", ["x"], ["x_id"]),
        helper.make_node("RotaryEmbedding", ["x_id", "cos", "sin", "positions"], ["y"]),
    ]
    inits = [tensor("cos", weights(16, 4)), tensor("sin", weights(16, 4))]
    inputs = [value("x", [1, 2, 4, 8]), value("positions", [1, 4], TensorProto.INT64)]
    return build(nodes, inputs, ["y"], inits)


def rotary_expanded() -> onnx.ModelProto:
    shapes = {"x": ([1, 2, 4, 8], FLOAT), "cos": ([1, 4, 4], FLOAT), "sin": ([1, 4, 4], FLOAT)}
    standard = helper.make_node("RotaryEmbedding", list(shapes), ["y"])
    types = [helper.make_tensor_type_proto(t, s) for s, t in shapes.values()]
    function = expansion("RotaryEmbedding", 23, standard, types)
    call = helper.make_node(function.name, list(shapes), ["y"], domain="local")
    inputs = [value(name, shape, dtype) for name, (shape, dtype) in shapes.items()]
    model = build([call], inputs, ["y"], functions=[function], domains=("local",))
    return onnx.inliner.inline_local_functions(model)


def causal_mask_attention() -> onnx.ModelProto:
    """Scaled dot-product attention with a causal mask made of Shape -> ConstantOfShape -> Trilu -> Where."""
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Shape", ["s"], ["s_shape"], start=1),
        helper.make_node(
            "ConstantOfShape",
            ["s_shape"],
            ["ones"],
            value=helper.make_tensor("v", TensorProto.BOOL, [1], [True]),
        ),
        helper.make_node("Trilu", ["ones"], ["lower"], upper=0),
        helper.make_node("Where", ["lower", "s", "minus_inf"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
        helper.make_node("Dropout", ["p"], ["p_out"]),
        helper.make_node("MatMul", ["p_out", "v"], ["y"]),
    ]
    inits = [tensor(n, weights(16, 16)) for n in ("wq", "wk", "wv")] + [tensor("minus_inf", np.float32(-1e9))]
    return build(nodes, [value("x", [1, 4, 16])], ["y"], inits)


def causal_conv_opset24() -> onnx.ModelProto:
    """Left-padded (causal) Conv1d + BatchNorm in the graph, and the same conv as a local function."""
    body = [
        helper.make_node(
            "Constant",
            [],
            ["pads"],
            value=helper.make_tensor("p", TensorProto.INT64, [6], [0, 0, 2, 0, 0, 0]),
        ),
        helper.make_node("Pad", ["x", "pads"], ["padded"]),
        helper.make_node("Conv", ["padded", "w"], ["c"]),
        helper.make_node("Sigmoid", ["c"], ["g"]),
        helper.make_node("Mul", ["c", "g"], ["y"]),
    ]
    function = helper.make_function(
        "local", "CausalConv", ["x", "w"], ["y"], body, [helper.make_opsetid("", 24)]
    )
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["padded"]),
        helper.make_node("Conv", ["padded", "w1", "b1"], ["c1"]),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["n1"]),
        helper.make_node("CausalConv", ["n1", "w2"], ["y"], domain="local"),
    ]
    inits = [
        tensor("pads", np.array([0, 0, 2, 0, 0, 0], np.int64)),
        tensor("w1", weights(4, 4, 3)),
        tensor("b1", weights(4)),
        tensor("gamma", RNG.uniform(0.5, 1.5, 4).astype(np.float32)),
        tensor("beta", weights(4)),
        tensor("mean", weights(4)),
        tensor("var", RNG.uniform(0.5, 1.5, 4).astype(np.float32)),
        tensor("w2", weights(4, 4, 3)),
    ]
    return build(
        nodes, [value("x", [1, 4, 16])], ["y"], inits, opset=24, functions=[function], domains=("local",)
    )


def if_model() -> onnx.ModelProto:
    """If whose branches read outer tensors made by an Identity and a Constant node the rewrites remove."""
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["x_id"], ["t0"]), helper.make_node("Add", ["t0", "c"], ["t"])],
        "then",
        [],
        [value("t", [2, 3])],
    )
    else_branch = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], ["one"], value=onnx.numpy_helper.from_array(np.ones((2, 3), np.float32))
            ),
            helper.make_node("Sub", ["x_id", "one"], ["e"]),
        ],
        "else",
        [],
        [value("e", [2, 3])],
    )
    nodes = [
        helper.make_node("Identity", ["x"], ["x_id"]),
        helper.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(weights(2, 3))),
        helper.make_node("ReduceSum", ["x_id"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["branch"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Identity", ["branch"], ["y"]),
    ]
    return build(nodes, [value("x", [2, 3])], ["y"], [tensor("zero", np.float32(0))])


def if_reading_a_duplicate_initializer() -> onnx.ModelProto:
    """The branches read `w1`; the main graph reads it and `w2`, which holds the same values: merging the
    duplicates must not take `w1` away from the branches."""
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    then_branch = helper.make_graph(
        [helper.make_node("Add", ["x", "w1"], ["t"])], "then", [], [value("t", [2, 3])]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Sub", ["x", "w1"], ["e"])], "else", [], [value("e", [2, 3])]
    )
    nodes = [
        helper.make_node("Mul", ["x", "w2"], ["a"]),
        helper.make_node("Mul", ["a", "w1"], ["b"]),
        helper.make_node("ReduceSum", ["b"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch),
    ]
    inits = [tensor("w2", w), tensor("w1", w.copy()), tensor("zero", np.float32(0))]
    return build(nodes, [value("x", [2, 3])], ["y"], inits, opset=17)


def loop_model() -> onnx.ModelProto:
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["acc"], ["acc_id"]),
            helper.make_node("Add", ["acc_id", "step"], ["acc_out"]),
        ],
        "body",
        [value("i", [], TensorProto.INT64), value("cond_in", [], TensorProto.BOOL), value("acc", [2, 3])],
        [value("cond_out", [], TensorProto.BOOL), value("acc_out", [2, 3])],
    )
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["step"]),  # read by the body from the outer scope
        helper.make_node("Loop", ["trips", "true", "x"], ["y"], body=body),
    ]
    inits = [tensor("trips", np.int64(3)), tensor("true", np.bool_(True)), tensor("two", np.float32(2))]
    return build(nodes, [value("x", [2, 3])], [value("y", [2, 3])], inits)


def scan_model() -> onnx.ModelProto:
    body = helper.make_graph(
        [
            helper.make_node("Add", ["state", "row"], ["state_out"]),
            helper.make_node("Identity", ["state_out"], ["row_out"]),
        ],
        "body",
        [value("state", [3]), value("row", [3])],
        [value("state_out", [3]), value("row_out", [3])],
    )
    nodes = [
        helper.make_node("Identity", ["x"], ["x_id"]),
        helper.make_node("Scan", ["start", "x_id"], ["y", "rows"], body=body, num_scan_inputs=1),
    ]
    return build(nodes, [value("x", [4, 3])], ["y", "rows"], [tensor("start", np.zeros(3, np.float32))])


def function_with_attributes() -> onnx.ModelProto:
    """A local function with an attribute reference, a default, value_info and metadata (IR 10)."""
    body = [
        helper.make_node("Constant", [], ["a"], value_float=2.0),
        helper.make_node("Mul", ["x", "a"], ["xa"]),
        helper.make_node("LeakyRelu", ["xa"], ["y"]),
    ]
    body[2].attribute.append(
        onnx.AttributeProto(name="alpha", type=onnx.AttributeProto.FLOAT, ref_attr_name="slope")
    )
    function = helper.make_function(
        "local",
        "Scaled",
        ["x"],
        ["y"],
        body,
        [helper.make_opsetid("", 18)],
        attribute_protos=[helper.make_attribute("slope", 0.2)],
        doc_string="doubles, then leaky relu",
    )
    function.value_info.append(value("xa", [2, 3]))
    function.metadata_props.add(key="origin", value="test")
    nodes = [
        helper.make_node("Identity", ["x"], ["x_id"]),
        helper.make_node("Scaled", ["x_id"], ["f"], domain="local", slope=0.3),
        helper.make_node("Add", ["f", "bias"], ["y"]),
    ]
    model = build(
        nodes,
        [value("x", [2, 3])],
        ["y"],
        [tensor("bias", weights(2, 3))],
        opset=18,
        functions=[function],
        domains=("local",),
    )
    model.graph.metadata_props.add(key="graph", value="kept")
    return model


def add_chain(length: int = 5000) -> onnx.ModelProto:
    """`length` Adds in a row, every 10th fed by a Constant node and followed by an Identity."""
    nodes, current, inits = [], "x", [tensor("step", np.full((2, 3), 1e-3, np.float32))]
    for i in range(length):
        operand = "step"
        if i % 10 == 0:
            operand = f"c{i}"
            nodes.append(
                helper.make_node(
                    "Constant",
                    [],
                    [operand],
                    value=onnx.numpy_helper.from_array(np.full((2, 3), 1e-3, np.float32)),
                )
            )
        nodes.append(helper.make_node("Add", [current, operand], [f"a{i}"]))
        current = f"a{i}"
        if i % 10 == 5:
            nodes.append(helper.make_node("Identity", [current], [f"i{i}"]))
            current = f"i{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    return build(nodes, [value("x", [2, 3])], ["y"], inits, opset=17)


# -- running them ----------------------------------------------------------------------------------------


def run_fuse(
    model: onnx.ModelProto, tmp_path: Path, *options: str
) -> tuple[dict[str, Any], onnx.ModelProto | None]:
    """`edgeplug run model.onnx --plugins fuse` without data: exit 0; the fuse step's report entry and the
    written model when the step applied."""
    source = tmp_path / "model.onnx"
    onnx.save(model, source)
    out = tmp_path / "out"
    args = ["run", str(source), "--plugins", "fuse", "--output-dir", str(out), "--quiet"]
    for option in options:
        args += ["-o", option]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    entry = json.loads((out / "report.json").read_text())["steps"][0]
    assert entry["status"] in ("applied", "not_applicable"), entry
    written = onnx.load(str(out / "model.onnx")) if entry["status"] == "applied" else None
    return entry, written


def feeds_of(model: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in model.graph.input:
        kind = spec.type.tensor_type
        shape = [d.dim_value or 1 for d in kind.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(kind.elem_type)
        if dtype == np.bool_:
            feeds[spec.name] = rng.random(shape) < 0.7
        elif np.issubdtype(dtype, np.integer):
            feeds[spec.name] = rng.integers(0, 4, shape).astype(dtype)
        else:
            feeds[spec.name] = rng.normal(0, 1, shape).astype(dtype)
    return feeds


def assert_valid_and_equal(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """onnx.checker's full check passes and onnxruntime gives the original's outputs."""
    onnx.checker.check_model(after, full_check=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sessions = [
        ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for m in (before, after)
    ]
    for seed in range(3):
        feeds = feeds_of(before, seed)
        ref, got = (dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds))) for s in sessions)
        assert ref.keys() == got.keys()
        for name in ref:
            np.testing.assert_allclose(got[name], ref[name], rtol=RTOL, atol=ATOL, err_msg=name)


def skipped(entry: dict[str, Any]) -> str:
    return " ".join(entry["details"].get("skipped", []))


CASES: dict[str, Callable[[], onnx.ModelProto]] = {
    "attention_opset23": attention_opset23,
    "causal_attention_opset23": causal_attention_opset23,
    "rotary_opset23": rotary_opset23,
    "rotary_expanded": rotary_expanded,
    "attention_expanded": lambda: attention_models(causal=False)[1],
    "causal_attention_expanded": lambda: attention_models(causal=True)[1],
    "attention_expanded_opset24": lambda: attention_models(causal=True, opset=24)[1],
    "attention_as_local_function": lambda: attention_models(causal=True)[0],
    "causal_mask_attention": causal_mask_attention,
    "causal_conv_opset24": causal_conv_opset24,
    "if": if_model,
    "if_reading_a_duplicate_initializer": if_reading_a_duplicate_initializer,
    "loop": loop_model,
    "scan": scan_model,
    "function_with_attributes": function_with_attributes,
}


@pytest.mark.parametrize("name", list(CASES))
def test_fuse_leaves_a_valid_equal_model(tmp_path: Path, name: str) -> None:
    model = CASES[name]()
    entry, written = run_fuse(model, tmp_path)
    if written is not None:
        assert_valid_and_equal(model, written)
        assert "rolled back" not in skipped(entry), skipped(entry)


@pytest.mark.parametrize("name", ["attention_opset23", "rotary_opset23", "causal_attention_expanded"])
def test_with_onnxruntime_target_too(tmp_path: Path, name: str) -> None:
    model = CASES[name]()
    _, written = run_fuse(model, tmp_path, "fuse.target=onnxruntime")
    if written is not None:
        assert_valid_and_equal(model, written)


def test_opset23_attention_is_kept_and_reported(tmp_path: Path) -> None:
    model = attention_opset23()
    entry, written = run_fuse(model, tmp_path)
    assert entry["status"] == "applied"
    assert ops(written)["Attention"] == 1 and ops(written)["Identity"] == 0
    assert ops(written)["Gemm"] == 0  # the 3-D projections are no Gemm candidates
    assert "Attention" in skipped(entry)


def test_encoder_fusion_is_not_run_next_to_onnx_attention(tmp_path: Path) -> None:
    entry, written = run_fuse(attention_opset23(), tmp_path, "fuse.transformer=bert")
    assert "transformer encoder fusion not run" in skipped(entry)
    assert entry["details"]["transformer"]["fused"] == {}
    assert {n.domain for n in written.graph.node} == {""}


def test_expanded_attention_folds_its_shape_arithmetic(tmp_path: Path) -> None:
    """The expansion's Shape(start, end) nodes fold to the right values (graphsurgeon's own shape folding
    ignores start/end and wrote invalid models), and the causal one finishes (it used to recurse until
    RecursionError after minutes)."""
    model = attention_models(causal=True)[1]
    started = time.perf_counter()
    entry, written = run_fuse(model, tmp_path)
    assert time.perf_counter() - started < 60
    assert entry["status"] == "applied"
    assert ops(written)["Shape"] == 0
    assert entry["details"]["constant_nodes_folded"] > 10
    assert len(written.graph.node) < len(model.graph.node) / 2
    assert_valid_and_equal(model, written)


def test_local_functions_are_kept_verbatim(tmp_path: Path) -> None:
    model = function_with_attributes()
    entry, written = run_fuse(model, tmp_path)
    assert entry["status"] == "applied"  # the Identity before the call is removed
    assert list(written.functions) == list(model.functions)  # value_info, metadata, attribute defaults
    assert list(written.graph.metadata_props) == list(model.graph.metadata_props)
    assert {(i.domain, i.version) for i in written.opset_import} == {("", 18), ("local", 1)}
    assert "local.Scaled" in skipped(entry)


def test_function_call_keeps_its_batchnorm_reason(tmp_path: Path) -> None:
    """The BN after the Conv folds; the Conv inside the function stays as written."""
    model = causal_conv_opset24()
    entry, written = run_fuse(model, tmp_path)
    assert entry["details"]["batchnorm_folded"] == {"Conv": 1}
    assert list(written.functions) == list(model.functions)
    assert "local.CausalConv" in skipped(entry)


@pytest.mark.parametrize(
    "build_model", [if_model, if_reading_a_duplicate_initializer, loop_model, scan_model]
)
def test_control_flow_bodies_are_untouched(
    tmp_path: Path, build_model: Callable[[], onnx.ModelProto]
) -> None:
    model = build_model()
    entry, written = run_fuse(model, tmp_path)
    assert "subgraphs of 1" in skipped(entry)
    if written is None:
        return
    assert bodies_of(written) == bodies_of(model)


def bodies_of(model: onnx.ModelProto) -> dict[str, list[tuple[str, list[onnx.NodeProto], list[str]]]]:
    """The nodes and outputs of every control-flow body (value_info aside: the core's shape inference adds
    it on load)."""
    return {
        n.op_type: [(a.name, list(a.g.node), [o.name for o in a.g.output]) for a in n.attribute if a.g.node]
        for n in model.graph.node
        if n.op_type in ("If", "Loop", "Scan")
    }


def test_if_reading_removed_nodes_outputs(tmp_path: Path) -> None:
    """The Identity and Constant node whose outputs the branches read are rewritten; the names stay."""
    model = if_model()
    entry, written = run_fuse(model, tmp_path)
    assert entry["status"] == "applied"
    names = {o for n in written.graph.node for o in n.output} | {t.name for t in written.graph.initializer}
    assert {"x_id", "c"} <= names  # the Constant node became an initializer, still in the main graph
    assert ops(written)["Identity"] == 1  # x_id's stays (its producer is the graph input); y's goes
    assert ops(written)["Constant"] == 0


def test_deep_chain_without_recursion_error(tmp_path: Path) -> None:
    model = add_chain(5000)
    started = time.perf_counter()
    entry, written = run_fuse(model, tmp_path)
    seconds = time.perf_counter() - started
    assert seconds < 120, f"{seconds:.0f} s"
    assert entry["status"] == "applied"
    assert entry["details"]["constant_nodes_to_initializers"] == 500
    assert entry["details"]["identity_removed"] == 501
    assert ops(written) == {"Add": 5000}
    assert_valid_and_equal(model, written)


# -- the mechanisms, one by one ------------------------------------------------------------------------


def test_toposort_is_iterative_and_stable() -> None:
    graph = gs.import_onnx(add_chain(5000))
    expected = list(graph.nodes)
    order.toposort(graph)
    assert all(a is b for a, b in zip(graph.nodes, expected))  # an ordered graph keeps its order
    graph.nodes.reverse()  # graphsurgeon's recursive toposort ends in RecursionError here
    order.toposort(graph)
    assert len(graph.nodes) == len(expected)
    seen = {t.name for t in graph.inputs}
    for node in graph.nodes:
        assert all(isinstance(t, gs.Constant) or t.name in seen for t in node.inputs), node.name
        seen.update(t.name for t in node.outputs)


def test_shape_folding_honours_start_and_end() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["tail"], start=1),
        helper.make_node("Shape", ["x"], ["middle"], start=-2, end=-1),
        helper.make_node("Concat", ["tail", "middle"], ["dims"], axis=0),
        helper.make_node("Cast", ["dims"], ["dims_f"], to=FLOAT),
        helper.make_node("Add", ["x", "dims_f"], ["y"]),
    ]
    model = onnx.shape_inference.infer_shapes(build(nodes, [value("x", [2, 3, 4, 4])], ["y"]))
    graph = gs.import_onnx(model)
    folding.fold_constants(graph)
    assert [n.op for n in graph.nodes] == ["Add"]
    np.testing.assert_array_equal(graph.nodes[0].inputs[1].values, [3, 4, 4, 4])


def test_cast_pairs_on_integers_are_not_elided(tmp_path: Path) -> None:
    """int -> float -> Mul 0.5 -> int is floor(x / 2); graphsurgeon's shape-tensor cast elision made it x * 0."""
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=FLOAT),
        helper.make_node("Mul", ["xf", "half"], ["m"]),
        helper.make_node("Cast", ["m"], ["half_x"], to=TensorProto.INT64),
        helper.make_node("Identity", ["half_x"], ["y"]),
    ]
    model = build(
        nodes, [value("x", [4], TensorProto.INT64)], ["y"], [tensor("half", np.float32(0.5))], opset=17
    )
    entry, written = run_fuse(model, tmp_path)
    assert entry["status"] == "applied"
    assert_valid_and_equal(model, written)


def test_folding_falls_back_node_by_node() -> None:
    """A constant that onnxruntime cannot compute (bfloat16 Mul) leaves itself unfolded, quickly and without
    recursion; the float constant next to it still folds."""
    nodes = [
        helper.make_node("Add", ["a", "a"], ["a2"]),
        helper.make_node("Mul", ["b", "b"], ["b2"]),
        helper.make_node("Cast", ["b2"], ["b2f"], to=FLOAT),
        helper.make_node("Add", ["x", "a2"], ["xa"]),
        helper.make_node("Add", ["xa", "b2f"], ["y"]),
    ]
    b = onnx.helper.make_tensor("b", TensorProto.BFLOAT16, [3], [1.0, 2.0, 3.0])
    model = build(nodes, [value("x", [3])], ["y"], [tensor("a", np.ones(3, np.float32)), b])
    graph = gs.import_onnx(model)
    started = time.perf_counter()
    folding.fold_constants(graph)
    assert time.perf_counter() - started < 30
    assert [n.op for n in graph.nodes] == ["Mul", "Cast", "Add", "Add"]
    np.testing.assert_array_equal(graph.nodes[2].inputs[1].values, [2, 2, 2])


def test_a_pass_that_breaks_the_model_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The MatMul+Add rewrite made to write an invalid graph: it alone is dropped, the others apply."""
    original = plugin.cleanup.matmul_add_to_gemm

    def broken(graph: gs.Graph) -> int:
        count = original(graph)
        for node in graph.nodes:
            if node.op == "Gemm":
                node.attrs["transB"] = 7
                node.inputs.pop()
                node.inputs.append(gs.Variable("nowhere", dtype=np.float32))
        return count

    monkeypatch.setattr(plugin.cleanup, "matmul_add_to_gemm", broken)
    model = gemm_candidate()
    entry, written = run_fuse(model, tmp_path)
    assert entry["status"] == "applied"
    assert "pass matmul_add_to_gemm rolled back" in skipped(entry)
    assert entry["details"]["matmul_add_to_gemm"] == 0 and entry["details"]["identity_removed"] == 1
    assert ops(written)["Gemm"] == 0
    assert_valid_and_equal(model, written)


def test_a_pass_that_raises_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def raising(graph: gs.Graph) -> dict[str, int]:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(plugin.cleanup, "remove_passthrough", raising)
    model = gemm_candidate()
    entry, written = run_fuse(model, tmp_path)
    assert "pass passthrough_removal rolled back: RecursionError" in skipped(entry)
    assert entry["details"]["matmul_add_to_gemm"] == 1
    assert ops(written)["Identity"] == 1
    assert_valid_and_equal(model, written)


def gemm_candidate() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Identity", ["x"], ["x_id"]),
        helper.make_node("MatMul", ["x_id", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["y"]),
    ]
    return build(
        nodes, [value("x", [2, 8])], ["y"], [tensor("w", weights(8, 4)), tensor("b", weights(4))], opset=17
    )


def test_newer_op_versions_are_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Were BatchNormalization-15 newer than the fold was written for, the BN would stay, with the reason."""
    monkeypatch.setitem(patterns.REVIEWED_VERSIONS, "BatchNormalization", 9)
    model = causal_conv_opset24()
    entry, written = run_fuse(model, tmp_path)
    assert entry["details"]["batchnorm_folded"] == {}
    assert "BatchNormalization-15" in skipped(entry)
    if written is not None:
        assert ops(written)["BatchNormalization"] == 1
        assert_valid_and_equal(model, written)


def test_a_model_graphsurgeon_cannot_read_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreadable(model: Any) -> gs.Graph:
        raise TypeError("unsupported data type 'float4e2m1'")

    monkeypatch.setattr(plugin, "graph_of", unreadable)
    entry, written = run_fuse(gemm_candidate(), tmp_path)
    assert entry["status"] == "not_applicable" and written is None
    assert "onnx-graphsurgeon cannot read this model (TypeError" in skipped(entry)


def test_a_merged_initializer_stays_for_the_branches(tmp_path: Path) -> None:
    model = if_reading_a_duplicate_initializer()
    entry, written = run_fuse(model, tmp_path)
    assert entry["details"]["duplicate_initializers_merged"] == 1
    assert "w1" in {t.name for t in written.graph.initializer}
    assert_valid_and_equal(model, written)
