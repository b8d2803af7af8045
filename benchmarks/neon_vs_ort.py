"""Generated C (neon plugin, host build: -O3 -march=native, one thread) against onnxruntime (one thread).

    python benchmarks/neon_vs_ort.py [--runs 200] [--models digits,digits_int8,mobilenet_v2]

Both run in this process on the same input, interleaved round by round so background load hits both alike:
onnxruntime through InferenceSession.run, the C through ctypes (`edgeplug_model_run_v`, a few microseconds
of call overhead, which matters only for the tiny digits CNN). Prints a Markdown table; writes
benchmarks/results/neon.json. Under qemu only correctness counts, so the aarch64 build is not timed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edgeplug  # noqa: E402
from edgeplug.cpu import cpu_info  # noqa: E402


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def compile_model(name: str, workdir: Path) -> tuple[Path, Path, dict]:
    """(model onnxruntime runs, host library, io) for one benchmark model, through `edgeplug run`'s API."""
    data = ROOT / "examples" / "digits_test.npz"
    if name == "digits":
        source, chain, options = ROOT / "examples" / "digits_cnn.onnx", ["fuse", "neon"], {}
    elif name == "digits_int8":
        source, chain, options = (
            ROOT / "examples" / "digits_cnn.onnx",
            ["fuse", "quant", "neon"],
            {"quant": {"mode": "static"}},
        )
    elif name == "mobilenet_v2":
        from tests import zoo

        source, chain, options, data = (
            zoo.cached("mobilenet_v2", zoo.mobilenet_v2),
            ["fuse", "neon"],
            {},
            None,
        )
    else:
        raise SystemExit(f"unknown model {name!r}: choose digits, digits_int8, mobilenet_v2")
    options = {**options, "neon": {"target": "host"}}
    result = edgeplug.optimize(source, chain, data=data, options=options, output_dir=workdir / name)
    final = workdir / name / "final.onnx"
    result.model.save(final)
    lib = next(f for f in result.artifact.files if f.name == "libedgeplug_model_host.so")
    verification = result.report["compile"]["verification"]["vs_final_model"]
    return (
        final,
        lib,
        {
            "io": result.artifact.info["io"],
            "verification": verification,
            "kernels": result.report["compile"]["details"]["kernels"],
        },
    )


def bench(name: str, workdir: Path, runs: int) -> dict:
    from edgeplug_neon.runner import HostLibrary

    model, lib_path, meta = compile_model(name, workdir)
    io = meta["io"]
    lib = HostLibrary(lib_path, io)
    sess = session(model)
    rng = np.random.default_rng(0)
    feed = {t["name"]: rng.random(t["shape"], dtype=np.float32) for t in io["inputs"]}
    ref, got = sess.run(None, feed)[0], next(iter(lib(feed).values()))
    for _ in range(5):
        sess.run(None, feed)
        lib(feed)
    t_ort, t_c = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        t1 = time.perf_counter()
        lib(feed)
        t2 = time.perf_counter()
        t_ort.append(t1 - t0)
        t_c.append(t2 - t1)
    ort_ms, c_ms = 1e3 * float(np.median(t_ort)), 1e3 * float(np.median(t_c))
    return {
        "model": name,
        "onnxruntime_p50_ms": round(ort_ms, 4),
        "neon_c_p50_ms": round(c_ms, 4),
        "speedup_vs_ort": round(ort_ms / c_ms, 3),
        "max_abs_diff_on_bench_input": float(np.abs(ref - got).max()),
        "verification_vs_ort": meta["verification"],
        "kernels": meta["kernels"],
        "scratch_bytes": io["scratch_bytes"],
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--models", default="digits,digits_int8,mobilenet_v2")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "neon.json")
    args = parser.parse_args()
    missing = [p for p in ("edgeplug_fuse", "edgeplug_neon") if importlib.util.find_spec(p) is None]
    if missing:
        raise SystemExit(f"install the plugins first: {', '.join(missing)} (pip install -e plugins/...)")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if "digits_int8" in names and importlib.util.find_spec("edgeplug_quantize") is None:
        print("edgeplug_quantize is not installed: skipping digits_int8", file=sys.stderr)
        names.remove("digits_int8")
    rows = []
    with tempfile.TemporaryDirectory(prefix="neon-bench-") as tmp:
        for name in names:
            runs = args.runs if name.startswith("digits") else max(20, args.runs // 4)
            rows.append(bench(name, Path(tmp), runs))
    print(
        "| model | onnxruntime 1 thread p50 ms | generated C 1 thread p50 ms | speedup (ORT / C) | max abs diff |"
    )
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['onnxruntime_p50_ms']:.3f} | {r['neon_c_p50_ms']:.3f} | "
            f"{r['speedup_vs_ort']:.2f}x | {r['max_abs_diff_on_bench_input']:.2e} |"
        )
    for r in rows:
        if r["speedup_vs_ort"] < 1:
            print(
                f"note: on {r['model']} the generated C is {1 / r['speedup_vs_ort']:.2f}x slower than onnxruntime"
            )
    info = cpu_info()
    result = {
        "command": "python benchmarks/neon_vs_ort.py " + " ".join(sys.argv[1:]),
        "cpu": info["model"],
        "cpu_flags": info["flags"],
        "machine": platform.machine(),
        "load_average": list(os.getloadavg()),
        "onnxruntime": ort.__version__,
        "threads": 1,
        "host_flags": "-O3 -march=native (portable path: GNU C vectors; NEON intrinsics only on aarch64)",
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
