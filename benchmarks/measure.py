"""What every benchmark script of edgeplug needs to make a claim that proves what it says: the CPU header
(ratios of int8 models are only comparable on one CPU), alternated timing paired by round, a results file
stamped with the command, date, CPU flags and library versions, checks of the targets a script claims
(exit non-zero on a miss), and the generated blocks of the README.

    from benchmarks.measure import alternate, paired_ratio, stamp, write_results, Check, report_checks
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import platform
import shlex
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


# -- the CPU and the software ----------------------------------------------------------------------
def cpu_header() -> dict[str, Any]:
    """The CPU's model, its /proc/cpuinfo flags that matter for int8 kernels, and what the running process
    sees through CPUID (numpy's dispatch table: under an emulator such as qemu-x86_64 -cpu Haswell it differs
    from /proc/cpuinfo, and it is what onnxruntime's kernels dispatch on)."""
    from edgeplug.cpu import cpu_info, runtime_features

    info = dict(cpu_info())
    features = runtime_features() or {}
    info["runtime_features"] = sorted(
        k for k, v in features.items() if v and k.startswith(("AVX", "FMA", "ASIMD"))
    )
    info["int8_flags"] = [f for f in info.get("flags", []) if f in INT8_FLAGS]
    return info


def cpu_line(cpu: Mapping[str, Any]) -> str:
    """One line for the head of a table: the model and the int8 instructions it has (or that it has none)."""
    int8 = cpu.get("int8_flags") or []
    dot = f"int8 dot-product instructions: {', '.join(int8)}" if int8 else "no int8 dot-product instructions"
    return (
        f"{cpu.get('model', '?')} ({cpu.get('machine', '?')}; flags {', '.join(cpu.get('flags', []))}; {dot})"
    )


def versions(
    distributions: Sequence[str] = ("numpy", "onnx", "onnxruntime", "onnxslim", "edgeplug"),
) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in distributions:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """The command that reproduces this run, relative to the repository root."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(shlex.quote(a) for a in ["python", script, *args])


def stamp(
    script: str, argv: Sequence[str] | None = None, distributions: Sequence[str] | None = None
) -> dict[str, Any]:
    """The header of a results file: command, date (UTC), platform, CPU and library versions."""
    return {
        "command": command_line(script, argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu_header(),
        "versions": versions(distributions) if distributions else versions(),
    }


def write_results(stem: Path, record: Mapping[str, Any], markdown: str) -> tuple[Path, Path]:
    """`stem`.json (strict JSON: NaN and infinities become null) and `stem`.md, each written atomically. The
    record must carry the stamp (command, date, CPU) so that no figure is stored without its provenance."""
    missing = [key for key in ("command", "date", "cpu") if key not in record]
    if missing:
        raise ValueError(f"results for {stem.name} lack {', '.join(missing)}: start the record with stamp()")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = (stem.with_suffix(".json"), stem.with_suffix(".md"))
    texts = (json.dumps(_strict(record), indent=1, allow_nan=False) + "\n", markdown)
    for path, text in zip(paths, texts):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return paths


def _strict(value: Any) -> Any:
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, (np.floating, np.integer)):
        return _strict(value.item())
    if isinstance(value, Mapping):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# -- timing ----------------------------------------------------------------------------------------
def alternate(
    paths: Mapping[str, Path],
    *,
    rounds: int,
    threads: int = 1,
    runs: int = 20,
    warmup: int = 3,
    inputs: Mapping[str, np.ndarray] | None = None,
    timeout: float | None = 900.0,
    on_round: Callable[[int, str, dict[str, Any]], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Measure every model once per round, each in a fresh process (edgeplug.bench.measure), the models in
    turn within a round and the order rotated from one round to the next, so that a slow spell of a shared
    machine and the position in a round hit every model alike. Returns each label's per-round results (p50,
    p90, memory), in round order: round i of one model is paired with round i of another."""
    from edgeplug.bench import measure

    labels = list(paths)
    measured: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    feed = None if inputs is None else dict(inputs)
    for r in range(rounds):
        shift = r % len(labels) if labels else 0
        for label in labels[shift:] + labels[:shift]:
            result = measure(Path(paths[label]), threads, runs, warmup, inputs=feed, timeout=timeout)
            measured[label].append(result)
            if on_round is not None:
                on_round(r, label, result)
    return measured


def median_of(rounds: Sequence[Mapping[str, Any]], key: str = "p50_ms") -> float:
    return float(statistics.median(float(m[key]) for m in rounds))


@dataclass(frozen=True)
class Ratio:
    """`numerator / denominator` of two models' p50 latencies, within each round: the median over rounds and
    the range (how far the machine's noise moves it)."""

    median: float
    low: float
    high: float
    rounds: int

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def paired_ratio(numerator: Sequence[Mapping[str, Any]], denominator: Sequence[Mapping[str, Any]]) -> Ratio:
    """How many times slower the numerator's model is (= how many times faster the denominator's), paired by
    round. A ratio above 1 says the denominator is faster."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"paired rounds differ: {len(numerator)} and {len(denominator)}")
    ratios = [float(a["p50_ms"]) / float(b["p50_ms"]) for a, b in zip(numerator, denominator)]
    return Ratio(float(statistics.median(ratios)), min(ratios), max(ratios), len(ratios))


# -- targets ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One target a script claims, and whether this run met it (with the figures that decide it)."""

    name: str
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def report_checks(checks: Sequence[Check], stream: Any = None) -> int:
    """Print every check, the misses plainly; 0 when all are met, 1 otherwise (the script's exit status)."""
    stream = stream or sys.stderr
    for check in checks:
        print(
            f"{'target met' if check.passed else 'TARGET MISSED'}: {check.name}: {check.detail}", file=stream
        )
    return 0 if all(c.passed for c in checks) else 1


# -- generated README blocks -----------------------------------------------------------------------
def block_markers(name: str) -> tuple[str, str]:
    """The opening marker's prefix and the closing marker of the README block `name`."""
    return f"<!-- {name}: generated by", f"<!-- {name}: end -->"


def read_block(text: str, name: str) -> str:
    """The text between the block's markers (without the marker lines)."""
    start, end = _block_span(text, name)
    return text[start:end]


def replace_block(text: str, name: str, body: str) -> str:
    """`text` with the block `name` replaced by `body` (the marker lines are kept as they are)."""
    start, end = _block_span(text, name)
    body = body if body.endswith("\n") or not body else body + "\n"
    return text[:start] + body + text[end:]


def _block_span(text: str, name: str) -> tuple[int, int]:
    opening, closing = block_markers(name)
    first = text.find(opening)
    if first < 0:
        raise ValueError(f"no '{opening} ...' marker in the README")
    start = text.find("\n", first) + 1
    end = text.find(closing, start)
    if start <= 0 or end < 0:
        raise ValueError(f"no '{closing}' marker after '{opening} ...' in the README")
    return start, end
