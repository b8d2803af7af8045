"""The performance table as text: benchmarks/results/perf_table.md (every metric, per-round latencies, quant's
choice) and the README's perf block, both rendered from the results record alone, so the same record always
gives the same text."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks.measure import cpu_line, read_block, replace_block
from benchmarks.perf_verdict import MIN_SPEEDUP_ON_ONE, MINILM_MIN_COSINE, losses, metric_text

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = "perf"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _variant_cell(row: Mapping[str, Any]) -> str:
    label = row["label"]
    if row["group"] == "pruned":
        pruning = row.get("details", {}).get("pruning") or {}
        zeroed = pruning.get("weights_zeroed")
        label = (
            f"{label} [pruned: {pruning.get('mode')}, {zeroed:.0%} of weights zeroed, prune.min_cosine "
            f"{pruning.get('min_cosine')}]"
            if zeroed is not None
            else f"{label} [pruned]"
        )
    if (
        row["by"] == "edgeplug"
        and row.get("recipe")
        and (row["group"] != "float" or "unchanged" in row["recipe"])
    ):
        label += f" ({row['recipe']})"
    if row["label"] == "ort quantize_static, as documented" and row.get("recipe"):
        label += f" ({row['recipe']})"
    return label


def _vs_peer_cell(entry: Mapping[str, Any], row: Mapping[str, Any]) -> str:
    found = entry["comparisons"].get(row["label"])
    if not found:
        return ""
    if found.get("peer") is None:
        return found["note"]
    speed = found["speed"]
    text = f"{speed['median']:.2f}x vs {found['peer']}"
    if found.get("float_stands_in"):
        text += " (no onnxruntime recipe at our metric)"
    if not found["metric_at_least_peer"]:
        text += " (peer scores higher)"
    return text


def table(record: Mapping[str, Any], full: bool = False) -> list[str]:
    head = "| model | variant | task metric (held-out) | p50 ms | vs FP32 | vs best like peer | size MB | memory MB |"
    lines = [head, "|---|---|---|---:|---:|---|---:|---:|"]
    for name, entry in record["models"].items():
        model_cell = (
            f"{name} (random weights: speed, size; cosine is fidelity)" if entry["random_weights"] else name
        )
        if entry.get("error"):
            lines.append(f"| {model_cell} | - | not measured: {entry['error']} | - | - | | - | - |")
            continue
        for i, row in enumerate(entry["rows"]):
            if row.get("error"):
                cells = [_variant_cell(row), f"failed: {row['error']}"[:160], "-", "-", "", "-", "-"]
            else:
                speed = row.get("speedup_vs_fp32", {}).get("median")
                cells = [
                    _variant_cell(row),
                    _metric_cell(entry, row, full),
                    f"{row['p50_ms']:.2f}",
                    "-" if speed is None else f"{speed:.2f}x",
                    _vs_peer_cell(entry, row),
                    _mb(row.get("size_bytes")),
                    _mb(row.get("memory_bytes")),
                ]
            cells = [c.replace("|", "/").replace("\n", " ") for c in cells]
            lines.append("| " + " | ".join([model_cell if i == 0 else "", *cells]) + " |")
    return lines


def _metric_cell(entry: Mapping[str, Any], row: Mapping[str, Any], full: bool) -> str:
    """The variant's task metric; FP32 is the reference (its labelled accuracy where there are labels)."""
    if row["group"] != "fp32":
        return metric_text(entry, row, judged_only=not full)
    accuracy = row["metrics"].get("accuracy_fp32")
    return "reference" if accuracy is None else f"reference, accuracy {accuracy:.3f}"


def _commands(record: Mapping[str, Any]) -> list[str]:
    seen = [record["command"]]
    for entry in record["models"].values():
        if entry.get("command") and entry["command"] not in seen:
            seen.append(entry["command"])
    return seen


def _target_lines(record: Mapping[str, Any]) -> list[str]:
    checks = record.get("targets") or []
    missed = [c for c in checks if not c["passed"]]
    verdict = "met" if not missed else "MISSED (" + "; ".join(c["name"].split(":")[0] for c in missed) + ")"
    lines = [
        "Target (issue 14): `fuse,quant` with default options at least as fast as onnxruntime's best recipe at an "
        f"equal or better task metric on every real model and BERT-base, >= {MIN_SPEEDUP_ON_ONE}x on one, MiniLM worst "
        f"cosine >= {MINILM_MIN_COSINE}: **{verdict}**.",
        "",
    ]
    lines += [f"- {'met' if c['passed'] else 'MISSED'}: {c['name']}: {c['detail']}" for c in checks]
    return lines


