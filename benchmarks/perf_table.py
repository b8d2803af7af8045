"""The performance table of the README: ResNet-50, YOLOv5s and BERT-base, FP32 against the best edgeplug
chain and against the peers a user would try instead, side by side in one run on this CPU.

    python benchmarks/perf_table.py [--models resnet50,yolov5s,bert_base] [--runs 30] [--threads 1,2]

Writes benchmarks/results/perf_table.json and perf_table.md. Random weights: speed, size and memory only;
a chain that prunes says that accuracy was not measured for the architecture.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeplug import Model  # noqa: E402
from edgeplug.bench import measure  # noqa: E402
from edgeplug.cpu import cpu_info  # noqa: E402
from edgeplug.progress import progress  # noqa: E402

from tests import zoo  # noqa: E402

# The chain for each model and why. Pruning random weights cannot be judged for accuracy, so the pruning
# step's tolerance is loosened (written into the report) and the table says accuracy was not measured.
CHAINS: dict[str, dict[str, Any]] = {
    "resnet50": {
        "builder": zoo.resnet50,
        "plugins": "fuse,prune,quant",
        "options": [
            "prune.mode=structured",
            "prune.sparsity=0.5",
            "prune.min_cosine=0",
            "quant.min_cosine=0.9",
        ],
        "kind": "cnn",
        "also": {"plugins": "fuse,quant", "options": []},
    },
    "yolov5s": {
        "builder": zoo.yolov5s,
        "plugins": "fuse,prune,quant",
        "options": [
            "prune.mode=structured",
            "prune.sparsity=0.5",
            "prune.min_cosine=0",
            "quant.min_cosine=0.9",
        ],
        "kind": "cnn",
        "also": {"plugins": "fuse,quant", "options": []},
    },
    "bert_base": {
        "builder": zoo.bert_base,
        "plugins": "fuse,quant",
        "options": ["quant.mode=dynamic"],
        "kind": "transformer",
    },
}


def calibration_npz(model_path: Path, folder: Path, count: int = 16, sequence: int = 128) -> Path:
    """Random images for the CNNs; for BERT, token ids drawn from its vocabulary, a full attention mask
    and segment ids 0, at the model's sequence length."""
    import onnx

    proto = onnx.load(str(model_path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for spec in Model(proto).inputs:
        if spec.dtype.kind == "f":
            arrays[spec.name] = rng.random((count, *spec.shape[1:]), dtype=np.float32)
            continue
        length = int(meta.get("edgeplug.zoo.seq_len", sequence))
        if "mask" in spec.name:
            arrays[spec.name] = np.ones((count, length), spec.dtype)
        elif "type" in spec.name:
            arrays[spec.name] = np.zeros((count, length), spec.dtype)
        else:
            arrays[spec.name] = rng.integers(0, int(meta.get("edgeplug.zoo.vocab_size", 1000)), (count, length)).astype(spec.dtype)
    path = folder / "calibration.npz"
    np.savez(path, **arrays)
    return path


class Reader:
    """onnxruntime CalibrationDataReader over a list of input dicts (the peers' calibration)."""

    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self.samples = iter(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.samples, None)


def peers(model_path: Path, kind: str, folder: Path, samples: list[dict[str, np.ndarray]]) -> dict[str, Path]:
    """The peers a user would try: onnxruntime's quantizers (defaults and as documented) and onnxslim."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out: dict[str, Path] = {}
    pre = folder / "pre.onnx"
    try:
        quant_pre_process(str(model_path), str(pre), skip_symbolic_shape=kind == "cnn")
    except Exception:  # on BERT its defaults fail ("Incomplete symbolic shape inference")
        print("quant_pre_process failed with its defaults; rerun with auto_merge=True", file=sys.stderr)
        quant_pre_process(str(model_path), str(pre), skip_symbolic_shape=kind == "cnn", auto_merge=True)
    if kind == "cnn":
        out["ort static, defaults"] = folder / "ort_static_default.onnx"
        quantize_static(str(model_path), str(out["ort static, defaults"]), Reader(samples))
        out["ort static, as documented"] = folder / "ort_static_doc.onnx"
        quantize_static(
            str(pre),
            str(out["ort static, as documented"]),
            Reader(samples),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        out["ort dynamic, defaults"] = folder / "ort_dynamic_default.onnx"
        quantize_dynamic(str(model_path), str(out["ort dynamic, defaults"]))
    else:
        out["ort dynamic, defaults"] = folder / "ort_dynamic_default.onnx"
        quantize_dynamic(str(model_path), str(out["ort dynamic, defaults"]))
        out["ort dynamic, per-channel"] = folder / "ort_dynamic_pc.onnx"
        quantize_dynamic(str(pre), str(out["ort dynamic, per-channel"]), per_channel=True)
        out["ort static, as documented"] = folder / "ort_static_doc.onnx"
        quantize_static(
            str(pre),
            str(out["ort static, as documented"]),
            Reader(samples),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    import contextlib
    import io

    import onnxslim

    out["onnxslim"] = folder / "onnxslim.onnx"
    with contextlib.redirect_stdout(io.StringIO()):  # onnxslim prints a summary table
        onnxslim.slim(str(model_path), str(out["onnxslim"]))
    return out


def run_chain(
    model_path: Path, spec: dict[str, Any], data: Path, folder: Path
) -> tuple[Path, float, dict[str, Any]]:
    folder = folder / spec["plugins"].replace(",", "-")
    cmd = [
        sys.executable,
        "-m",
        "edgeplug",
        "run",
        str(model_path),
        "--plugins",
        spec["plugins"],
        "--data",
        str(data),
        "--output-dir",
        str(folder / "edgeplug"),
        "--quiet",
    ]
    for opt in spec["options"]:
        cmd += ["-o", opt]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"edgeplug run failed for {model_path.name}: {proc.stderr.strip()[-2000:]}")
    report = json.loads((folder / "edgeplug" / "report.json").read_text())
    return Path(report["final"]["path"]), wall, report


def _fidelity(report: dict[str, Any]) -> dict[str, Any]:
    """Cosine (and top-1 agreement) of the final model against FP32, per output, from the run's report."""
    applied = [s for s in report["steps"] if s["status"] == "applied"]
    vs = applied[-1]["verification"]["vs_original"] if applied else {}
    return {name: {k: m[k] for k in ("cosine", "top1", "max_abs_error") if k in m} for name, m in vs.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="resnet50,yolov5s,bert_base")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other models' rows of an earlier results file (same date and machine)")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    results: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{cpu_info()['model']}, {platform.machine()}, flags {' '.join(cpu_info()['flags'])}",
        "runs": args.runs,
        "models": {},
    }
    for name in args.models.split(","):
        spec = CHAINS[name]
        print(f"== {name}", file=sys.stderr, flush=True)
        model_path = zoo.cached(name, spec["builder"])
        with tempfile.TemporaryDirectory(prefix=f"perf-{name}-") as tmp:
            folder = Path(tmp)
            data = calibration_npz(model_path, folder)
            with np.load(data) as npz:
                arrays = {k: npz[k] for k in npz.files}
            samples = [
                {k: v[i : i + 1] for k, v in arrays.items()} for i in range(len(next(iter(arrays.values()))))
            ]
            final, wall, report = run_chain(model_path, spec, data, folder)
            variants = {"fp32": model_path, f"edgeplug {spec['plugins']}": final}
            also = None
            if "also" in spec:
                also_final, also_wall, also_report = run_chain(model_path, spec["also"], data, folder)
                variants[f"edgeplug {spec['also']['plugins']}"] = also_final
                also = {
                    "chain": spec["also"]["plugins"],
                    "edgeplug_run_seconds": also_wall,
                    "fidelity_vs_fp32": _fidelity(also_report),
                }
            cwd = os.getcwd()
            os.chdir(folder)  # onnxruntime's shape inference may drop temporary files into the cwd
            try:
                variants.update(peers(model_path, spec["kind"], folder, samples))
            finally:
                os.chdir(cwd)
            rows = []
            feed = samples[0]
            for label, path in progress(list(variants.items()), f"measuring {name}"):
                row: dict[str, Any] = {"variant": label, "size_bytes": path.stat().st_size}
                for t in threads:
                    row[f"t{t}"] = measure(path, t, args.runs, warmup=3, inputs=feed)
                rows.append(row)
        base = rows[0]
        for row in rows:
            row["size_ratio"] = base["size_bytes"] / row["size_bytes"]
            for t in threads:
                row[f"t{t}"]["speedup"] = base[f"t{t}"]["p50_ms"] / row[f"t{t}"]["p50_ms"]
                mem = row[f"t{t}"]["memory_bytes"]
                row[f"t{t}"]["memory_ratio"] = base[f"t{t}"]["memory_bytes"] / mem if mem > 0 else None
        prunes = "prune" in spec["plugins"]
        results["models"][name] = {
            "chain": spec["plugins"],
            "options": spec["options"],
            "edgeplug_run_seconds": wall,
            "accuracy": "not measured for this architecture (random weights)"
            if prunes
            else "random weights: fidelity only",
            "steps": [
                {"plugin": s["plugin"], "status": s["status"], "details": s.get("details", {}).get("summary")}
                for s in report["steps"]
            ],
            "fidelity_vs_fp32": _fidelity(report),
            "second_chain": also,
            "rows": rows,
        }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    earlier = out / "perf_table.json"
    if args.merge and earlier.exists():
        previous = json.loads(earlier.read_text())
        merged = {k: v for k, v in previous["models"].items() if k not in results["models"]}
        merged.update(results["models"])
        order = [m for m in CHAINS if m in merged]
        results["models"] = {m: merged[m] for m in order}
        results["merged_from"] = previous["date"]
    (out / "perf_table.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    md = markdown(results, threads)
    (out / "perf_table.md").write_text(md)
    print(md)


def _cosines(fidelity: dict[str, Any]) -> str:
    return ", ".join(f"{name} {m.get('cosine', float('nan')):.4f}" for name, m in fidelity.items())


def markdown(results: dict[str, Any], threads: list[int]) -> str:
    lines = [
        f"Measured {results['date']} on {results['machine']}; onnxruntime CPU, batch 1, "
        f"median of {results['runs']} runs.",
        "",
    ]
    head = "| model | variant | size MB | size x |"
    sep = "|---|---|---:|---:|"
    for t in threads:
        head += f" p50 ms ({t}t) | p90 ms ({t}t) | speedup ({t}t) |"
        sep += "---:|---:|---:|"
    head += " memory MB (1t) | memory x |"
    sep += "---:|---:|"
    lines += [head, sep]
    for name, entry in results["models"].items():
        for row in entry["rows"]:
            cells = [name, row["variant"], f"{row['size_bytes'] / 2**20:.1f}", f"{row['size_ratio']:.2f}x"]
            for t in threads:
                r = row[f"t{t}"]
                cells += [f"{r['p50_ms']:.1f}", f"{r['p90_ms']:.1f}", f"{r['speedup']:.2f}x"]
            r1 = row[f"t{threads[0]}"]
            mem_ratio = f"{r1['memory_ratio']:.2f}x" if r1["memory_ratio"] else "-"
            cells += [f"{r1['memory_bytes'] / 2**20:.0f}", mem_ratio]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, entry in results["models"].items():
        ours = entry["rows"][1][f"t{threads[0]}"]["p50_ms"]
        peers_ = [r for r in entry["rows"][2:] if not r["variant"].startswith("edgeplug")]
        best = min(peers_, key=lambda r: r[f"t{threads[0]}"]["p50_ms"])
        lines.append(
            f"- {name}: chain `{entry['chain']}` with {' '.join('-o ' + o for o in entry['options'])}; "
            f"`edgeplug run` took {entry['edgeplug_run_seconds']:.0f} s; {entry['accuracy']}; "
            f"against the best peer ({best['variant']}): {best[f't{threads[0]}']['p50_ms'] / ours:.2f}x "
            f"at {threads[0]} thread; cosine against FP32 "
            f"{_cosines(entry['fidelity_vs_fp32'])}."
        )
        if entry.get("second_chain"):
            sc = entry["second_chain"]
            lines.append(
                f"- {name}, without pruning: chain `{sc['chain']}` (defaults); `edgeplug run` took "
                f"{sc['edgeplug_run_seconds']:.0f} s; cosine against FP32 "
                f"{_cosines(sc['fidelity_vs_fp32'])}."
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
