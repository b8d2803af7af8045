"""What the performance table concludes, as pure functions of the stored rows: each edgeplug chain against its
like peer, issue 14's targets, and where ours loses. Recomputed by `derive` on every write, never edited."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgeplug_quantize.timing import NOISE

from benchmarks.measure import Check, Ratio, paired_ratio
from benchmarks.perf_models import METRIC_NAMES

# Issue 14: "on the real models of the model-zoo issue and BERT-base".
TARGET_MODELS = ("mobilenetv2", "yolov8n", "minilm", "fashion_cnn", "bert_base")
MIN_SPEEDUP_ON_ONE = 1.2
MINILM_MIN_COSINE = 0.99
OURS = "edgeplug fuse,quant"
FLOAT = "FP32"
# "At least as fast" within quant's own timing tie (the same fraction by which auto calls two candidates equal).
# Where ours and the peer are the same recipe, computing the same numbers (the Fashion CNN, BERT-base), the
# paired median of a few rounds on a shared machine fell on either side of 1.0 (stored tables: BERT-base 0.84x
# on an Intel Xeon, 1.06x on an AMD EPYC): at exactly 1.0 the verdict would be a coin toss.
TIMING_NOISE = NOISE


def slower(speed: Ratio) -> bool:
    """Ours (ratio > 1: faster) is slower than the peer beyond the timing noise."""
    return speed.median < 1.0 - TIMING_NOISE


def rounds_of(row: Mapping[str, Any]) -> list[dict[str, float]]:
    return [{"p50_ms": v} for v in row["rounds_p50_ms"]]


def row_of(entry: Mapping[str, Any], label: str) -> Mapping[str, Any] | None:
    return next((r for r in entry["rows"] if r["label"] == label), None)


def timed(row: Mapping[str, Any] | None) -> bool:
    return row is not None and not row.get("error") and bool(row.get("rounds_p50_ms"))


def _at_least(a: Mapping[str, Any], b: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    """a's task metrics are at least b's, to each metric's resolution."""
    for metric in entry["judged_by"]:
        va, vb = a["metrics"].get(metric), b["metrics"].get(metric)
        if vb is None:
            continue
        if va is None or va < vb - entry["ties"][metric]:
            return False
    return True


