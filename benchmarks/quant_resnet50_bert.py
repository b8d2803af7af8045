"""`quant` against FP32 and against onnxruntime's own quantize_static, side by side in one run.

    python benchmarks/quant_resnet50_bert.py [--threads 1] [--runs 10] [--rounds 3] [--skip-bert]

ResNet-50 (tests/zoo.py, random seeded weights, BatchNorm unfolded): FP32, then `fuse,quant` (or `quant`
alone when the fuse plugin is not installed) through edgeplug.optimize, plus onnxruntime's quantize_static
with its defaults (no pre-processing, per-tensor, s8 activations) and as its documentation advises
(quant_pre_process, per-channel, u8 activations, s8 weights). BERT-base-sized encoder (transformers'
BertModel, random weights, sequence 128): FP32, `quant` dynamic, `quant` static, and the same two
onnxruntime baselines. Calibration data is random (uniform images; random token ids): the weights are
random too, so only speed, size and agreement with FP32 mean anything, not accuracy.

Latency: edgeplug.bench.measure (a fresh onnxruntime process per measurement, batch 1, the same intra-op
threads for every model); the models of one architecture alternate for --rounds rounds. The CPU is shared
with other jobs, so speedups are the median over rounds of the ratio measured within a round (the JSON
keeps every round), with the ratio of the best rounds beside it. Prints a Markdown table and writes benchmarks/results/quant.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
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
from edgeplug.verify import compare  # noqa: E402

from tests import zoo  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "quant.json"
TARGETS = {"resnet50": {"speedup": 3.0, "size_ratio": 3.9}, "bert_base": {"speedup": 2.5}}


def fuse_installed() -> bool:
    try:
        import edgeplug_fuse  # noqa: F401
    except ImportError:
        return False
    return "fuse" in edgeplug.plugins.names(edgeplug.load_plugins())


class Reader:
    """A CalibrationDataReader for onnxruntime's own quantize_static."""

    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self.samples, self.i = samples, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.samples):
            return None
        self.i += 1
        return self.samples[self.i - 1]


