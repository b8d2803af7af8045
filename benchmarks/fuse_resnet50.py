"""ResNet-50 before and after `fuse`: node counts and latency ratio at the same threads, side by side.

    python benchmarks/fuse_resnet50.py [--threads 1] [--runs 20] [--rounds 7] [--target onnx]

Latency is measured two ways, both alternating the two models so that load on a shared machine hits
them alike:
* edgeplug.bench.measure (a fresh onnxruntime process per measurement, default graph optimizations)
  for --rounds rounds of --runs runs; the table gives the best p50 of the rounds (the estimate least
  disturbed by other processes, as timeit advises), the JSON also the median and every round;
* paired, in one process: rounds x runs single inferences taking turns, median times and the median
  of the per-pair ratios, with onnxruntime's default optimizations and with graph optimizations off.
onnxruntime folds BatchNormalization itself at session start, so with its default optimizations both
models become the same graph and a ratio away from 1.0 is noise; graph optimizations off stands in for
a runtime without its own fusions. Prints a Markdown table, writes benchmarks/results/fuse_resnet50.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edgeplug  # noqa: E402
from edgeplug import bench  # noqa: E402
from edgeplug.cpu import cpu_info  # noqa: E402

from tests import zoo  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "fuse_resnet50.json"


def paired(
    before: Path, after: Path, feed: dict[str, np.ndarray], threads: int, runs: int, optimize: bool
) -> dict[str, float]:
    """Both models in this process, one inference each in turn: the median of the per-pair time ratios
    cancels load that changes over time, which best-of-rounds alone does not on a busy machine."""
    sessions = []
    for path in (before, after):
        opts = ort.SessionOptions()
        if not optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sessions.append(ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]))
    for sess in sessions * 3:
        sess.run(None, feed)
    times: list[list[float]] = [[], []]
    for _ in range(runs):
        for index, sess in enumerate(sessions):
            start = time.perf_counter()
            sess.run(None, feed)
            times[index].append((time.perf_counter() - start) * 1000)
    ratios = np.array(times[0]) / np.array(times[1])
    return {
        "before_ms": float(np.median(times[0])),
        "after_ms": float(np.median(times[1])),
        "speedup": float(np.median(ratios)),
        "runs": runs,
    }


def describe(path: Path) -> dict[str, Any]:
    model = onnx.load(str(path))
    ops = Counter(n.op_type for n in model.graph.node)
    return {
        "nodes": len(model.graph.node),
        "batchnorm": ops["BatchNormalization"],
        "ops": dict(ops.most_common()),
        "size_bytes": path.stat().st_size,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--target", choices=("onnx", "onnxruntime"), default="onnx")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    source = zoo.cached("resnet50")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fuse-bench-") as tmp:
        started = time.perf_counter()
        result = edgeplug.optimize(
            source, ["fuse"], options={"fuse": {"target": args.target}}, output_dir=tmp
        )
        fuse_seconds = time.perf_counter() - started
        step = result.report["steps"][0]
        fused = Path(tmp) / "resnet50-fused.onnx"
        result.model.save(fused)
        before, after = describe(source), describe(fused)
        feed = zoo.example_inputs(onnx.load(str(source), load_external_data=False))

        default: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.rounds):  # alternate so that drift on a shared machine hits both alike
            for key, path in (("before", source), ("after", fused)):
                default[key].append(bench.measure(path, args.threads, args.runs, inputs=feed)["p50_ms"])
        pairs = {
            "onnxruntime_default": paired(source, fused, feed, args.threads, args.runs * args.rounds, True),
            "graph_opts_off": paired(source, fused, feed, args.threads, args.runs * args.rounds, False),
        }

    load_after = os.getloadavg()
    record = {
        "benchmark": "fuse_resnet50",
        "command": " ".join(
            ["python benchmarks/fuse_resnet50.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "model": "zoo.resnet50 (ResNet-50 v1.5, random weights, 1x3x224x224)",
        "target": args.target,
        "threads": args.threads,
        "runs": args.runs,
        "rounds": args.rounds,
        "fuse_seconds": round(fuse_seconds, 2),
        "verification": step["verification"]["vs_previous"],
        "details": step["details"],
        "load_average_1_5_15": {"before": load_before, "after": load_after, "cpus": os.cpu_count()},
        "before": {
            **before,
            "p50_ms": min(default["before"]),
            "p50_ms_median": statistics.median(default["before"]),
            "p50_ms_rounds": default["before"],
        },
        "after": {
            **after,
            "p50_ms": min(default["after"]),
            "p50_ms_median": statistics.median(default["after"]),
            "p50_ms_rounds": default["after"],
        },
        "speedup_p50": min(default["before"]) / min(default["after"]),
        "speedup_p50_median": statistics.median(default["before"]) / statistics.median(default["after"]),
        "paired": pairs,
        "node_ratio": before["nodes"] / after["nodes"],
        "versions": {
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "python": platform.python_version(),
        },
        "cpu": {k: v for k, v in cpu_info().items() if k != "flags"},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(table(record))
    return record


def table(r: dict[str, Any]) -> str:
    b, a, on, off = r["before"], r["after"], r["paired"]["onnxruntime_default"], r["paired"]["graph_opts_off"]
    rows = [
        "| ResNet-50 | nodes | BatchNormalization | size MB | p50 ms (bench.measure) | paired p50 ms, "
        "onnxruntime default | paired p50 ms, graph opts off |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| original | {b['nodes']} | {b['batchnorm']} | {b['size_bytes'] / 1e6:.1f} | {b['p50_ms']:.1f} | "
        f"{on['before_ms']:.1f} | {off['before_ms']:.1f} |",
        f"| fuse (target={r['target']}) | {a['nodes']} | {a['batchnorm']} | {a['size_bytes'] / 1e6:.1f} | "
        f"{a['p50_ms']:.1f} | {on['after_ms']:.1f} | {off['after_ms']:.1f} |",
        f"| ratio | {r['node_ratio']:.2f}x fewer | | | {r['speedup_p50']:.2f}x | {on['speedup']:.2f}x | "
        f"{off['speedup']:.2f}x |",
    ]
    max_err = max(m["max_abs_error"] for m in r["verification"].values())
    load = r["load_average_1_5_15"]
    return "\n".join(rows) + (
        f"\n\n{r['threads']} thread(s). bench.measure: best p50 of {r['rounds']} alternating rounds x {r['runs']} "
        f"runs in fresh processes (median-of-rounds ratio {r['speedup_p50_median']:.2f}x). Paired: "
        f"{on['runs']} alternating single inferences in one process, median times and median per-pair ratio. "
        f"Load average {load['before'][0]:.1f} -> {load['after'][0]:.1f} on {load['cpus']} CPUs. "
        f"Max abs output difference {max_err:.2g} (onnxruntime)."
    )


if __name__ == "__main__":
    main()
