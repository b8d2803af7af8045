"""Structured channel pruning: graph consistency on residual, depthwise and Concat graphs, and accuracy
recovery by least-squares reconstruction on the trained example CNN."""

from __future__ import annotations

from pathlib import Path

import edgeplug
import numpy as np
import onnx
import pytest
from edgeplug_prune.settings import PruneSettings
from edgeplug_prune.structured import prune_channels
from onnx import TensorProto, helper, numpy_helper

from tests.prune.conftest import DIGITS, TEST_DATA, TRAIN_DATA, digits_accuracy, run_onnx


def _params(proto: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in proto.graph.initializer)


def _feed(proto: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    inp = proto.graph.input[0]
    shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    return {inp.name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def _channels(proto: onnx.ModelProto, op: str) -> list[tuple[str, tuple[int, ...], int]]:
    inits = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    out = []
    for node in proto.graph.node:
        if node.op_type == op:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            out.append((node.name, inits[node.input[1]], group))
    return out


@pytest.mark.parametrize("fixture", ["resnet_style", "mobilenet_style"])
def test_zoo_graph_shrinks_and_stays_consistent(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    path = request.getfixturevalue(fixture)
    result = edgeplug.optimize(
        path,
        ["prune"],
        output_dir=tmp_path,
        options={"prune": {"mode": "structured", "sparsity": 0.5, "min_cosine": 0.0}},
    )
    step = result.report["steps"][0]
    assert step["status"] == "applied"
    original = onnx.load(path)
    pruned = onnx.load(result.output_dir / path.name)
    onnx.checker.check_model(pruned, full_check=True)
    edgeplug.Model.load(result.output_dir / path.name)
    out = run_onnx(pruned.SerializeToString(), _feed(original))[0]
    ref = run_onnx(str(path), _feed(original))[0]
    assert out.shape == ref.shape and np.isfinite(out).all()
    assert _params(pruned) < 0.5 * _params(original)
    details = step["details"]
    assert details["totals"]["flops_after"] < 0.6 * details["totals"]["flops_before"]
    # residual streams: one group gathers every conv that writes into the same Add chain
    joint = [g for g in details["groups"] if len(g["producers"]) > 1]
    assert joint, "expected residual groups with several producers"
    assert any(g["kept"] < g["channels"] for g in joint), (
        "residual streams must be pruned jointly, not skipped"
    )
    # every Add still adds tensors of equal channel counts (checked by shape inference), and every depthwise
    # conv's group equals its channel count
    for name, shape, group in _channels(pruned, "Conv"):
        if group > 1:
            assert shape[1] == 1 and shape[0] == group, name
    if fixture == "mobilenet_style":
        original_dw = [c for c in _channels(original, "Conv") if c[2] > 1]
        pruned_dw = [c for c in _channels(pruned, "Conv") if c[2] > 1]
        assert sum(g for *_, g in pruned_dw) < sum(g for *_, g in original_dw)
    rows = {r["layer"]: r for r in details["layers"]}
    assert any(r["channels_kept"] < r["channels_before"] for r in rows.values())
    assert all(r["parameters_after"] <= r["parameters_before"] for r in rows.values())


def test_first_conv_is_spared_and_overrides_apply(resnet_style: Path) -> None:
    proto = onnx.load(resnet_style)
    settings = PruneSettings(mode="structured", overrides=["layers.2.0.conv1:0"])
    result = prune_channels(proto, settings, 0.5, log=lambda _: None)
    groups = {tuple(g["producers"]): g for g in result.groups}
    stem = next(g for p, g in groups.items() if any("stem" in n for n in p))
    assert stem["kept"] == stem["channels"] and "spared" in stem["policy"]
    spared = next(g for p, g in groups.items() if p == ("/layers/layers.2/layers.2.0/conv1/Conv",))
    assert spared["kept"] == spared["channels"] and spared["policy"] == "override"
    others = [g for g in result.groups if g["policy"] == "sparsity"]
    assert others and all(g["kept"] == round(g["channels"] * 0.5) for g in others)


def _concat_model() -> onnx.ModelProto:
    """x -> convA (4ch) and convB (6ch) -> Concat (10ch) -> Relu -> convC (5ch) -> GAP -> Flatten -> Gemm.
    Channels 1 and 2 of A and channel 3 of B have near-zero filters: pruning 30% must drop exactly those,
    so the pruned model matches the original only if the Concat offsets are mapped right."""
    rng = np.random.default_rng(0)
    wa = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    wb = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    wa[[1, 2]] *= 1e-6
    wb[3] *= 1e-6
    wc = rng.standard_normal((5, 10, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((3, 5)).astype(np.float32)
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in [(wa, "wa"), (wb, "wb"), (wc, "wc"), (fc, "fc"), (np.zeros(3, np.float32), "fcb")]
    ]
    pads = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="convA", pads=pads),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="convB", pads=pads),
        helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1),
        helper.make_node("Relu", ["cat"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "wc"], ["c"], name="convC", pads=pads),
        helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat", axis=1),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "concat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_concat_offsets_map_to_the_right_consumer_channels() -> None:
    proto = _concat_model()
    onnx.checker.check_model(proto, full_check=True)
    overrides = ["convA:0.5", "convB:0.17", "convC:0.2"]
    settings = PruneSettings(mode="structured", skip_first_last=False, overrides=overrides)
    result = prune_channels(proto, settings, 0.5, log=lambda _: None)
    onnx.checker.check_model(result.proto, full_check=True)
    kept = {g["producers"][0]: g["kept"] for g in result.groups}
    assert kept == {"convA": 2, "convB": 5, "convC": 4, "fc": 3}  # fc feeds the graph output: kept whole
    np.testing.assert_array_equal(result.kept_out["convA"], [0, 3])
    np.testing.assert_array_equal(result.kept_out["convB"], [0, 1, 2, 4, 5])
    shapes = {t.name: tuple(t.dims) for t in result.proto.graph.initializer}
    assert shapes["wc"] == (4, 7, 3, 3)
    feed = _feed(proto, seed=3)
    # convC's pruned output channel changes the logits; compare against the original with that channel
    # masked (its filter zeroed and the Gemm column dropped), which only matches if offsets are right
    dropped_c = sorted(set(range(5)) - set(result.kept_out["convC"].tolist()))
    masked = onnx.ModelProto()
    masked.CopyFrom(proto)
    for tensor in masked.graph.initializer:
        array = numpy_helper.to_array(tensor).copy()
        if tensor.name == "wc":
            array[dropped_c] = 0
        if tensor.name == "fc":
            array[:, dropped_c] = 0
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    got = run_onnx(result.proto.SerializeToString(), feed)[0]
    want = run_onnx(masked.SerializeToString(), feed)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _fold_bn(path: Path) -> onnx.ModelProto:
    """The example CNN with every BatchNormalization folded into the Conv before it (a 'fused' model)."""
    proto = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    nodes, rename = [], {}
    producers = {n.output[0]: n for n in proto.graph.node}
    new_inits = dict(inits)
    for node in proto.graph.node:
        if node.op_type == "BatchNormalization" and producers[node.input[0]].op_type == "Conv":
            conv = producers[node.input[0]]
            gamma, beta, mean, var = (inits[n] for n in node.input[1:])
            eps = next(a.f for a in node.attribute if a.name == "epsilon")
            scale = gamma / np.sqrt(var + eps)
            new_inits[conv.input[1]] = inits[conv.input[1]] * scale[:, None, None, None]
            bias_name = f"{conv.input[1]}_bias"
            new_inits[bias_name] = (beta - mean * scale).astype(np.float32)
            conv.input.append(bias_name)
            rename[node.output[0]] = conv.output[0]
            continue
        nodes.append(node)
    for node in nodes:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
    used = {i for n in nodes for i in n.input}
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(
        numpy_helper.from_array(a.astype(np.float32), n) for n, a in new_inits.items() if n in used
    )
    del proto.graph.value_info[:]
    return proto


def test_fused_model_prunes_conv_bias_too(tmp_path: Path) -> None:
    fused = _fold_bn(DIGITS)
    assert not any(n.op_type == "BatchNormalization" for n in fused.graph.node)
    path = tmp_path / "fused.onnx"
    onnx.save(fused, path)
    assert abs(digits_accuracy(path) - digits_accuracy(DIGITS)) < 1e-9
    result = edgeplug.optimize(
        path,
        ["prune"],
        data=TEST_DATA,
        output_dir=tmp_path / "out",
        calibration_data=str(TRAIN_DATA),
        options={"prune": {"mode": "structured", "sparsity": 0.3, "criterion": "bn"}},
    )
    step = result.report["steps"][0]
    assert step["status"] == "applied", step.get("error")
    assert any("no BatchNorm" in (g["criterion"] or "") for g in step["details"]["groups"])
    pruned = onnx.load(result.output_dir / "fused.onnx")
    biases = [t for t in pruned.graph.initializer if t.name.endswith("_bias")]
    assert sorted(tuple(t.dims) for t in biases) == [(16,), (22,), (22,)]
    assert digits_accuracy(result.output_dir / "fused.onnx") >= digits_accuracy(DIGITS) - 0.01


def _digits_run(tmp_path: Path, reconstruct: bool) -> dict:
    result = edgeplug.optimize(
        DIGITS,
        ["prune"],
        data=TEST_DATA,
        calibration_data=str(TRAIN_DATA),
        output_dir=tmp_path,
        options={
            "prune": {"mode": "structured", "sparsity": 0.3, "reconstruct": reconstruct, "min_cosine": 0.5}
        },
    )
    return result.report


def test_reconstruction_recovers_accuracy_on_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_lsq = _digits_run(tmp_path / "lsq", True)
    without = _digits_run(tmp_path / "plain", False)
    base = with_lsq["original"]["metrics"]["accuracy"]
    acc_lsq = with_lsq["steps"][0]["metrics"]["accuracy"]
    acc_plain = without["steps"][0]["metrics"]["accuracy"]
    with capsys.disabled():
        print(
            f"\n[prune] digits CNN, 30% of channels: original {base:.4f}, pruned without reconstruction "
            f"{acc_plain:.4f}, with least-squares reconstruction {acc_lsq:.4f}"
        )
    assert with_lsq["steps"][0]["details"]["reconstruction"]["calibration_samples"] == 1347
    assert "reconstruction" not in without["steps"][0]["details"]
    assert base - acc_lsq <= 0.01
    assert base - acc_plain > base - acc_lsq

    # both pruned the same channels (reconstruction only adds the refitted conv's bias)
    def kept(report: dict) -> list[int]:
        return [r["channels_kept"] for r in report["steps"][0]["details"]["layers"]]

    assert kept(with_lsq) == kept(without) == [16, 22, 22, 10]
    assert with_lsq["steps"][0]["details"]["totals"]["parameters_after"] < 0.7 * 19098


@pytest.mark.parametrize("fixture", ["resnet_style", "mobilenet_style"])
def test_reconstruction_through_residual_and_depthwise_layers(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    path = request.getfixturevalue(fixture)
    cosines = {}
    for reconstruct in (True, False):
        result = edgeplug.optimize(
            path,
            ["prune"],
            data="random",
            output_dir=tmp_path / str(reconstruct),
            options={
                "prune": {
                    "mode": "structured",
                    "sparsity": 0.3,
                    "reconstruct": reconstruct,
                    "min_cosine": 0.0,
                }
            },
        )
        step = result.report["steps"][0]
        cosines[reconstruct] = step["verification"]["vs_previous"]["logits"]["cosine"]
        if reconstruct:
            layers = step["details"]["reconstruction"]["layers"]
            assert len(layers) >= 6
            assert all(r["error_after"] <= r["error_before"] for r in layers)
            assert any(r["error_after"] < 0.5 * r["error_before"] for r in layers)
    # on held-out inputs of the same distribution the refit layers track the original far better
    assert cosines[True] > 0.98
    assert cosines[True] > cosines[False] + 0.05


def test_cli_structured_run_writes_a_loadable_model_and_report(mobilenet_style: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner
    from edgeplug.cli import main

    out = tmp_path / "out"
    args = [
        "run",
        str(mobilenet_style),
        "--plugins",
        "prune",
        "-o",
        "prune.mode=structured",
        "-o",
        "prune.sparsity=0.25",
        "-o",
        "prune.min_cosine=0",
        "--output-dir",
        str(out),
    ]
    run = CliRunner().invoke(main, args)
    assert run.exit_code == 0, run.output
    report = __import__("json").loads((out / "report.json").read_text())
    step = report["steps"][0]
    assert step["status"] == "applied"
    assert report["original"]["metrics"]["parameters"] > step["metrics"]["parameters"]
    model = edgeplug.Model.load(out / mobilenet_style.name)
    assert [o.shape for o in model.outputs] == [(1, 10)]


def test_mlp_whose_only_hidden_layer_is_spared_is_not_applicable(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((8, 16)).astype(np.float32), rng.standard_normal((16, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    result = edgeplug.optimize(
        path, ["prune"], output_dir=tmp_path / "out", options={"prune": {"mode": "structured"}}
    )
    assert result.report["steps"][0]["status"] == "not_applicable"
    unstructured = edgeplug.optimize(
        path,
        ["prune"],
        output_dir=tmp_path / "u",
        options={"prune": {"sparsity": 0.5, "skip_first_last": False}},
    )
    rows = unstructured.report["steps"][0]["details"]["weights"]
    assert [r["sparsity"] for r in rows] == [0.5, 0.5]
    assert [r["op"] for r in rows] == ["MatMul", "MatMul"]


def _kept_by_bn(original: onnx.ModelProto, pruned: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Which channels each BatchNorm kept, recovered from the pruned model itself: its gamma values are a
    subset of the original's (random, distinct), so each kept value names its original channel."""
    inits = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    pruned_inits = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    pruned_bn = {n.name: n for n in pruned.graph.node if n.op_type == "BatchNormalization"}
    kept = {}
    for node in original.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        gamma = inits[node.input[1]]
        position = {float(v): i for i, v in enumerate(gamma)}
        assert len(position) == gamma.size
        new_gamma = pruned_inits[pruned_bn[node.name].input[1]]
        kept[node.name] = np.array([position[float(v)] for v in new_gamma])
    return kept


@pytest.mark.parametrize("fixture", ["resnet_style", "mobilenet_style"])
def test_pruned_graph_equals_the_original_with_those_channels_silenced(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    """End-to-end check of the rewiring (BN, conv inputs/outputs, depthwise groups, residual Adds, the
    classifier after GlobalAveragePool): zeroing gamma and beta of the removed channels in the ORIGINAL
    model makes those activations exactly zero everywhere downstream, which is what removing them does."""
    path = request.getfixturevalue(fixture)
    original = onnx.load(path)
    result = prune_channels(original, PruneSettings(mode="structured"), 0.5, log=lambda _: None)
    kept = _kept_by_bn(original, result.proto)
    sizes = {t.name: int(np.prod(t.dims)) for t in original.graph.initializer}
    channels = {n.name: sizes[n.input[1]] for n in original.graph.node if n.op_type == "BatchNormalization"}
    pruned = [bn for bn, index in kept.items() if index.size < channels[bn]]
    assert pruned, "no BatchNormalization lost channels"
    for bn, index in kept.items():  # half of each pruned group's channels stay; the others keep all
        assert index.size in (channels[bn], round(channels[bn] * 0.5)), (bn, index.size, channels[bn])
    # residual Adds: both operands keep exactly the same channel indices
    producer = {o: n for n in original.graph.node for o in n.output}

    def bns_behind(tensor: str) -> list[str]:
        node = producer.get(tensor)
        if node is None:
            return []
        if node.op_type == "BatchNormalization":
            return [node.name]
        if node.op_type in ("Relu", "Clip", "Add"):
            return [b for i in node.input[: 2 if node.op_type == "Add" else 1] for b in bns_behind(i)]
        return []

    adds = [n for n in original.graph.node if n.op_type == "Add"]
    assert adds
    for add in adds:
        sets = [kept[b] for b in bns_behind(add.input[0]) + bns_behind(add.input[1])]
        assert len(sets) >= 2
        for other in sets[1:]:
            np.testing.assert_array_equal(sets[0], other)
    masked = onnx.ModelProto()
    masked.CopyFrom(original)
    inits = {t.name: t for t in masked.graph.initializer}
    for node in masked.graph.node:
        if node.op_type == "BatchNormalization":
            for name in node.input[1:3]:
                array = numpy_helper.to_array(inits[name]).copy()
                removed = np.setdiff1d(np.arange(array.size), kept[node.name])
                array[removed] = 0.0
                inits[name].CopyFrom(numpy_helper.from_array(array, name))
    feed = _feed(original, seed=1)
    want = run_onnx(masked.SerializeToString(), feed)[0]
    got = run_onnx(result.proto.SerializeToString(), feed)[0]
    unmasked = run_onnx(original.SerializeToString(), feed)[0]
    assert np.abs(unmasked - want).max() > 1e-2  # the masking matters
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _mlp() -> onnx.ModelProto:
    """x[1,8] -> Gemm(16, transB) -> Relu -> MatMul(12) + bias -> Relu -> Gemm(4). Hidden units 3 and 7 of the
    first layer and 5 of the second are dead (near-zero weights, zero bias)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 8)).astype(np.float32)
    b1 = rng.uniform(0.1, 0.5, 16).astype(np.float32)
    w1[[3, 7]] *= 1e-7
    b1[[3, 7]] = 0.0
    w2 = rng.standard_normal((16, 12)).astype(np.float32)
    b2 = rng.uniform(0.1, 0.5, 12).astype(np.float32)
    w2[:, 5] *= 1e-7
    b2[5] = 0.0
    w3 = rng.standard_normal((4, 12)).astype(np.float32)
    inits = [
        numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (w3, "w3")]
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1", transB=1),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="fc2"),
        helper.make_node("Add", ["m2", "b2"], ["h2"], name="bias2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("Gemm", ["r2", "w3"], ["y"], name="fc3", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_mlp_hidden_units_are_pruned_and_rewired(tmp_path: Path) -> None:
    proto = _mlp()
    overrides = ["fc1:0.125", "fc2:0.09"]
    result = prune_channels(
        proto,
        PruneSettings(mode="structured", skip_first_last=False, overrides=overrides),
        0.5,
        log=lambda _: None,
    )
    onnx.checker.check_model(result.proto, full_check=True)
    np.testing.assert_array_equal(np.setdiff1d(np.arange(16), result.kept_out["fc1"]), [3, 7])
    np.testing.assert_array_equal(np.setdiff1d(np.arange(12), result.kept_out["fc2"]), [5])
    shapes = {t.name: tuple(t.dims) for t in result.proto.graph.initializer}
    assert shapes == {"w1": (14, 8), "b1": (14,), "w2": (14, 11), "b2": (11,), "w3": (4, 11)}
    feed = {"x": np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)}
    np.testing.assert_allclose(
        run_onnx(result.proto.SerializeToString(), feed)[0],
        run_onnx(proto.SerializeToString(), feed)[0],
        rtol=1e-4,
        atol=1e-4,
    )
    # through the pipeline with reconstruction: the refit of fc2 (also a producer) and fc3 keeps the outputs
    path = tmp_path / "mlp.onnx"
    onnx.save(proto, path)
    run = edgeplug.optimize(
        path,
        ["prune"],
        data="random",
        output_dir=tmp_path / "out",
        options={
            "prune": {"mode": "structured", "sparsity": 0.25, "reconstruct": True, "skip_first_last": False}
        },
    )
    step = run.report["steps"][0]
    assert step["status"] == "applied"
    assert [r["layer"] for r in step["details"]["reconstruction"]["layers"]] == ["fc2", "fc3"]
    assert step["verification"]["vs_previous"]["y"]["cosine"] > 0.99
