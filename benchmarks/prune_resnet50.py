"""ResNet-50 with 50% of its channels pruned (structured) against the unpruned model, side by side.

    python benchmarks/prune_resnet50.py [--threads 1] [--runs 20] [--rounds 3]

Latency is measured with edgeplug.bench (a fresh onnxruntime process per measurement), alternating
the two models for --rounds rounds and taking the median p50, so load from other processes hits both.
If the quant plugin is installed, `prune,quant` is run too and its file compared with the FP32 one.
The zoo model has random (seeded) weights, so accuracy is meaningless here: the prune step's cosine
budget is set to -1 (any output passes; the report records it) and reconstruction is off (no real data).
Prints a Markdown table and writes benchmarks/results/prune.json.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import edgeplug  # noqa: E402
import onnxruntime  # noqa: E402
from edgeplug import bench  # noqa: E402
from edgeplug.plugins import names  # noqa: E402

from tests import zoo  # noqa: E402

PRUNE = {"mode": "structured", "sparsity": 0.5, "min_cosine": -1.0}
TARGETS = {"speedup": 1.8, "parameter_ratio": 2.5, "prune_quant_size_ratio": 8.0}


def latency(paths: list[Path], threads: int, runs: int, rounds: int) -> list[dict[str, Any]]:
    """Median over rounds of each model's p50, measured alternately."""
    samples: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for i, path in enumerate(paths):
            samples[i].append(bench.measure(path, threads=threads, runs=runs, warmup=3)["p50_ms"])
    return [{"p50_ms": statistics.median(s), "p50_rounds_ms": [round(v, 2) for v in s]} for s in samples]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "prune.json")
    args = parser.parse_args(argv)

    original_path = zoo.cached("resnet50")
    original = edgeplug.Model.load(original_path)
    work = Path(tempfile.mkdtemp(prefix="prune-bench-"))
    t0 = time.perf_counter()
    pruned_run = edgeplug.optimize(
        original_path, ["prune"], output_dir=work / "prune", options={"prune": PRUNE}
    )
    prune_seconds = time.perf_counter() - t0
    pruned_path = pruned_run.output_dir / original_path.name
    pruned = edgeplug.Model.load(pruned_path)
    details = pruned_run.report["steps"][0]["details"]

    lat = latency([original_path, pruned_path], args.threads, args.runs, args.rounds)
    rows: list[dict[str, Any]] = [
        {
            "model": "resnet50 FP32",
            "parameters": original.stats()["parameters"],
            "size_bytes": original_path.stat().st_size,
            "gflops": details["totals"]["flops_before"] / 1e9,
            **lat[0],
        },
        {
            "model": "resnet50 pruned 50% channels",
            "parameters": pruned.stats()["parameters"],
            "size_bytes": pruned_path.stat().st_size,
            "gflops": details["totals"]["flops_after"] / 1e9,
            **lat[1],
        },
    ]
    result: dict[str, Any] = {
        "benchmark": "prune_resnet50",
        "command": " ".join(
            ["python benchmarks/prune_resnet50.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "onnxruntime": onnxruntime.__version__,
        },
        "threads": args.threads,
        "runs": args.runs,
        "rounds": args.rounds,
        "prune_options": PRUNE,
        "prune_seconds": round(prune_seconds, 1),
        "prune_step_cosine": pruned_run.report["steps"][0]["verification"]["vs_previous"]["logits"]["cosine"],
    }
    ratios = {
        "speedup": rows[0]["p50_ms"] / rows[1]["p50_ms"],
        "parameter_ratio": rows[0]["parameters"] / rows[1]["parameters"],
        "flop_ratio": rows[0]["gflops"] / rows[1]["gflops"],
    }
    pm = edgeplug.load_plugins()
    if "quant" in names(pm):
        t0 = time.perf_counter()
        chained = edgeplug.optimize(
            original_path,
            ["prune", "quant"],
            output_dir=work / "prune-quant",
            options={"prune": PRUNE},
            on_fail="skip",
        )
        quant_step = chained.report["steps"][1]
        final = chained.output_dir / original_path.name
        result["prune_quant"] = {
            "quant_status": quant_step["status"],
            "quant_error": quant_step.get("error"),
            "quant_mode": quant_step.get("details", {}).get("mode"),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(
            {
                "model": "resnet50 pruned 50% + quant",
                "parameters": edgeplug.Model.load(final).stats()["parameters"],
                "size_bytes": final.stat().st_size,
                "gflops": None,
                "p50_ms": None,
            }
        )
        ratios["prune_quant_size_ratio"] = rows[0]["size_bytes"] / rows[-1]["size_bytes"]
    else:
        result["prune_quant"] = "skipped: the quant plugin is not installed"
    result["rows"] = rows
    result["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    result["targets"] = {k: {"target": t, "met": ratios[k] >= t} for k, t in TARGETS.items() if k in ratios}

    print(f"ResNet-50, structured pruning of 50% of channels, onnxruntime CPU, {args.threads} thread(s)\n")
    print("| model | parameters | file MB | GFLOPs | p50 ms |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        gflops = f"{row['gflops']:.2f}" if row["gflops"] is not None else "-"
        p50 = f"{row['p50_ms']:.1f}" if row["p50_ms"] is not None else "-"
        print(
            f"| {row['model']} | {row['parameters']:,} | {row['size_bytes'] / 1e6:.1f} | {gflops} | {p50} |"
        )
    print()
    for key, value in result["ratios"].items():
        target = result["targets"].get(key)
        verdict = (
            f" (target >= {target['target']}x: {'met' if target['met'] else 'NOT met'})" if target else ""
        )
        print(f"- {key}: {value:.2f}x{verdict}")
    print(
        f"- cosine of the pruned model's outputs vs FP32: {result['prune_step_cosine']:.2f} "
        f"(verification off, min_cosine={PRUNE['min_cosine']}; random weights, no reconstruction: "
        "the ratios are size and speed only, the pruned model does not compute what the original does)"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0 if all(t["met"] for t in result["targets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
