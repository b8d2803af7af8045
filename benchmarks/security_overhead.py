"""What the security guard costs per request on ResNet-50 (tests/zoo.py), measured side by side in one run.

    python benchmarks/security_overhead.py [--runs 30] [--threads 1]

Modes, interleaved round by round so drift on a shared machine hits them alike (median latency each, and
the median over rounds of each mode's time over the baseline's in the same round):
  baseline          the core's in-process onnxruntime run, no guard
  checks            security in-process (isolate=false): hash (cached), dtype/shape/NaN/range checks,
                    min_confidence + deny_labels on the logits         target: under 10% over baseline
  squeeze           checks + feature squeezing (2 extra inferences: bit depth, 2x2 median)
  isolated          checks + the isolated worker (pickling over a pipe, a separate process)
  isolated+squeeze  all of it
plus one-off costs: the worker's start (spawn, import, load the model) and an uncached sha256 check.
Writes benchmarks/results/security.json and security.md.
"""

from __future__ import annotations

import argparse
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

import edgeplug  # noqa: E402
from edgeplug import InferenceRequest, Model  # noqa: E402
from edgeplug.pipeline import CORE  # noqa: E402
from edgeplug.runtime import run_all, session  # noqa: E402

from tests import zoo  # noqa: E402

MODES = {
    "baseline": None,
    "checks": {"isolate": False},
    "squeeze": {"isolate": False, "squeeze": True},
    "isolated": {"isolate": True, "timeout_s": 60.0, "memory_mb": 4096},
    "isolated+squeeze": {"isolate": True, "squeeze": True, "timeout_s": 60.0, "memory_mb": 4096},
}
COMMON = {"min_confidence": 0.001, "deny_labels": ["999"]}  # timeout and memory apply to the worker only


def guarded_resnet50(folder: Path, threads: int) -> Path:
    """ResNet-50 through `edgeplug run --plugins security` on 16 seeded images in [0, 1]; random weights, so
    this measures cost, not detection (every squeezer is kept: squeeze_min_agreement=0)."""
    source = zoo.cached("resnet50")
    images = np.random.default_rng(0).random((16, 3, 224, 224), dtype=np.float32)
    np.savez(folder / "images.npz", input=images)
    edgeplug.optimize(
        source,
        ["security"],
        data=str(folder / "images.npz"),
        output_dir=folder / "out",
        options={"security": {"squeeze_min_agreement": 0.0}},
        threads=threads,
        quiet=True,
    )
    return folder / "out" / f"{source.stem}.onnx"


def hook_caller(guards: list[str]) -> Any:
    pm = edgeplug.load_plugins()
    keep = {CORE, *guards}
    return pm.subset_hook_caller(
        "guard_inference", remove_plugins=[p for n, p in pm.list_name_plugin() if n not in keep]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results", help="output folder")
    args = parser.parse_args()

    from edgeplug_security import integrity, isolation, plugin

    with tempfile.TemporaryDirectory() as tmp:
        path = guarded_resnet50(Path(tmp), args.threads)
        model = Model.load(path)
        sess = session(model.serialized(), args.threads)
        feed = {"input": np.random.default_rng(1).random((1, 3, 224, 224), dtype=np.float32)}
        plain, guarded = hook_caller([]), hook_caller(["security"])

        def request(opts: dict[str, Any] | None) -> None:
            req = InferenceRequest(
                path,
                feed,
                lambda f: run_all(sess, [f]),
                {"security": {**COMMON, **(opts or {})}},
                model,
                threads=args.threads,
            )
            (plain if opts is None else guarded)(request=req)

        cached = run_all(sess, [feed])
        stub_times = []
        real_runner = plugin.inprocess.runner
        plugin.inprocess.runner = lambda *args: lambda f: cached  # the model stubbed out
        try:
            for _ in range(200):  # the guard's own work alone: immune to CPU contention
                t0 = time.perf_counter()
                request(MODES["checks"])
                stub_times.append(time.perf_counter() - t0)
        finally:
            plugin.inprocess.runner = real_runner
        guard_work_ms = float(np.median(stub_times)) * 1e3

        start = time.perf_counter()
        request(MODES["isolated"])  # first request: spawns the worker and loads the model in it
        worker_start_s = time.perf_counter() - start
        integrity._cache.clear()
        start = time.perf_counter()
        integrity.verify_model(path, require_hash=True)
        hash_s = time.perf_counter() - start
        for opts in MODES.values():  # warm-up
            request(opts)
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(args.runs):
            for mode, opts in MODES.items():
                t0 = time.perf_counter()
                request(opts)
                times[mode].append(time.perf_counter() - t0)
        isolation.POOL.close()

    base = float(np.median(times["baseline"]))
    rows = []
    for mode, values in times.items():
        p50 = float(np.median(values))
        # the median over rounds of (this mode / baseline in the same round): robust to load drifting
        paired = float(np.median(np.array(values) / np.array(times["baseline"])))
        rows.append(
            {
                "mode": mode,
                "p50_ms": p50 * 1e3,
                "p90_ms": float(np.percentile(values, 90)) * 1e3,
                "overhead_ms": (p50 - base) * 1e3,
                "ratio": p50 / base,
                "paired_ratio": paired,
            }
        )
    result = {
        "model": "zoo.resnet50 (1x3x224x224, 25.6M params)",
        "threads": args.threads,
        "runs": args.runs,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "rows": rows,
        "worker_start_s": worker_start_s,
        "sha256_check_uncached_s": hash_s,
        "checks_overhead_pct": (rows[1]["paired_ratio"] - 1) * 100,
        "guard_work_ms": guard_work_ms,
        "guard_work_pct_of_baseline": guard_work_ms / (base * 1e3) * 100,
        "checks_under_10pct": rows[1]["paired_ratio"] < 1.10,
    }
    lines = [
        f"ResNet-50, batch 1, {args.threads} thread(s), {args.runs} interleaved rounds (median)",
        "",
        "| mode | p50 ms | p90 ms | overhead ms (p50) | p50 vs baseline | paired ratio (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['mode']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['overhead_ms']:+.2f} | "
        f"{r['ratio']:.3f}x | {r['paired_ratio']:.3f}x |"
        for r in rows
    ]
    lines += [
        "",
        f"in-process checks alone (model stubbed, 200 runs): {guard_work_ms:.2f} ms = "
        f"{guard_work_ms / (base * 1e3):.1%} of the baseline p50",
        f"worker start (spawn + import onnxruntime + load the model): {worker_start_s:.2f} s, once per "
        "worker",
        f"sha256 + external-data check of the 98 MiB model, uncached: {hash_s * 1e3:.0f} ms "
        "(cached afterwards by inode/size/mtime/ctime)",
    ]
    markdown = "\n".join(lines)
    print(markdown)
    out = args.results
    out.mkdir(parents=True, exist_ok=True)
    (out / "security.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "security.md").write_text(markdown + "\n")


if __name__ == "__main__":
    main()
