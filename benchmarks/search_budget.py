"""What `edgeplug search` finds in a fixed time against the best hand-written chain, at the same budget.

For each model (the zoo's Fashion-MNIST CNN and MobileNetV2, real weights): a search of `--minutes`
(default 20) with `--budget top1=0.99`, then the hand-written chains of the README (`fuse`, `fuse,quant`)
run with the same budget; the latency of the search's best model against the best hand-written chain that
meets the budget is measured alternated (edgeplug.bench.compare, fresh process per model per round).
Writes benchmarks/results/search.json and .md with the CPU flags, the command and the date.

    python benchmarks/search_budget.py [--models fashion_cnn mobilenetv2] [--minutes 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeplug.bench import compare  # noqa: E402
from edgeplug.cpu import cpu_info  # noqa: E402

from benchmarks import zoo  # noqa: E402

HAND_CHAINS = ("fuse", "fuse,quant")
BUDGET = "top1=0.99"


def edgeplug(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeplug.cli", *args], capture_output=True, text=True)


def evaluation_subset(entry: zoo.ZooModel, folder: Path, count: int) -> Path:
    """The first `count` evaluation samples (a fair sample of the split), without labels: top-1 agreement
    with the FP32 model is the budget, not labelled accuracy."""
    import numpy as np

    with np.load(entry.data["evaluation"]) as npz:
        arrays = {k: npz[k][:count] for k in npz.files if k != "labels"}
    path = folder / "evaluation.npz"
    np.savez(path, **arrays)
    return path


def hand_written(model: Path, data: Path, calibration: Path, folder: Path) -> list[dict[str, Any]]:
    rows = []
    for chain in HAND_CHAINS:
        out = folder / chain.replace(",", "-")
        proc = edgeplug(
            "run", str(model), "--plugins", chain, "--data", str(data), "--calibration-data", str(calibration),
            "--budget", BUDGET, "--output-dir", str(out), "--quiet",
        )  # fmt: skip
        report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
        rows.append(
            {
                "chain": chain,
                "passed": proc.returncode == 0,
                "model": str(out / model.name) if proc.returncode == 0 else None,
                "error": proc.stderr.strip().splitlines()[-1] if proc.returncode else None,
                "top1": _final_top1(report),
            }
        )
    return rows


def _final_top1(report: dict[str, Any]) -> float | None:
    for step in reversed(report.get("steps", [])):
        found = (step.get("verification") or {}).get("metrics_vs_original", {}).get("top1")
        if found and step.get("status") == "applied":
            return found.get("value")
    return None


def one_model(name: str, minutes: float, rounds: int, folder: Path, samples: int) -> dict[str, Any]:
    entry = zoo.get(name)
    model = entry.models.get("model_bn", entry.model) if name == "fashion_cnn" else entry.model
    data = evaluation_subset(entry, folder, samples)
    calibration = entry.data["calibration"]
    search_out = folder / "search"
    command = [
        "search", str(model), "--data", str(data), "--calibration-data", str(calibration), "--budget", BUDGET,
        "--time-budget", f"{minutes:g}m", "--output-dir", str(search_out), "--cache", str(folder / "cache"),
        "--quiet",
    ]  # fmt: skip
    started = dt.datetime.now(dt.timezone.utc)
    proc = edgeplug(*command)
    seconds = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    report = json.loads((search_out / "report.json").read_text())
    section = report["search"]
    hand = hand_written(model, data, calibration, folder / "hand")
    result: dict[str, Any] = {
        "model": name,
        "search_exit": proc.returncode,
        "search_seconds": round(seconds, 1),
        "trials": len(section["trials"]),
        "cache_hits": section["cache"]["hits"],
        "best": section.get("best"),
        "held_out": section.get("held_out"),
        "hand_written": hand,
        "search_command": "edgeplug " + shlex.join(command),
    }
    passing = [h for h in hand if h["passed"]]
    if proc.returncode == 0 and passing:
        best_path = search_out / model.name
        paths = [Path(h["model"]) for h in passing] + [best_path]
        labels = [h["chain"] for h in passing] + ["search best"]
        rows = compare(paths, threads=1, runs=100, warmup=10, rounds=rounds, labels=labels, progress=False)
        result["latency"] = rows
        hand_best = min(rows[:-1], key=lambda r: r["p50_ms"])
        result["speedup_vs_best_hand_written"] = hand_best["p50_ms"] / rows[-1]["p50_ms"]
        result["best_hand_written"] = hand_best["label"]
        result["within_spread"] = abs(hand_best["p50_ms"] - rows[-1]["p50_ms"]) <= max(
            hand_best["spread_ms"], rows[-1]["spread_ms"]
        )
    return result


def markdown(results: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [
        f"# edgeplug search vs the best hand-written chain ({BUDGET}, top-1 agreement with FP32)",
        "",
        f"{header['date']} · {header['cpu']} · command: `{header['command']}`",
        "",
        "| model | search | trials | cached steps | best found | best hand-written | speedup | held-out check |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        best = (r.get("best") or {}).get("label", "none met the budget")
        speed = f"{r['speedup_vs_best_hand_written']:.2f}x" if "speedup_vs_best_hand_written" in r else "-"
        if r.get("within_spread"):
            speed += " (within the run-to-run spread)"
        held = r.get("held_out") or {}
        lines.append(
            f"| {r['model']} | {r['search_seconds'] / 60:.1f} min | {r['trials']} | {r['cache_hits']} | `{best}` | "
            f"{r.get('best_hand_written', '-')} | {speed} | {'meets' if held.get('passed') else 'misses'} "
            f"{held.get('metrics', {})} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fashion_cnn", "mobilenetv2"])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=400, help="evaluation samples (split by the search)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    info = cpu_info()
    header = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": f"{info['model']} [{' '.join(info['flags'])}]",
        "python": platform.python_version(),
        "command": "python benchmarks/search_budget.py " + shlex.join(sys.argv[1:]),
    }
    print(header["cpu"], flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgeplug-search-bench-") as tmp:
        for name in args.models:
            folder = Path(tmp) / name
            folder.mkdir()
            results.append(one_model(name, args.minutes, args.rounds, folder, args.samples))
            print(
                json.dumps({k: v for k, v in results[-1].items() if k != "latency"}, default=str), flush=True
            )
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "search.json").write_text(
        json.dumps({**header, "results": results}, indent=2, default=str)
    )
    text = markdown(results, header)
    (args.results / "search.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