def rounds_text(record: Mapping[str, Any]) -> str:
    """How many rounds timed the models: the most common count, and the models merged from a run with another."""
    counts = {name: entry.get("rounds", record["rounds"]) for name, entry in record["models"].items()}
    usual = max(sorted(set(counts.values())), key=list(counts.values()).count) if counts else record["rounds"]
    other = ", ".join(f"{name} {n}" for name, n in counts.items() if n != usual)
    return f"{usual} rounds" + (f" ({other})" if other else "")


def render_readme(record: Mapping[str, Any]) -> str:
    """The README's perf block: everything in it comes from the results file."""
    versions = record.get("versions", {})
    lines = [
        f"CPU: {cpu_line(record['cpu'])}. Ratios of int8 models hold for this CPU only: onnxruntime's int8 "
        "kernels differ between CPUs with and without VNNI or AMX.",
        "",
        f"Measured {record['date'][:10]} with onnxruntime {versions.get('onnxruntime', '?')}, batch 1, "
        f"{record['threads']} thread(s); every variant in a fresh process per round, alternated over "
        f"{rounds_text(record)} (p50 = median over rounds; ratios = median of per-round ratios, > 1 means ours "
        "is faster). Task metrics on held-out samples no quantizer saw. Reproduce:",
        "",
        *[f"    nice -n 10 {c}" for c in _commands(record)],
        "",
        *table(record),
        "",
        *_target_lines(record),
        "",
    ]
    said = [s for name, entry in record["models"].items() if (s := losses(name, entry))]
    if said:
        lines += ["Where ours loses to a peer:", ""] + [f"- {s}" for s in said] + [""]
    lines.append(
        "Full results (every metric, memory, per-round latencies, quant's choice): "
        "[benchmarks/results/perf_table.md](benchmarks/results/perf_table.md)."
    )
    return "\n".join(lines) + "\n"


def render_markdown(record: Mapping[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in record.get("versions", {}).items())
    lines = [
        "# The performance table",
        "",
        f"Commands: {'; '.join(f'`{c}`' for c in _commands(record))}  ",
        f"Date: {record['date']}  ",
        f"CPU: {cpu_line(record['cpu'])}; runtime (CPUID): {', '.join(record['cpu'].get('runtime_features', []))}  ",
        f"Versions: {versions}  ",
        f"Threads: {record['threads']}; {rounds_text(record)}",
        "",
        *table(record, full=True),
        "",
        *_target_lines(record),
        "",
    ]
    for name, entry in record["models"].items():
        if entry.get("error"):
            lines += [f"## {name}", "", f"Not measured: {entry['error']}", ""]
            continue
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in entry.get("stage_seconds", {}).items())
        lines += [
            f"## {name}",
            "",
            f"{entry['about']}. Data: {entry['data']}; {entry['runs']} runs per measurement. Stages: {stages}.",
            "",
        ]
        lines += [
            "| variant | recipe | made in s | p50 ms per round | p90 ms | metrics |",
            "|---|---|---:|---|---:|---|",
        ]
        for row in entry["rows"]:
            per_round = ", ".join(f"{v:.2f}" for v in row.get("rounds_p50_ms", []))
            metrics = ", ".join(f"{k} {v}" for k, v in row["metrics"].items())
            made = "-" if row.get("seconds_to_make") is None else f"{row['seconds_to_make']:.0f}"
            p90 = f"{row['p90_ms']:.2f}" if "p90_ms" in row else "-"
            lines.append(
                f"| {row['label']} | {row['recipe'] or row.get('error') or ''} | {made} | {per_round} | {p90} | {metrics} |"
            )
        lines.append("")
        for row in entry["rows"]:
            details = row.get("details") or {}
            if details.get("command"):
                lines.append(f"- {row['label']}: `{details['command']}`; steps: {details.get('steps')}")
            if details.get("pruning"):
                lines.append(f"- pruning settings (defaults): {details['pruning']}")
            if details.get("calibration_methods"):
                lines.append(
                    f"- onnxruntime static, calibration methods on the validation half: {details['calibration_methods']}"
                )
        said = losses(name, entry)
        lines += ["", f"- {said}", ""] if said else [""]
    return "\n".join(lines) + "\n"


def write_readme(record: Mapping[str, Any], path: Path = README) -> None:
    path.write_text(replace_block(path.read_text(), BLOCK, render_readme(record)))


def readme_block(path: Path = README) -> str:
    return read_block(path.read_text(), BLOCK)
