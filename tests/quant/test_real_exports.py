"""Real exported models: weights in Constant nodes at opset 11 (PP-OCR's kind), external data, and
onnxruntime's pre-processing failing on the way (the path that broke rapidocr's cls model)."""

from __future__ import annotations

from pathlib import Path

import edgeplug
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgeplug_quantize.prepare import ort_pre_process

from .models import ppocr_cls_like


@pytest.fixture(scope="module")
def cls_model(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("ppocr")
    path = folder / "cls.onnx"
    onnx.save(ppocr_cls_like(), path)
    data = folder / "crops.npz"
    np.savez(data, x=np.random.default_rng(0).random((48, 3, 48, 192), dtype=np.float32))
    return path, data


def _loads_and_runs(path: Path) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((2, 3, 48, 192), dtype=np.float32)
    return sess.run(None, {"x": x})[0]


@pytest.mark.int8
def test_a_ppocr_like_constant_weight_opset11_model_quantizes_loads_and_verifies(cls_model, tmp_path):
    path, data = cls_model
    result = edgeplug.optimize(path, ["quant"], data=data, output_dir=tmp_path / "out", quiet=True)
    step = result.report["steps"][0]
    assert step["status"] == "applied", step.get("error")
    assert step["verification"]["passed"]
    notes = " ".join(step["details"]["prepare"])
    assert "opset 11 -> 13" in notes and "Constant" in notes
    probs = _loads_and_runs(tmp_path / "out" / "cls.onnx")
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=0.01)
    proto = onnx.load(tmp_path / "out" / "cls.onnx")
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)


def test_pre_processing_that_fails_symbolic_shape_inference_leaves_the_model_whole(cls_model, monkeypatch):
    """When onnxruntime's symbolic shape inference fails, quant_pre_process retries through a path that
    rewrites a ModelProto's initializers in place into references to a file "foo.bin"; the model handed on
    must still hold every weight (before the fix: "Cannot parse data from external tensors" at load)."""
    from onnxruntime.tools import symbolic_shape_infer

    def fail(*args, **kwargs):
        raise RuntimeError("Incomplete symbolic shape inference")

    monkeypatch.setattr(symbolic_shape_infer.SymbolicShapeInference, "infer_shapes", staticmethod(fail))
    from edgeplug_quantize.prepare import constants_to_initializers, upgrade_opset

    proto, _ = constants_to_initializers(upgrade_opset(onnx.load(cls_model[0]), 13))
    before = proto.SerializeToString()
    processed = ort_pre_process(proto)
    assert proto.SerializeToString() == before  # the model given is not rewritten
    assert processed is not None
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in processed.graph.initializer)
    ort.InferenceSession(processed.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.int8
def test_a_model_saved_with_external_data_quantizes_into_one_self_contained_file(cls_model, tmp_path):
    path, data = cls_model
    folder = tmp_path / "external"
    folder.mkdir()
    onnx.save(
        onnx.load(path),
        folder / "cls.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="cls.onnx.data",
        size_threshold=0,
        convert_attribute=True,  # the Constant nodes' tensors too
    )
    out = tmp_path / "out"
    result = edgeplug.optimize(
        folder / "cls.onnx",
        ["quant"],
        data=data,
        output_dir=out,
        quiet=True,
        options={"quant": {"mode": "static"}},
    )
    assert result.report["steps"][0]["verification"]["passed"]
    assert np.isfinite(_loads_and_runs(out / "cls.onnx")).all()
