"""Shared helpers for the neon tests: build small ONNX graphs, compile them, run both builds."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

HAVE_CROSS = shutil.which("aarch64-linux-gnu-gcc") is not None and shutil.which("qemu-aarch64") is not None
needs_aarch64 = pytest.mark.skipif(
    not HAVE_CROSS, reason="aarch64-linux-gnu-gcc or qemu-aarch64 not installed"
)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: dict[str, Sequence[int]],
    outputs: Sequence[str],
    inits: dict[str, np.ndarray] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    """A float32 graph; output shapes come from shape inference."""
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(inferred, full_check=True)
    return inferred


def random_samples(model: onnx.ModelProto, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    init = {t.name for t in model.graph.initializer}
    samples = []
    for _ in range(count):
        sample = {}
        for vi in model.graph.input:
            if vi.name in init:
                continue
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            sample[vi.name] = rng.normal(size=shape).astype(np.float32)
        samples.append(sample)
    return samples


def write_npz(path: Path, samples: Sequence[dict[str, np.ndarray]]) -> Path:
    np.savez(path, **{k: np.concatenate([s[k] for s in samples]) for k in samples[0]})
    return path


def ort_outputs(
    model: onnx.ModelProto | str | Path, samples: Sequence[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """onnxruntime's outputs with Q/DQ pairs run as float operators (what the core compares an exact-int8
    target such as neon with): its x86 int8 kernels saturate on CPUs without VNNI, an oracle that depends on
    the CPU. No change for float models."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
    sess = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    runs = [sess.run(names, s) for s in samples]
    return {n: np.concatenate([np.asarray(r[i]) for r in runs]) for i, n in enumerate(names)}


@pytest.fixture
def compile_model(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Compile a proto through the Python API (neon only), then run the host library and the aarch64
    driver under qemu ourselves on the samples; returns outputs per build and onnxruntime's."""
    import edgeplug
    from edgeplug_neon import runner, toolchain

    def run(
        proto: onnx.ModelProto,
        samples: int = 4,
        target: str = "both",
        plugins: Sequence[str] = ("neon",),
        options: dict[str, Any] | None = None,
        data: Path | None = None,
    ) -> dict[str, Any]:
        path = tmp_path / "model.onnx"
        onnx.save(proto, path)
        feeds = random_samples(proto, samples)
        npz = data or write_npz(tmp_path / "data.npz", feeds)
        opts = {"neon": {"target": target, **(options or {})}}
        result = edgeplug.optimize(path, list(plugins), data=npz, options=opts, output_dir=tmp_path / "out")
        art = result.artifact
        assert art is not None and art.kind == "c-library"
        io = art.info["io"]
        got: dict[str, Any] = {"artifact": art, "result": result, "feeds": feeds, "out": tmp_path / "out"}
        got["reference"] = ort_outputs(result.model.proto, feeds)
        if target in ("host", "both"):
            got["host"] = runner.run_host(tmp_path / "out" / toolchain.HOST_LIB, io, feeds)
        if target in ("aarch64", "both"):
            tc = toolchain.find(None, None, True, need_aarch64=True, need_qemu=True)
            got["aarch64"] = runner.run_qemu(tc, tmp_path / "out" / toolchain.AARCH64_DRIVER, io, feeds)
        return got

    return run


def assert_close(
    got: dict[str, np.ndarray], ref: dict[str, np.ndarray], rtol: float = 1e-3, atol: float = 1e-4
) -> None:
    assert set(got) == set(ref)
    for name in ref:
        assert got[name].shape == ref[name].shape, name
        np.testing.assert_allclose(got[name], ref[name], rtol=rtol, atol=atol, err_msg=name)


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold Conv->BatchNormalization pairs (the job of the fuse plugin) for tests without it."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    drop = []
    for bn in [n for n in g.node if n.op_type == "BatchNormalization"]:
        conv = producer[bn.input[0]]
        assert conv.op_type == "Conv"
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (init[i] for i in bn.input[1:5])
        scale = gamma / np.sqrt(var + eps)
        w = init[conv.input[1]] * scale.reshape(-1, 1, 1, 1)
        b = init[conv.input[2]] if len(conv.input) > 2 else np.zeros_like(mean)
        b = (b - mean) * scale + beta
        wn, bname = conv.input[1] + "_bnf", conv.output[0] + "_bnf_bias"
        g.initializer.extend(
            [
                numpy_helper.from_array(w.astype(np.float32), wn),
                numpy_helper.from_array(b.astype(np.float32), bname),
            ]
        )
        del conv.input[1:]
        conv.input.extend([wn, bname])
        conv.output[0] = bn.output[0]
        drop.append(bn)
    for n in drop:
        g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.value_info[:]
    return onnx.shape_inference.infer_shapes(model)
