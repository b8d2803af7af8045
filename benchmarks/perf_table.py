"""The performance table of the README: real trained models (and three random-weight architecture rows) as
FP32, through every edgeplug chain with its default options, and through the peers a user would try instead,
all in one run on this CPU, with the task metric beside speed, size and memory.

    nice -n 10 python benchmarks/perf_table.py [--models mobilenetv2,yolov8n] [--rounds 3] [--readme]
    python benchmarks/perf_table.py --render-only --readme    # .md and README block from the stored JSON
    nice -n 10 python benchmarks/perf_table.py --models fashion_cnn --rounds 2 --out /tmp/perf_smoke  # smoke

Models (benchmarks/perf_models.py): the model zoo's MobileNetV2 (ImageNet weights; top-1 agreement with FP32
on natural-photo crops, which have no labels), YOLOv8n (mAP@0.5 of the boxes against the FP32 model's boxes),
MiniLM at sequence length 128 (worst per-sentence cosine of the embedding and nearest-neighbour agreement),
the Fashion-MNIST CNN (labelled accuracy); and tests/zoo.py's ResNet-50, YOLOv5s and BERT-base with random
weights (speed and size only: their cosine with FP32 is fidelity, not accuracy), fed the zoo's photos and
sentences. The first half of each evaluation split is edgeplug's validation data, the second half scores.

Variants (benchmarks/perf_variants.py): FP32; `edgeplug run --plugins fuse`, `fuse,quant` and, labelled as
pruned, `fuse,prune,quant`, each with default options; onnxruntime's quantize_static with its defaults and as
its documentation advises, quantize_dynamic with its defaults and per-channel; onnxslim. A variant that cannot
be made, run or timed is a row with its error; a model that cannot be prepared is an entry with its error.

Latency: batch 1, every variant measured once per round in a fresh process (edgeplug.bench.measure), the
variants alternated within a round and the order rotated between rounds; a p50 is the median over rounds and
a ratio the median of the per-round ratios. "Against the best like peer" (benchmarks/perf_verdict.py): fuse
against onnxslim (float), fuse,quant against onnxruntime's best recipe (int8: the fastest whose task metric is
at least ours, to the metric's resolution on the held-out samples; when none reaches it, the float model, what
a user of onnxruntime's tool ships at our metric, with the best-scoring recipe's speed named in the verdict), the
pruned chain against nobody (no peer prunes).

Asserts issue 14's target (exit 1 on a miss, naming the model; the results are written first): fuse,quant with
default options is at least as fast as onnxruntime's best recipe at an equal or better task metric on every
real model and BERT-base, at least 1.2x faster on one of them, and MiniLM keeps a worst cosine of 0.99 on
unseen sentences. The zoo entries must be built (`python -m benchmarks.zoo build`): this script builds none.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.measure import RESULTS, median_of, paired_ratio, report_checks, stamp, write_results  # noqa: E402
from benchmarks.perf_models import (  # noqa: E402
    SPECS,
    Spec,
    outputs_of,
    prepare,
    task_metrics,
    ties,
    zoo_problem,
)
from benchmarks.perf_render import render_markdown, render_readme, write_readme  # noqa: E402
from benchmarks.perf_variants import CHAINS, Variant, edgeplug_variant, one_line, peer_variants  # noqa: E402
from benchmarks.perf_verdict import derive, rounds_of, targets  # noqa: E402

SCRIPT = "benchmarks/perf_table.py"
VERSIONS = ("numpy", "onnx", "onnxruntime", "onnxslim", "edgeplug", "torch", "transformers")
OUT = RESULTS / "perf_table"
MEASURE_TIMEOUT_S = 900.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- one model -------------------------------------------------------------------------------------
def measure_model(spec: Spec, args: argparse.Namespace, folder: Path, vnni: bool) -> dict[str, Any]:
    """Every variant of one model: made, scored on the held-out samples, timed in alternated rounds."""
    from edgeplug.bench import measure
    from edgeplug.model import file_size

    stages: dict[str, float] = {}
    clock, cpu = time.perf_counter(), cpu_seconds()

    def stage(name: str) -> None:  # wall and CPU seconds (this process and its children): load shows as a gap
        nonlocal clock, cpu
        now, now_cpu = time.perf_counter(), cpu_seconds()
        stages[name], stages[f"{name} (CPU)"] = round(now - clock, 1), round(now_cpu - cpu, 1)
        clock, cpu = now, now_cpu
        log(f"  [{spec.name}] {name}: {stages[name]:.0f} s wall, {stages[f'{name} (CPU)']:.0f} s CPU")

    log(f"== {spec.name}")
    prepared = prepare(spec, folder)
    variants = [Variant("FP32", "fp32", "-", prepared.model, "the input model")]
    for chain in CHAINS:
        variant = edgeplug_variant(chain, prepared, folder, args.threads, args.chain_timeout)
        used = f"{variant.seconds:.0f} s, {variant.details.get('cpu_seconds', 0):.0f} s CPU"
        log(f"  edgeplug {chain}: {variant.error or variant.recipe} ({used})")
        variants.append(variant)
    stage("edgeplug runs")
    variants += peer_variants(spec, prepared, folder, vnni, args.threads)
    stage("peers")

    reference = outputs_of(prepared.model, prepared.held_out, args.threads)
    scores: dict[str, dict[str, Any]] = {}
    for variant in variants:
        if variant.path is None:
            continue
        try:
            got = outputs_of(variant.path, prepared.held_out, args.threads)
            scores[variant.label] = task_metrics(spec, reference, got, prepared.labels)
        except Exception as exc:
            variant.error, variant.path = f"does not run on the held-out samples: {one_line(exc)}", None
    stage(f"scoring on {len(prepared.held_out)} held-out samples")

    feed = prepared.held_out[0]
    runs = args.runs
    if runs is None:  # about --timed-ms of timed runs per measurement
        pilot = measure(prepared.model, args.threads, 5, 2, inputs=feed, timeout=MEASURE_TIMEOUT_S)
        runs = int(min(5000, max(10, math.ceil(args.timed_ms / max(pilot["p50_ms"], 1e-3)))))
    measured = timed_rounds(variants, args.rounds, args.threads, runs, feed)
    stage(f"timing: {args.rounds} rounds x {runs} runs")

    rows = []
    for variant in variants:
        row: dict[str, Any] = {
            "label": variant.label,
            "group": variant.group,
            "by": variant.by,
            "recipe": variant.recipe,
            "seconds_to_make": None if variant.seconds is None else round(variant.seconds, 1),
            "error": variant.error,
            "details": variant.details,
            "metrics": scores.get(variant.label, {}) if variant.error is None else {},
        }
        if variant.error is None:
            rounds = measured[variant.label]
            row.update(
                {
                    "size_bytes": file_size(variant.path),
                    "p50_ms": round(median_of(rounds), 4),
                    "p90_ms": round(median_of(rounds, "p90_ms"), 4),
                    "rounds_p50_ms": [round(float(m["p50_ms"]), 4) for m in rounds],
                    "memory_bytes": int(np.median([m["memory_bytes"] for m in rounds])),
                }
            )
        rows.append(row)
    if rows[0].get("error"):
        raise RuntimeError(f"the FP32 model could not be timed: {rows[0]['error']}")
    for row in rows:
        if "rounds_p50_ms" in row:
            row["speedup_vs_fp32"] = paired_ratio(rounds_of(rows[0]), rounds_of(row)).as_dict()
    return {
        **model_entry(spec),
        "model_file": prepared.model.name,
        "data": prepared.data,
        "ties": ties(spec, len(prepared.held_out)),
        "runs": runs,
        "stage_seconds": stages,
        "rows": rows,
    }


def cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (edgeplug runs, measuring processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def model_entry(spec: Spec) -> dict[str, Any]:
    return {
        "about": spec.about,
        "random_weights": spec.random_weights,
        "metrics": list(spec.metrics),
        "judged_by": list(spec.judged_by),
    }


def timed_rounds(
    variants: Sequence[Variant], rounds: int, threads: int, runs: int, feed: Mapping[str, np.ndarray]
) -> dict[str, list[dict[str, Any]]]:
    """benchmarks.measure.alternate, except that a variant whose measurement fails becomes an error row and
    leaves the remaining rounds (the others stay paired round by round)."""
    from edgeplug.bench import measure

    live = [v for v in variants if v.error is None and v.path is not None]
    measured: dict[str, list[dict[str, Any]]] = {v.label: [] for v in live}
    for r in range(rounds):
        shift = r % len(live) if live else 0
        for variant in live[shift:] + live[:shift]:
            if variant.error is not None:
                continue
            try:
                result = measure(variant.path, threads, runs, 3, inputs=dict(feed), timeout=MEASURE_TIMEOUT_S)
                measured[variant.label].append(result)
            except Exception as exc:
                variant.error = f"timing failed in round {r + 1}: {one_line(exc)}"
                log(f"  {variant.label}: {variant.error}")
        log(f"  round {r + 1}/{rounds} timed")
    return measured


# -- main ------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure the README's performance table (see the docstring)."
    )
    parser.add_argument(
        "--models", default=",".join(SPECS), help=f"comma-separated, from: {', '.join(SPECS)}"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternated rounds of every variant (default 3)"
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="timed runs per measurement (default: ~--timed-ms)"
    )
    parser.add_argument(
        "--timed-ms", type=float, default=1500.0, help="timed work per measurement (default 1500)"
    )
    parser.add_argument(
        "--chain-timeout",
        type=float,
        default=3600.0,
        help="seconds one `edgeplug run` may take before it is an error row (default 3600)",
    )
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument(
        "--merge", action="store_true", help="keep the stored entries of models not measured now"
    )
    parser.add_argument(
        "--readme", action="store_true", help="rewrite README.md's perf block from the results"
    )
    parser.add_argument(
        "--render-only", action="store_true", help="measure nothing: render the stored results"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=OUT,
        help="results stem: STEM.json and STEM.md (default benchmarks/results/perf_table)",
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="keep the variants' files here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in SPECS]
    if unknown or not args.models:
        parser.error(f"unknown model(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(SPECS)}")
    if (
        args.rounds < 2
        or args.threads < 1
        or (args.runs is not None and args.runs < 1)
        or args.timed_ms <= 0
        or args.chain_timeout <= 0
    ):
        parser.error(
            "--rounds must be at least 2 (ratios are paired by round), --threads and --runs at least 1, "
            "--timed-ms and --chain-timeout above 0"
        )
    args.out = args.out.resolve()
    args.work = None if args.work is None else args.work.resolve()
    return args


class NotComparable(Exception):
    """Stored results that cannot share a table with this run's."""


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    json_path = args.out.with_suffix(".json")
    if args.render_only:
        try:
            record = derive(json.loads(json_path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log(
                f"perf_table: cannot render {json_path} ({one_line(exc)}); measure first (without --render-only)"
            )
            return 2
    else:
        problems = [p for name in args.models if (p := zoo_problem(name))]
        if problems:
            log(f"perf_table: {problems[0]}")
            return 2
        try:
            record = run(args, json_path, list(sys.argv[1:] if argv is None else argv))
        except NotComparable as exc:
            log(f"perf_table: {exc}")
            return 2
    write_results(args.out, record, render_markdown(record))
    if args.readme:
        write_readme(record)
    print(render_readme(record))
    return report_checks(targets(record))


def stored_entries(json_path: Path, header: Mapping[str, Any], threads: int) -> dict[str, Any]:
    """--merge: the stored entries, each with the command and date it was measured by; refused when they
    were measured on another CPU or thread count."""
    if not json_path.exists():
        return {}
    stored = json.loads(json_path.read_text())
    same_cpu = (stored["cpu"].get("model"), stored["cpu"].get("flags")) == (
        header["cpu"].get("model"),
        header["cpu"].get("flags"),
    )
    if not same_cpu or stored.get("threads") != threads or "rounds" not in stored:
        raise NotComparable(f"{json_path} was measured on another CPU, thread count or format: not merged")
    return {
        name: {
            **entry,
            "command": entry.get("command", stored["command"]),
            "date": entry.get("date", stored["date"]),
        }
        for name, entry in stored["models"].items()
    }


def run(args: argparse.Namespace, json_path: Path, argv: list[str]) -> dict[str, Any]:
    header = stamp(SCRIPT, argv, VERSIONS)
    record: dict[str, Any] = {**header, "threads": args.threads, "rounds": args.rounds, "models": {}}
    entries = stored_entries(json_path, header, args.threads) if args.merge else {}
    vnni = bool(header["cpu"].get("vnni"))
    with tempfile.TemporaryDirectory(prefix="perf-table-") as tmp:
        work = args.work or Path(tmp)
        for name in args.models:
            folder = work / name
            folder.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            try:
                entry = measure_model(SPECS[name], args, folder, vnni)
            except Exception as exc:  # one model that cannot be measured does not end the run
                entry = {**model_entry(SPECS[name]), "error": one_line(exc), "rows": []}
                log(f"  {name}: not measured: {entry['error']}")
            entry.update({"rounds": args.rounds, "command": header["command"], "date": header["date"]})
            log(f"== {name}: {time.perf_counter() - start:.0f} s")
            entries[name] = entry
            record["models"] = {m: entries[m] for m in SPECS if m in entries}
            write_results(args.out, derive(record), render_markdown(record))  # survives an interruption
    return derive(record)


if __name__ == "__main__":
    raise SystemExit(main())