def ort_static(
    fp32: Path, out: Path, samples: list[dict[str, np.ndarray]], documented: bool
) -> tuple[Path, str]:
    """onnxruntime's quantize_static: defaults, or as documented (pre-process, per-channel, u8 activations)."""
    from onnxruntime.quantization import QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    note = ""
    if documented:
        source = out.with_name(out.stem + "-pre.onnx")
        try:
            quant_pre_process(str(fp32), str(source))
        except Exception as exc:  # symbolic shape inference fails on dynamic-axis encoders
            note = f"quant_pre_process with its defaults failed ({exc}); rerun with auto_merge=True"
            print(f"  {note}", file=sys.stderr, flush=True)
            quant_pre_process(str(fp32), str(source), auto_merge=True)
        quantize_static(
            str(source),
            str(out),
            Reader(samples),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        source.unlink()
    else:
        quantize_static(str(fp32), str(out), Reader(samples))
    return out, note


def fidelity(reference: Path, candidate: Path, samples: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Cosine (and top-1 agreement for logits) of each output against FP32 on the samples."""

    def run(path: Path) -> dict[str, np.ndarray]:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        outs = [sess.run(names, s) for s in samples]
        return {n: np.concatenate([o[i] for o in outs]) for i, n in enumerate(names)}

    metrics = compare(run(reference), run(candidate))
    return {
        name: {k: round(float(v), 5) for k, v in m.items() if k in ("cosine", "top1")}
        for name, m in metrics.items()
    }


def measure_rows(
    rows: list[dict[str, Any]], feed: dict[str, np.ndarray], threads: int, runs: int, rounds: int
) -> None:
    for row in rows:
        row["p50_rounds_ms"] = []
    for r in range(rounds):
        for row in rows:
            result = bench.measure(Path(row["path"]), threads, runs, warmup=3, inputs=feed)
            row["p50_rounds_ms"].append(round(result["p50_ms"], 3))
            row["memory_bytes"] = result["memory_bytes"]
        print(
            f"  round {r + 1}/{rounds}: "
            + ", ".join(f"{x['name']} {x['p50_rounds_ms'][-1]:.1f} ms" for x in rows),
            file=sys.stderr,
            flush=True,
        )
    base = rows[0]
    for row in rows:
        row["p50_ms"] = round(statistics.median(row["p50_rounds_ms"]), 3)
        row["best_p50_ms"] = round(min(row["p50_rounds_ms"]), 3)
        row["size_bytes"] = Path(row["path"]).stat().st_size
        # the CPU is shared: each round's ratio compares measurements taken seconds apart; the median of
        # those paired ratios is the headline, the ratio of the best rounds is shown beside it
        paired = [b / r for b, r in zip(base["p50_rounds_ms"], row["p50_rounds_ms"])]
        row["speedup_rounds"] = [round(x, 3) for x in paired]
        row["speedup"] = round(statistics.median(paired), 3)
        row["speedup_best"] = round(base["best_p50_ms"] / row["best_p50_ms"], 3)
        row["size_ratio"] = round(base["size_bytes"] / row["size_bytes"], 3)


def quant_step(report: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in report["steps"] if s["plugin"] == "quant")


def resnet50(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    fp32 = zoo.cached("resnet50")
    rng = np.random.default_rng(0)
    images = rng.random((24, 3, 224, 224), dtype=np.float32)
    data = work / "resnet_data.npz"
    np.savez(data, input=images)
    cal = [{"input": images[i : i + 1]} for i in range(16)]
    val = [{"input": images[i : i + 1]} for i in range(16, 24)]
    chain = ["fuse", "quant"] if fuse_installed() else ["quant"]
    t0 = time.perf_counter()
    result = edgeplug.optimize(fp32, chain, data=data, output_dir=work / "resnet_ours", on_fail="skip")
    ours_seconds = time.perf_counter() - t0
    step = quant_step(result.report)
    if step["status"] != "applied":
        raise SystemExit(f"quant step {step['status']}: {step.get('error')}")
    ours = result.output_dir / f"{fp32.stem}.onnx"
    print(f"  ours: {'+'.join(chain)} in {ours_seconds:.1f} s", file=sys.stderr, flush=True)
    ort_default, _ = ort_static(fp32, work / "resnet_ort_default.onnx", cal, documented=False)
    ort_doc, doc_note = ort_static(fp32, work / "resnet_ort_documented.onnx", cal, documented=True)
    rows = [
        {"name": "FP32", "path": str(fp32)},
        {
            "name": f"edgeplug {','.join(chain)} (static INT8)",
            "path": str(ours),
            "recipe": step["details"]["recipe"],
            "types": step["details"]["types"],
        },
        {"name": "onnxruntime quantize_static, defaults", "path": str(ort_default)},
        {"name": "onnxruntime quantize_static, as documented", "path": str(ort_doc), "note": doc_note},
    ]
    for row in rows[1:]:
        row["fidelity"] = fidelity(fp32, Path(row["path"]), val)
    measure_rows(rows, {"input": images[:1]}, args.threads, args.runs, args.rounds)
    return {
        "model": "resnet50",
        "calibration": "16 random uniform images (random weights: accuracy is meaningless)",
        "chain": chain,
        "rows": rows,
    }


def bert(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    fp32 = zoo.cached("bert_base")
    rng = np.random.default_rng(0)
    n, length = 24, 128
    mask = np.ones((n, length), np.int64)
    mask[:, 100:] = 0
    types = np.zeros((n, length), np.int64)
    types[:, 64:] = 1
    tokens = {
        "input_ids": rng.integers(0, 30522, (n, length)).astype(np.int64),
        "attention_mask": mask,
        "token_type_ids": types,
    }
    data = work / "bert_data.npz"
    np.savez(data, **tokens)
    samples = [{k: v[i : i + 1] for k, v in tokens.items()} for i in range(n)]
    cal, val = samples[:16], samples[16:]
    rows: list[dict[str, Any]] = [{"name": "FP32", "path": str(fp32)}]
    for mode in ("dynamic", "static"):
        t0 = time.perf_counter()
        result = edgeplug.optimize(
            fp32,
            ["quant"],
            data=data,
            options={"quant": {"mode": mode}},
            output_dir=work / f"bert_{mode}",
            on_fail="skip",
        )
        step = quant_step(result.report)
        print(
            f"  ours {mode}: {step['status']} in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        if step["status"] != "applied":
            print(f"  ours {mode} failed verification: {step.get('error')}", file=sys.stderr)
            continue
        rows.append(
            {
                "name": f"edgeplug quant {mode} INT8",
                "path": str(result.output_dir / f"{fp32.stem}.onnx"),
                "recipe": step["details"]["recipe"],
            }
        )
    path, _ = ort_static(fp32, work / "bert_ort_default.onnx", cal, documented=False)
    rows.append({"name": "onnxruntime quantize_static, defaults", "path": str(path)})
    path, note = ort_static(fp32, work / "bert_ort_documented.onnx", cal, documented=True)
    rows.append({"name": "onnxruntime quantize_static, as documented", "path": str(path), "note": note})
    for row in rows[1:]:
        row["fidelity"] = fidelity(fp32, Path(row["path"]), val)
    measure_rows(rows, samples[0], args.threads, args.runs, args.rounds)
    return {
        "model": "bert_base",
        "calibration": "16 random token sequences of 128 (random weights)",
        "rows": rows,
    }


def markdown(section: dict[str, Any]) -> str:
    lines = [
        f"**{section['model']}** ({section['calibration']})",
        "",
        "| model | p50 ms (median of rounds) | speedup vs FP32 (median of paired rounds) | speedup (best rounds) "
        "| size MB | size ratio | cosine vs FP32 | top-1 agreement |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in section["rows"]:
        fid = row.get("fidelity") or {}
        first = next(iter(fid.values()), {})
        cos = f"{first['cosine']:.4f}" if "cosine" in first else "-"
        top1 = f"{first['top1']:.3f}" if "top1" in first else "-"
        lines.append(
            f"| {row['name']} | {row['p50_ms']:.1f} | {row['speedup']:.2f}x | {row['speedup_best']:.2f}x | "
            f"{row['size_bytes'] / 1e6:.1f} | {row['size_ratio']:.2f}x | {cos} | {top1} |"
        )
    ours = [r for r in section["rows"] if r["name"].startswith("edgeplug")]
    for ref in (r for r in section["rows"] if r["name"].startswith("onnxruntime")):
        for mine in ours:
            ratio = statistics.median(a / b for a, b in zip(ref["p50_rounds_ms"], mine["p50_rounds_ms"]))
            lines.append(f"\n{mine['name']} vs {ref['name']}: {ratio:.2f}x faster (median of paired rounds)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-bert", action="store_true")
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    info = cpu_info()
    out: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv),
        "cpu": {k: info[k] for k in ("model", "machine", "flags", "vnni", "dotprod")},
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnx": onnx.__version__,
        "threads": args.threads,
        "runs": args.runs,
        "rounds": args.rounds,
        "targets": TARGETS,
        "sections": [],
    }
    # onnxruntime's symbolic shape inference leaves debug models in the current folder when it fails
    with tempfile.TemporaryDirectory(prefix="edgeplug-quant-bench-") as tmp, contextlib.chdir(tmp):
        work = Path(tmp)
        if not args.skip_resnet:
            print("ResNet-50", file=sys.stderr, flush=True)
            out["sections"].append(resnet50(work, args))
        if not args.skip_bert:
            print("BERT-base", file=sys.stderr, flush=True)
            out["sections"].append(bert(work, args))
        for section in out["sections"]:
            for row in section["rows"]:
                row["file"] = Path(row.pop("path")).name
    for section in out["sections"]:
        print(markdown(section) + "\n")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