@dataclass(frozen=True)
class Peer:
    """The row ours is compared with, why that one, and whether it is the float model standing in for
    onnxruntime's recipes (none reaching our task metric: the metric is then ours by quant's budget)."""

    row: Mapping[str, Any] | None
    note: str
    float_stands_in: bool = False

    def metric_kept(self, ours: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
        return self.float_stands_in or (self.row is not None and _at_least(ours, self.row, entry))


def best_int8_peer(entry: Mapping[str, Any]) -> Peer:
    """onnxruntime's best recipe for this model, as issue 14 defines it: "the fastest of its documented static
    recipe, dynamic defaults and dynamic per-channel that keeps the same task metric", read as the fastest whose
    task metric is at least ours. When none of them reaches our task metric, what a user of onnxruntime's tool
    ships at that metric is the float model: the peer is then FP32 (run by onnxruntime), and the note names the
    best-scoring onnxruntime recipe with its speed, so the trade ours declined stays in view (it is also a row
    of `losses`)."""
    ours = row_of(entry, OURS)
    peers = [r for r in entry["rows"] if r["group"] == "int8" and r["by"] != "edgeplug" and timed(r)]
    if not peers or not timed(ours):
        return Peer(None, "no onnxruntime recipe produced a model" if not peers else "ours was not measured")
    keeping = [r for r in peers if _at_least(r, ours, entry)]
    if keeping:
        fastest = min(keeping, key=lambda r: r["p50_ms"])
        return Peer(fastest, "the fastest onnxruntime recipe at our task metric or better")
    primary = entry["judged_by"][0]
    best = max(peers, key=lambda r: -math.inf if r["metrics"].get(primary) is None else r["metrics"][primary])
    speed = paired_ratio(rounds_of(best), rounds_of(ours))
    note = (
        "no onnxruntime recipe reaches our task metric: its user ships the float model; its best-scoring one, "
        f"{best['label']} at {metric_text(entry, best)}, ran {best['p50_ms']:.2f} ms: ours {speed.median:.2f}x that"
    )
    return Peer(row_of(entry, FLOAT), note, float_stands_in=True)


def comparisons(entry: Mapping[str, Any]) -> dict[str, Any]:
    """Each edgeplug row against its like peer: ratio > 1 means ours is faster."""
    found: dict[str, Any] = {}
    for row in entry["rows"]:
        if row["by"] != "edgeplug" or not timed(row):
            continue
        if row["group"] == "pruned":
            found[row["label"]] = {"peer": None, "note": "no peer prunes"}
            continue
        peer = (
            best_int8_peer(entry)
            if row["group"] == "int8"
            else Peer(row_of(entry, "onnxslim"), "the float peer")
        )
        if peer.row is None or not timed(peer.row):
            found[row["label"]] = {
                "peer": None,
                "note": f"{peer.row['label']} failed" if peer.row else peer.note,
            }
            continue
        found[row["label"]] = {
            "peer": peer.row["label"],
            "note": peer.note,
            "float_stands_in": peer.float_stands_in,
            "speed": paired_ratio(rounds_of(peer.row), rounds_of(row)).as_dict(),
            "metric_at_least_peer": peer.metric_kept(row, entry),
        }
    return found


def metric_text(entry: Mapping[str, Any], row: Mapping[str, Any], judged_only: bool = True) -> str:
    names = entry["judged_by"] if judged_only else entry["metrics"]
    parts = []
    for name in names:
        value = row["metrics"].get(name)
        if value is None:
            parts.append(f"{METRIC_NAMES[name]} -")
            continue
        digits = 4 if name == "cosine" else 3
        parts.append(f"{METRIC_NAMES[name]} {value:.{digits}f}")
    return ", ".join(parts)


def targets(record: Mapping[str, Any]) -> list[Check]:
    """Issue 14's target over the stored results: every target model measured, ours at least as fast as
    onnxruntime's best recipe (within TIMING_NOISE) at an equal or better task metric on each, >= 1.2x on one,
    MiniLM's worst cosine >= 0.99 on unseen sentences."""
    models = record["models"]
    checks: list[Check] = []
    fastest = []
    missing = [m for m in TARGET_MODELS if m not in models]
    for name in TARGET_MODELS:
        if name not in models:
            continue
        entry = models[name]
        ours = row_of(entry, OURS)
        title = f"{name}: fuse,quant (defaults) at least as fast as onnxruntime's best, task metric equal or better"
        if entry.get("error"):
            checks.append(Check(title, False, f"the model was not measured ({entry['error']})"))
            continue
        if not timed(ours):
            error = ours.get("error") if ours else "no row"
            checks.append(
                Check(title, False, f"edgeplug fuse,quant did not produce a measured model ({error})")
            )
            continue
        peer = best_int8_peer(entry)
        if peer.row is None:
            checks.append(Check(title, True, peer.note))
            continue
        if not timed(peer.row):  # the float model standing in failed to run (onnxruntime's peers are timed)
            checks.append(Check(title, False, f"{peer.note}; {peer.row['label']} was not timed"))
            continue
        speed = paired_ratio(rounds_of(peer.row), rounds_of(ours))
        detail = (
            f"ours {ours['p50_ms']:.2f} ms ({metric_text(entry, ours)}) vs {peer.row['label']} "
            f"{peer.row['p50_ms']:.2f} ms ({metric_text(entry, peer.row)}; {peer.note}): {speed.median:.2f}x "
            f"(rounds {speed.low:.2f}-{speed.high:.2f})"
        )
        misses = []
        if slower(speed):
            misses.append("slower")
        elif speed.median < 1.0:
            detail += f" (within the {TIMING_NOISE:.0%} timing noise: as fast)"
        if not peer.metric_kept(ours, entry):
            misses.append("lower task metric")
        checks.append(
            Check(title, not misses, detail + ("; missed: " + " and ".join(misses) if misses else ""))
        )
        if not misses and not peer.float_stands_in:  # 1.2x counts against an onnxruntime recipe only
            fastest.append((speed.median, name))
    if missing:
        checks.append(
            Check("every target model measured", False, f"not in these results: {', '.join(missing)}")
        )
    if fastest and max(fastest)[0] >= MIN_SPEEDUP_ON_ONE:
        best_ratio, best_name = max(fastest)
        checks.append(
            Check(
                f">= {MIN_SPEEDUP_ON_ONE}x onnxruntime's best on one model",
                True,
                f"{best_name} {best_ratio:.2f}x",
            )
        )
    else:
        shown = (
            ", ".join(f"{n} {r:.2f}x" for r, n in sorted(fastest, reverse=True)) or "no model met the rest"
        )
        checks.append(Check(f">= {MIN_SPEEDUP_ON_ONE}x onnxruntime's best on one model", False, shown))
    if "minilm" in models:
        ours = row_of(models["minilm"], OURS)
        value = ours["metrics"].get("cosine") if ours else None
        checks.append(
            Check(
                f"minilm: fuse,quant worst cosine >= {MINILM_MIN_COSINE} on unseen sentences",
                value is not None and value >= MINILM_MIN_COSINE,
                f"{value}" if value is not None else "not measured",
            )
        )
    return checks


def losses(name: str, entry: Mapping[str, Any]) -> str | None:
    """One sentence: where ours loses to a like peer on speed or on the task metric, and where a chain with
    default options fails; None when it loses nowhere."""
    said = []
    for row in entry["rows"]:
        if row["by"] != "edgeplug":
            continue
        chain = row["label"].removeprefix("edgeplug ")
        if row.get("error"):
            said.append(f"`{chain}` with default options fails ({row['error']})")
            continue
        if row["group"] not in ("int8", "float") or not timed(row):
            continue
        for peer in entry["rows"]:
            if peer["by"] == "edgeplug" or peer["group"] != row["group"] or not timed(peer):
                continue
            # the ratio every other figure uses (> 1: ours is faster), so that no two lines disagree
            speed = paired_ratio(rounds_of(peer), rounds_of(row))
            what = []
            if slower(speed):
                what.append(
                    f"is {1 / speed.median:.2f}x faster (ours {speed.median:.2f}x, rounds {speed.low:.2f}-{speed.high:.2f})"
                )
            if not _at_least(row, peer, entry):
                what.append("scores higher")
            if what:
                said.append(
                    f"{peer['label']} {' and '.join(what)} than `{chain}` "
                    f"({metric_text(entry, peer)} vs {metric_text(entry, row)})"
                )
    return f"{name}: {'; '.join(said)}." if said else None


def derive(record: dict[str, Any]) -> dict[str, Any]:
    """The comparisons and the target verdicts, recomputed from the measured rows (never stored by hand)."""
    for entry in record["models"].values():
        entry["comparisons"] = comparisons(entry)
    record["targets"] = [c.as_dict() for c in targets(record)]
    return record
