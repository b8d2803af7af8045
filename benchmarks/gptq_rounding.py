"""quant's GPTQ rounding (rounding.py) against nearest rounding, on the model zoo's MobileNetV2 (ImageNet
weights): top-1/top-5 agreement and worst per-sample cosine with FP32 on the perf table's held-out crops, for
the weights alone (activations float) and for onnxruntime's static recipe (u8 activations, minmax), with s8
and with 7-bit (reduce_range) per-channel weights. Accuracy only: the integers change, the graph and so the
speed do not. Quantized models run with their Q/DQ pairs as float operators (exact int8 arithmetic: the same
figures on every CPU).

    python benchmarks/gptq_rounding.py     # writes benchmarks/results/gptq_rounding.{json,md}
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.measure import RESULTS, cpu_line, stamp, write_results  # noqa: E402
from benchmarks.perf_models import SPECS, load_npz, prepare, samples_of, task_metrics  # noqa: E402

Sample = dict[str, np.ndarray]


def with_weights_of(reference: onnx.ModelProto, quantized: onnx.ModelProto) -> onnx.ModelProto:
    """`reference` (float) with each Conv/Gemm weight replaced by its dequantized integers in `quantized`
    (matched by node name): the weights' rounding alone."""
    result = onnx.ModelProto()
    result.CopyFrom(reference)
    inits = {t.name: t for t in result.graph.initializer}
    q_inits = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    made = {out: n for n in quantized.graph.node for out in n.output}
    by_name = {n.name: n for n in result.graph.node}
    for node in quantized.graph.node:
        dq = made.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type not in ("Conv", "Gemm") or dq is None or dq.op_type != "DequantizeLinear":
            continue
        if dq.input[0] not in q_inits or node.name not in by_name:
            continue
        values = q_inits[dq.input[0]].astype(np.float32)
        scale = q_inits[dq.input[1]]
        zero = q_inits[dq.input[2]].astype(np.float32) if len(dq.input) > 2 else np.zeros_like(scale)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * values.ndim
        if scale.size > 1:
            shape[axis] = -1
        name = by_name[node.name].input[1]
        dequantized = (values - zero.reshape(shape)) * scale.reshape(shape)
        inits[name].CopyFrom(numpy_helper.from_array(dequantized.astype(np.float32), name))
    return result


def main() -> int:
    from edgeplug.plugin_api import run_all, session
    from edgeplug_quantize.prepare import prepare as quant_prepare
    from edgeplug_quantize.ptq import Recipe, quantize

    record: dict[str, Any] = stamp("benchmarks/gptq_rounding.py")
    spec = SPECS["mobilenetv2"]
    print(f"CPU: {cpu_line(record['cpu'])}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gptq-rounding-") as tmp:
        data = prepare(spec, Path(tmp))
        calibration: list[Sample] = samples_of(load_npz(data.calibration)[0])
        proto = quant_prepare(onnx.load(str(data.model))).proto
    reference = run_all(session(proto.SerializeToString()), data.held_out)
    rows = []
    for reduce_range in (False, True):
        weights = "7-bit (reduce_range)" if reduce_range else "s8"
        for rounding in ("nearest", "gptq"):
            start = time.monotonic()
            quantized = quantize(
                proto, Recipe("static", reduce_range=reduce_range, rounding=rounding), calibration
            )
            seconds = round(time.monotonic() - start, 1)
            for activations, model in (
                ("float", with_weights_of(proto, quantized)),
                ("u8 minmax", quantized),
            ):
                outputs = run_all(session(model.SerializeToString(), qdq_as_float=True), data.held_out)
                metrics = task_metrics(spec, reference, outputs, None)
                rows.append(
                    {
                        "weights": f"{weights} per-channel",
                        "activations": activations,
                        "rounding": rounding,
                        "quantize_s": seconds,
                        "metrics": metrics,
                    }
                )
                print(rows[-1], flush=True)
    record.update(model="mobilenetv2", data=data.data, rows=rows)
    lines = [
        "# GPTQ rounding against nearest rounding (MobileNetV2, ImageNet weights)",
        "",
        f"Command: `{record['command']}`  ",
        f"Date: {record['date']}  ",
        f"CPU: {cpu_line(record['cpu'])}  ",
        f"Data: {data.data}; metrics against FP32 on the held-out crops; Q/DQ run as float operators.",
        "",
        "| weights | activations | rounding | top-1 | top-5 | worst cosine | quantize s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        m = row["metrics"]
        lines.append(
            f"| {row['weights']} | {row['activations']} | {row['rounding']} | {m['top1']:.3f} | "
            f"{m['top5']:.3f} | {m['cosine']:.4f} | {row['quantize_s']} |"
        )
    json_path, md_path = write_results(RESULTS / "gptq_rounding", record, "\n".join(lines) + "\n")
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
