"""report.json (schema below) and the terminal summary, one row per step.

Schema (version 1): {schema_version, created, tools, cpu, execution_provider, threads, seed, settings,
data, original: {metrics, path}, steps: [{index, plugin, status, seconds, tolerance, verification:
{vs_previous, vs_original, passed, failures, divergence}, metrics, bought, details, path, error}],
compile, final: {path, sha256}, status}.
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

SCHEMA_VERSION = 1


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


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fidelity(verification: dict[str, Any] | None) -> str:
    if not verification:
        return "-"
    vs = verification.get("vs_original") or {}
    parts = []
    for m in vs.values():
        if "cosine" in m:
            parts.append(f"cos {m['cosine']:.4f}")
        if "top1" in m:
            parts.append(f"top1 {m['top1']:.3f}")
        break
    return ", ".join(parts) or "-"


def summary_table(report: dict[str, Any]) -> str:
    """A fixed-width table: step, status, size, nodes, params (non-zero), latency, fidelity vs original."""
    header = ("step", "status", "size", "nodes", "params (nonzero)", "p50 ms", "accuracy", "vs original")
    rows = [header]
    orig = report.get("original", {}).get("metrics", {})
    rows.append(_row("original", "-", orig, None))
    for step in report["steps"]:
        rows.append(
            _row(
                f"{step['index']}. {step['plugin']}",
                step["status"],
                step.get("metrics") or {},
                step.get("verification"),
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
                "-",
                "-",
                files or "-",
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _row(name: str, status: str, m: dict[str, Any], verification: dict[str, Any] | None) -> tuple[str, ...]:
    params = f"{m['parameters']:,} ({m['nonzero_parameters']:,})" if "parameters" in m else "-"
    latency = f"{m['latency']['p50_ms']:.2f}" if m.get("latency") else "-"
    acc = f"{m['accuracy']:.4f}" if m.get("accuracy") is not None else "-"
    return (
        name,
        status,
        _size(m.get("size_bytes")),
        str(m.get("nodes", "-")),
        params,
        latency,
        acc,
        _fidelity(verification),
    )


def print_summary(report: dict[str, Any], stream: Any = None) -> None:
    stream = stream or sys.stderr
    print(summary_table(report), file=stream)
