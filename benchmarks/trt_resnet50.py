"""TensorRT FP32 / FP16 / INT8 engines of the ResNet-50 architecture against onnxruntime, side by side.

    python benchmarks/trt_resnet50.py [--runs 200] [--threads 1] [--batch 1]

Needs the tensorrt package, cuda-python and an NVIDIA GPU; elsewhere it prints why it cannot run and
exits 0. Random (seeded) weights: latency only. INT8 is built from a symmetric s8 Q/DQ model made with
onnxruntime's quantize_static (calibrated on seeded random inputs, so its accuracy means nothing); each
engine's cosine against onnxruntime FP32 is printed as a sanity check. Engine latency is the wall time of
one inference including the host<->device copies; onnxruntime runs on the CPU with --threads threads.
Writes benchmarks/results/trt_resnet50.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeplug import Model  # noqa: E402
from edgeplug.verify import cosine  # noqa: E402
from edgeplug_trt import availability  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _latency(run: Any, feed: dict[str, np.ndarray], runs: int, warmup: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        run(feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(feed)
        times.append((time.perf_counter() - start) * 1e3)
    return {"p50_ms": float(np.percentile(times, 50)), "p90_ms": float(np.percentile(times, 90))}


def qdq_model(model: Path, out: Path, seed: int = 0, samples: int = 8) -> Path:
    """A symmetric s8 Q/DQ copy of `model` (biases float) as TensorRT's explicit quantization needs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(seed)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(
                [{"input": rng.standard_normal((1, 3, 224, 224), dtype=np.float32)} for _ in range(samples)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantize_static(
        str(model),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--workspace-mb", type=int, default=2048)
    args = parser.parse_args()

    problem = availability.missing()
    if problem:
        print(f"benchmarks/trt_resnet50.py cannot run here: {problem}")
        print("Nothing was measured and no result file was written.")
        return 0

    import tensorrt as trt
    from edgeplug.runtime import run_all, session
    from edgeplug_trt.engine_build import BuildSettings, build_engine
    from edgeplug_trt.engine_runner import EngineRunner
    from edgeplug_trt.preparation import prepare
    from edgeplug_trt.profiles import build_profile
    from edgeplug_trt.settings import TrtSettings

    from tests import zoo

    rng = np.random.default_rng(0)
    feed = {"input": rng.standard_normal((args.batch, 3, 224, 224), dtype=np.float32)}
    fp32_path = zoo.cached("resnet50") if args.batch == 1 else zoo.cached("resnet50", batch=args.batch)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trt-bench-") as tmp:
        work = Path(tmp)
        sess = session(Model.load(fp32_path).serialized(), args.threads)
        reference = run_all(sess, [feed])["logits"]
        ort = _latency(lambda f: run_all(sess, [f]), feed, max(args.runs // 4, 20))
        rows.append({"variant": f"onnxruntime CPU FP32 ({args.threads} threads)", **ort, "cosine": 1.0})
        sources = {"fp32": fp32_path, "fp16": fp32_path, "int8": qdq_model(fp32_path, work / "qdq.onnx")}
        for precision, source in sources.items():
            prep = prepare(Model.load(source))
            onnx_path = prep.model.save(work / f"{precision}.onnx")
            settings = BuildSettings(
                precision,
                args.workspace_mb,
                build_profile(prep.model.inputs, TrtSettings(), feed),
                work / "timing.cache",
            )
            built = build_engine(onnx_path, settings, work / f"{precision}.engine")
            runner = EngineRunner(built.engine)
            out = runner(feed)["logits"]
            lat = _latency(runner, feed, args.runs)
            rows.append(
                {
                    "variant": f"TensorRT {precision.upper()}",
                    **lat,
                    "cosine": cosine(reference.ravel().astype(np.float64), out.ravel().astype(np.float64)),
                    "build_s": round(built.seconds, 1),
                }
            )
            runner.close()
    base = rows[0]["p50_ms"]
    for row in rows:
        row["speedup_vs_onnxruntime"] = base / row["p50_ms"]
    lines = [
        f"ResNet-50 (random weights), batch {args.batch}, TensorRT {trt.__version__}, "
        f"{platform.processor() or platform.machine()}, {args.runs} runs",
        "",
        "| variant | p50 ms | p90 ms | speedup vs onnxruntime | cosine vs onnxruntime FP32 |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{r['speedup_vs_onnxruntime']:.1f}x | {r['cosine']:.5f} |"
        )
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trt_resnet50.md").write_text(table + "\n")
    (RESULTS / "trt_resnet50.json").write_text(
        json.dumps(
            {
                "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "tensorrt": trt.__version__,
                "batch": args.batch,
                "threads": args.threads,
                "runs": args.runs,
                "rows": rows,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
