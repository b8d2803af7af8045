"""report.json (schema below), and the summary table printed on stdout, one row per step.

Schema (version 2): {schema_version, created, tools, cpu, execution_provider, evaluation, threads, seed,
settings: {model, plugins, options, tolerances, metrics, budgets, capabilities, ...}, data, reference_scores,
original: {metrics}, steps: [{index, plugin, status, seconds, cache, tolerance, verification: {vs_previous,
vs_original, metrics, metrics_vs_original, budgets, passed, failures, notes, divergence}, metrics, bought,
details, path, error}], compile: {plugin, status, kind, files, sha256, info, details, verification},
final: {path, sha256, history, record (the sidecar), record_sha256 (what security.sha256 pins)},
profile (the most lossy step's layer-wise errors), search (edgeplug search only), status, error, seconds}.
Strict JSON: NaN and infinities are written as null.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 2


def tool_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for dist in ("edgeplug", "onnx", "onnxruntime", "onnx-graphsurgeon", "numpy", "pluggy"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def cpu_flags() -> dict[str, Any]:
    """The CPU's name and the SIMD flags that decide int8 speed (VNNI on x86, dotprod on ARM)."""
    from .cpu import cpu_info

    return cpu_info()


def new_report(settings: dict[str, Any], threads: int, seed: int) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "tools": tool_versions(),
        "cpu": cpu_flags(),
        "execution_provider": "CPUExecutionProvider",
        "threads": threads,
        "seed": seed,
        "settings": settings,
        "steps": [],
        "status": "running",
    }


def _default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def finite_json(value: Any) -> Any:
    """The value with NaN and infinities replaced by None: report.json stays standard JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.floating):
        return finite_json(float(value))
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic JSON write (strict JSON: NaN and infinities are written as null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    text = json.dumps(finite_json(json.loads(json.dumps(data, default=_default))), indent=2, allow_nan=False)
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


def size_text(n: int | None) -> str:
    """Bytes as text: 812 B, 78.5 KB, 13.4 MB (the model file plus its external data)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def metric_columns(report: dict[str, Any]) -> list[str]:
    """The metrics the steps report, in the order the run names them (cosine and top1 when present)."""
    names: list[str] = []
    for step in report.get("steps") or []:
        for name in (step.get("verification") or {}).get("metrics_vs_original") or {}:
            if name not in names:
                names.append(name)
    return names


def ratios(original: dict[str, Any], metrics: dict[str, Any]) -> str:
    """What a model bought against the original: '4.0x smaller, 2.9x faster'."""
    parts = []
    size, base = metrics.get("size_bytes"), original.get("size_bytes")
    if size and base:
        factor = base / size
        parts.append(f"{factor:.2f}x smaller" if factor >= 1 else f"{1 / factor:.2f}x larger")
    lat, base_lat = (
        (metrics.get("latency") or {}).get("p50_ms"),
        (original.get("latency") or {}).get("p50_ms"),
    )
    if lat and base_lat:
        factor = base_lat / lat
        parts.append(f"{factor:.2f}x faster" if factor >= 1 else f"{1 / factor:.2f}x slower")
    return ", ".join(parts)


def summary_table(report: dict[str, Any]) -> str:
    """A fixed-width table, one row per step up to the last one run: status, size, p50, parameters (unique
    weights; Q/DQ scales and zero points not counted), every metric against the original, and ratios."""
    names = metric_columns(report)
    header = ("step", "status", "size", "p50 ms", "params", *names, "vs original")
    rows: list[tuple[str, ...]] = [header]
    orig = report.get("original", {}).get("metrics", {})
    rows.append(
        (
            "original",
            "-",
            size_text(orig.get("size_bytes")),
            _p50(orig),
            _params(orig),
            *["-"] * len(names),
            "-",
        )
    )
    for step in report["steps"]:
        m = step.get("metrics") or {}
        values = (step.get("verification") or {}).get("metrics_vs_original") or {}
        cells = tuple(_metric(values.get(n)) for n in names)
        rows.append(
            (
                f"{step['index']}. {step['plugin']}",
                step["status"],
                size_text(m.get("size_bytes")),
                _p50(m),
                _params(m),
                *cells,
                ratios(orig, m) if m else (step.get("error") or "-")[:60],
            )
        )
    comp = report.get("compile")
    if comp:
        ver = comp.get("verification")
        passed = "" if not ver else (" verified" if ver.get("passed") else " FAILED verification")
        files = ", ".join(Path(f).name for f in comp.get("files", [])[:3])
        rows.append(
            (
                f"compile: {comp['plugin']}",
                f"{comp.get('status', '-')}{passed}",
                "-",
                "-",
                "-",
                *["-"] * len(names),
                files or "-",
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _p50(m: dict[str, Any]) -> str:
    return f"{m['latency']['p50_ms']:.2f}" if m.get("latency") else "-"


def _params(m: dict[str, Any]) -> str:
    if "parameters" not in m:
        return "-"
    if m.get("nonzero_parameters", m["parameters"]) != m["parameters"]:
        return f"{m['parameters']:,} ({m['nonzero_parameters']:,} nonzero)"
    return f"{m['parameters']:,}"


def _metric(found: dict[str, Any] | None) -> str:
    value = (found or {}).get("value")
    return "-" if value is None else f"{value:.4f}"


def print_summary(report: dict[str, Any], stream: Any = None) -> None:
    """The table on stdout (so it can be piped), ending at the failing step when a run failed."""
    print(summary_table(report), file=stream or sys.stdout, flush=True)
