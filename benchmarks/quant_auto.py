"""quant's default (`fuse,quant`, mode auto) against onnxruntime's own recipes, on real models, in one run.

    python benchmarks/quant_auto.py                          # all models, writes benchmarks/results/quant_auto.*
    qemu-x86_64 -cpu Haswell python benchmarks/quant_auto.py --models digits --timer inprocess \
        --section avx2                                # the same on an emulated AVX2-only CPU, kept beside

Models: the model zoo's MobileNetV2 (top-1 agreement with FP32), YOLOv8n (detection mAP@0.5 against the FP32
model's boxes), MiniLM at sequence 128 (worst per-sentence cosine of the embedding, and nearest-neighbour
agreement), the Fashion-MNIST CNN (labelled accuracy), and BERT-base with random weights (tests/zoo.py,
worst per-sample cosine). Each zoo evaluation split is cut in two: the first half is the `--data` edgeplug
verifies and chooses with, the second half (never seen by calibration nor by the choice) scores every model.

onnxruntime's recipes: its documented static recipe (quant_pre_process, then quantize_static QDQ, per-channel,
u8 activations, s8 weights, reduce_range without VNNI, MinMax on the same calibration samples),
quantize_dynamic with its defaults, and quantize_dynamic per-channel. "onnxruntime best" is the fastest of
these whose task metric is at least edgeplug's minus noise (one held-out sample for a fraction of samples,
0.001 for cosine, 0.01 for mAP), or, when none is, the one with the best metric (marked).

Latency: all models of one row loaded in this process (intra-op threads = --threads), run in alternation
for --rounds rounds of --runs runs each; a ratio is the median over rounds of the ratio within a round.
`--timer inprocess` makes edgeplug's auto time its candidates in this process too (the core's bench starts a
child process, which under qemu-user would run natively, not on the emulated CPU).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("mobilenetv2", "yolov8n", "minilm", "fashion_cnn", "bert_base")  # also: digits (examples/)
Sample = dict[str, np.ndarray]


# -- data ---------------------------------------------------------------------------------------------
def load_npz(path: Path, limit: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    with np.load(path) as npz:
        arrays = {k: npz[k][:limit] for k in npz.files if k != "labels"}
        labels = npz["labels"][:limit] if "labels" in npz.files else None
    return arrays, labels


def save_npz(path: Path, arrays: Mapping[str, np.ndarray], labels: np.ndarray | None = None) -> Path:
    np.savez(path, **arrays, **({"labels": labels} if labels is not None else {}))
    return path


def samples_of(arrays: Mapping[str, np.ndarray]) -> list[Sample]:
    count = len(next(iter(arrays.values())))
    return [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(count)]


def bert_tokens(count: int, length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, length + 1, count)
    return {
        "input_ids": rng.integers(0, 30522, (count, length)),
        "attention_mask": (np.arange(length)[None] < lengths[:, None]).astype(np.int64),
        "token_type_ids": np.zeros((count, length), np.int64),
    }


def prepare_model(name: str, folder: Path, limits: dict[str, int]) -> dict[str, Any]:
    """The model, its calibration/validation .npz, the held-out samples and labels, and its task metric."""
    if name == "digits":  # the example CNN shipped in examples/ (small and stable: the emulated run uses it)
        calibration, _ = load_npz(ROOT / "examples" / "digits_train.npz", limits["calibration"])
        evaluation, labels = load_npz(ROOT / "examples" / "digits_test.npz")
        half = len(next(iter(evaluation.values()))) // 2
        validation = {k: v[: min(half, limits["validation"])] for k, v in evaluation.items()}
        held_out = {k: v[half : half + limits["held_out"]] for k, v in evaluation.items()}
        labels = None if labels is None else labels[half : half + limits["held_out"]]
        return {
            "model": ROOT / "examples" / "digits_cnn.onnx",
            "calibration": save_npz(folder / "digits-calibration.npz", calibration),
            "validation": save_npz(folder / "digits-validation.npz", validation),
            "held_out": samples_of(held_out),
            "labels": labels,
            "metric": "accuracy",
        }
    if name == "bert_base":
        from tests import zoo as random_zoo

        model = random_zoo.cached("bert_base")
        calibration = bert_tokens(limits["calibration"], 128, 0)
        validation = bert_tokens(limits["validation"], 128, 1)
        held_out, labels = bert_tokens(limits["held_out"], 128, 2), None
        metric = "cosine"
    else:
        from benchmarks.zoo import get

        entry = get(name)
        model = entry.model
        calibration, _ = load_npz(entry.data["calibration"], limits["calibration"])
        evaluation, labels = load_npz(entry.data["evaluation"])
        half = len(next(iter(evaluation.values()))) // 2
        validation = {k: v[: min(half, limits["validation"])] for k, v in evaluation.items()}
        held_out = {k: v[half : half + limits["held_out"]] for k, v in evaluation.items()}
        labels = None if labels is None else labels[half : half + limits["held_out"]]
        metric = entry.metric or "cosine"
    return {
        "model": Path(model),
        "calibration": save_npz(folder / f"{name}-calibration.npz", calibration),
        "validation": save_npz(folder / f"{name}-validation.npz", validation),
        "held_out": samples_of(held_out),
        "labels": labels,
        "metric": metric,
    }


# -- onnxruntime's recipes ---------------------------------------------------------------------------
class Reader:
    def __init__(self, samples: list[Sample]) -> None:
        self.samples, self.index = samples, 0

    def get_next(self) -> Sample | None:
        if self.index >= len(self.samples):
            return None
        self.index += 1
        return self.samples[self.index - 1]

    def rewind(self) -> None:
        self.index = 0


def ort_recipes(model: Path, calibration: Path, folder: Path, vnni: bool) -> dict[str, Path]:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    made: dict[str, Path] = {}
    arrays, _ = load_npz(calibration)
    pre = folder / "ort-pre.onnx"
    try:
        quant_pre_process(str(model), str(pre), auto_merge=True)
        static = folder / "ort-static.onnx"
        quantize_static(
            str(pre),
            str(static),
            Reader(samples_of(arrays)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=not vnni,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        made["ort static (documented)"] = static
    except Exception as exc:  # a recipe that fails on a model is reported, not fatal
        print(f"  onnxruntime static recipe failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    for label, per_channel in (("ort dynamic (defaults)", False), ("ort dynamic per-channel", True)):
        out = folder / f"ort-dynamic-{int(per_channel)}.onnx"
        try:
            quantize_dynamic(str(model), str(out), per_channel=per_channel)
            made[label] = out
        except Exception as exc:
            print(f"  onnxruntime {label} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return made


# -- measuring ----------------------------------------------------------------------------------------
def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def outputs(sess: ort.InferenceSession, samples: list[Sample]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    runs = [sess.run(names, s) for s in samples]
    return {n: np.concatenate([r[i] for r in runs]) for i, n in enumerate(names)}


def task_metrics(
    metric: str, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], labels: np.ndarray | None
) -> dict[str, float | None]:
    from edgeplug.metrics import Evidence, builtin_specs

    specs = builtin_specs()
    count = len(next(iter(reference.values())))
    wanted = list(dict.fromkeys([metric, "cosine"] + (["embedding"] if metric == "embedding" else [])))
    found = {m: specs[m].compute(Evidence(reference, candidate, labels, count)).value for m in wanted}
    if metric == "embedding":  # the MiniLM figure: the worst per-sentence cosine of the embedding
        found = {"cosine": found["cosine"], "embedding": found["embedding"]}
    return {k: (None if v is None else round(float(v), 5)) for k, v in found.items()}


def time_alternated(
    paths: dict[str, Path], feed: Sample, threads: int, rounds: int, runs: int
) -> dict[str, Any]:
    sessions = {label: session(path, threads) for label, path in paths.items()}
    for sess in sessions.values():
        for _ in range(3):
            sess.run(None, feed)
    per_round: dict[str, list[float]] = {label: [] for label in sessions}
    for _ in range(rounds):
        for label, sess in sessions.items():
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                sess.run(None, feed)
                times.append((time.perf_counter() - start) * 1000)
            per_round[label].append(float(np.median(times)))
    return per_round


def ratio(per_round: dict[str, list[float]], numerator: str, denominator: str) -> float:
    return statistics.median(a / b for a, b in zip(per_round[numerator], per_round[denominator]))


def inprocess_timer(threads: int, runs: int = 20) -> Callable[..., float]:
    def measure(path: Path, inputs: Mapping[str, np.ndarray]) -> float:
        sess = session(Path(path), threads)
        feed = dict(inputs)
        for _ in range(3):
            sess.run(None, feed)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            sess.run(None, feed)
            times.append((time.perf_counter() - start) * 1000)
        return float(np.median(times))

    return measure


# -- one model ----------------------------------------------------------------------------------------
def run_model(name: str, args: argparse.Namespace, folder: Path, cpu: dict[str, Any]) -> dict[str, Any]:
    import edgeplug

    print(f"== {name}", file=sys.stderr)
    limits = {"calibration": args.calibration, "validation": args.validation, "held_out": args.held_out}
    spec = prepare_model(name, folder, limits)
    start = time.perf_counter()
    result = edgeplug.optimize(
        spec["model"],
        ["fuse", "quant"],
        data=spec["validation"],
        calibration_data=str(spec["calibration"]),
        output_dir=folder / f"{name}-edgeplug",
        threads=args.threads,
        quiet=not args.verbose,
    )
    seconds = time.perf_counter() - start
    quant = next(s for s in result.report["steps"] if s["plugin"] == "quant")
    ours = folder / f"{name}-edgeplug" / f"{spec['model'].stem}.onnx"
    paths = {"fp32": spec["model"], "edgeplug fuse,quant": ours}
    paths.update(ort_recipes(spec["model"], spec["calibration"], folder, bool(cpu.get("vnni"))))
    reference = outputs(session(spec["model"], args.threads), spec["held_out"])
    scores = {
        label: task_metrics(
            spec["metric"], reference, outputs(session(p, args.threads), spec["held_out"]), spec["labels"]
        )
        for label, p in paths.items()
    }
    per_round = time_alternated(paths, spec["held_out"][0], args.threads, args.rounds, args.runs)
    rows = []
    for label, path in paths.items():
        rows.append(
            {
                "variant": label,
                "p50_ms": round(statistics.median(per_round[label]), 3),
                "speedup_vs_fp32": round(ratio(per_round, "fp32", label), 3),
                "size_bytes": path.stat().st_size,
                "metrics": scores[label],
            }
        )
    key = "cosine" if spec["metric"] == "embedding" else spec["metric"]
    ours_score = scores["edgeplug fuse,quant"][key]
    # "keeps the task metric": a fraction of samples may differ by one held-out sample; cosine and mAP by noise
    slack = {"cosine": 0.001, "detection": 0.01}.get(key, 1.0 / max(len(spec["held_out"]), 1))
    ort_labels = [label for label in paths if label.startswith("ort")]
    keeping = [
        label
        for label in ort_labels
        if scores[label][key] is not None
        and ours_score is not None
        and scores[label][key] >= ours_score - slack
    ]
    if keeping:
        best = min(keeping, key=lambda label: statistics.median(per_round[label]))
        best_note = "fastest onnxruntime recipe that keeps the task metric"
    else:
        best = max(ort_labels, key=lambda label: scores[label][key] or -1.0)
        best_note = "no onnxruntime recipe keeps the task metric; its best-scoring one"
    return {
        "model": name,
        "task_metric": spec["metric"],
        "held_out_samples": len(spec["held_out"]),
        "edgeplug": {
            "chosen": quant["details"].get("chosen"),
            "candidates": quant["details"].get("candidates"),
            "repair": quant["details"].get("repair"),
            "seconds": round(seconds, 1),
            "verification_passed": quant["verification"]["passed"],
        },
        "rows": rows,
        "ort_best": best,
        "ort_best_note": best_note,
        "edgeplug_vs_ort_best_speed": round(ratio(per_round, best, "edgeplug fuse,quant"), 3),
        "edgeplug_vs_ort_best_metric": None
        if ours_score is None or scores[best][key] is None
        else round(ours_score - scores[best][key], 5),
        "latency_rounds_ms": {k: [round(v, 3) for v in vs] for k, vs in per_round.items()},
    }


# -- report -------------------------------------------------------------------------------------------
def cpu_report() -> dict[str, Any]:
    from edgeplug.plugin_api import cpu_info

    info = dict(cpu_info())
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features
    info["runtime_features"] = sorted(k for k, v in features.items() if v and k.startswith(("AVX", "FMA")))
    info["runtime_vnni"] = bool(features.get("AVX512VNNI"))
    return info


def markdown(sections: dict[str, dict[str, Any]]) -> str:
    lines = ["# quant's default vs onnxruntime's recipes", ""]
    for name, record in sections.items():
        lines += [f"# run: {name}", "", *section_lines(record)]
    return "\n".join(lines) + "\n"


def section_lines(record: dict[str, Any]) -> list[str]:
    lines = [
        f"Command: `{record['command']}`  ",
        f"Date: {record['date']}  ",
        f"CPU: {record['cpu']['model']}; /proc/cpuinfo flags: {', '.join(record['cpu']['flags'])}; "
        f"runtime (CPUID, what onnxruntime dispatches on): {', '.join(record['cpu']['runtime_features'])}  ",
        f"Threads: {record['threads']}; rounds x runs: {record['rounds']} x {record['runs']}; onnxruntime "
        f"{record['onnxruntime']}",
        "",
    ]
    for entry in record["results"]:
        if "error" in entry:
            lines += [f"## {entry['model']}", "", f"not measured: {entry['error']}", ""]
            continue
        chosen = entry["edgeplug"]["chosen"] or {}
        lines += [
            f"## {entry['model']} (task metric: {entry['task_metric']}, {entry['held_out_samples']} held-out samples)",
            "",
            f"edgeplug chose **{chosen.get('recipe')}** ({chosen.get('origin')}) in {entry['edgeplug']['seconds']} s. "
            f"onnxruntime best: {entry['ort_best']} ({entry['ort_best_note']}). "
            f"edgeplug vs it: **{entry['edgeplug_vs_ort_best_speed']:.2f}x** speed, metric difference "
            f"{entry['edgeplug_vs_ort_best_metric']}.",
            "",
            "| variant | p50 ms | speedup vs FP32 | size MB | metrics (held-out) |",
            "|---|---:|---:|---:|---|",
        ]
        for row in entry["rows"]:
            metrics = ", ".join(f"{k} {v}" for k, v in row["metrics"].items())
            lines.append(
                f"| {row['variant']} | {row['p50_ms']:.2f} | {row['speedup_vs_fp32']:.2f}x | "
                f"{row['size_bytes'] / 1e6:.1f} | {metrics} |"
            )
        lines.append("")
        cands = entry["edgeplug"]["candidates"] or []
        if cands:
            lines += [
                "auto's candidates:",
                "",
                "| recipe | origin | latency ms | status | why |",
                "|---|---|---:|---|---|",
            ]
            for c in cands:
                latency = "-" if c.get("latency_ms") is None else f"{c['latency_ms']:.2f}"
                why = str(c.get("why", "")).replace("|", "/")[:160]
                lines.append(f"| {c['recipe']} | {c['origin']} | {latency} | {c['status']} | {why} |")
            lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--calibration", type=int, default=128, help="calibration samples at most")
    parser.add_argument(
        "--validation", type=int, default=64, help="samples edgeplug verifies and chooses with"
    )
    parser.add_argument("--held-out", type=int, default=64, help="samples every variant is scored on")
    parser.add_argument("--timer", choices=("bench", "inprocess"), default="bench")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quant_auto"))
    parser.add_argument(
        "--section",
        default="native",
        help="name of this run in the results file; other sections already there are kept (e.g. native, avx2)",
    )
    parser.add_argument("--merge", help="instead of measuring: put this earlier results JSON under --section")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.merge:
        earlier = json.loads(Path(args.merge).read_text())
        return write(Path(args.out), args.section, earlier.get("sections", {}).get(args.section, earlier))
    if args.timer == "inprocess":
        from edgeplug_quantize import timing

        timing.timer_for = lambda ctx: inprocess_timer(ctx.threads)
    cpu = cpu_report()
    print(f"CPU: {cpu['model']}; flags {cpu['flags']}; runtime {cpu['runtime_features']}", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory(prefix="quant-auto-") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            try:
                results.append(run_model(name, args, Path(tmp), cpu))
            except Exception as exc:  # one model that cannot be built or run does not lose the others
                print(f"  {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                results.append({"model": name, "error": f"{type(exc).__name__}: {exc}"})
    record = {
        "command": " ".join(
            shlex.quote(a) for a in ["python", "benchmarks/quant_auto.py", *(argv or sys.argv[1:])]
        ),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu,
        "threads": args.threads,
        "rounds": args.rounds,
        "runs": args.runs,
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "results": results,
    }
    return write(Path(args.out), args.section, record)


def write(out: Path, section: str, record: dict[str, Any]) -> int:
    """Store `record` as `section` of the results (other sections kept) and regenerate the .md."""
    path = out.with_suffix(".json")
    sections: dict[str, Any] = {}
    if path.exists():
        sections = json.loads(path.read_text()).get("sections", {})
    sections[section] = record
    out.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"sections": sections}, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown(sections))
    print(markdown({section: record}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
