"""report.html: one self-contained page (inline SVG, no scripts, no network) rendered from report.json.

Per step: bars of size, latency, memory and every metric against the original; the budgets and their
margins; the per-node error profile of the failed (or most lossy) step with the first diverging node marked;
tables a plugin recorded (quant's candidates and mixed precision); a search's Pareto front; the environment.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .report import metric_columns, ratios, size_text

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1100px;color:#1b1f23;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:right;vertical-align:top}th{background:#f6f8fa}
td:first-child,th:first-child{text-align:left}.ok{color:#1a7f37}.bad{color:#cf222e;font-weight:600}
.muted{color:#57606a}.card{border:1px solid #d0d7de;border-radius:6px;padding:10px 14px;margin:10px 0}
svg text{font:11px system-ui,sans-serif}code{background:#f6f8fa;padding:1px 4px;border-radius:3px}
"""
COLORS = ("#0969da", "#1a7f37", "#bf8700", "#8250df", "#cf222e", "#1b7c83")


def render(report: Mapping[str, Any]) -> str:
    """The whole page as a string."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>edgeplug report: {_e(_model_name(report))}</title><style>{STYLE}</style></head><body>",
        _header(report),
        _summary(report),
        _bars(report),
        _budgets(report),
        _profile(report),
        _plugin_tables(report),
        _search(report),
        _environment(report),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def write(report: Mapping[str, Any], path: Path) -> Path:
    """Render and write atomically."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(render(report), encoding="utf-8")
    os.replace(tmp, path)
    return path


# -- sections -------------------------------------------------------------------------------------
def _header(report: Mapping[str, Any]) -> str:
    status = report.get("status", "?")
    cls = "ok" if status == "ok" else "bad"
    settings = report.get("settings") or {}
    chain = ", ".join(settings.get("plugins") or []) or "-"
    error = f"<p class='bad'>{_e(report.get('error'))}</p>" if report.get("error") else ""
    data = report.get("data") or {}
    return (
        f"<h1>{_e(_model_name(report))}</h1>"
        f"<p>status <b class='{cls}'>{_e(status)}</b> &middot; chain <code>{_e(chain)}</code> &middot; "
        f"{_e(report.get('created', ''))} &middot; {_e(report.get('seconds', '-'))} s</p>"
        f"<p class='muted'>verification data: {_e(data.get('description', '-'))}; evaluation: "
        f"{_e(report.get('evaluation', '-'))}</p>{error}"
    )


def _summary(report: Mapping[str, Any]) -> str:
    original = (report.get("original") or {}).get("metrics") or {}
    names = metric_columns(report)
    head = ["step", "status", "size", "p50 ms", "nodes", *names, "vs original"]
    rows = [
        [
            "original",
            "-",
            size_text(original.get("size_bytes")),
            _latency(original),
            original.get("nodes", "-"),
        ]
    ]
    rows[0] += ["-"] * len(names) + ["-"]
    for step in report.get("steps") or []:
        metrics = step.get("metrics") or {}
        values = (step.get("verification") or {}).get("metrics_vs_original") or {}
        cells = [_num(values.get(n, {}).get("value")) for n in names]
        status = step.get("status", "?")
        cls = "ok" if status == "applied" else "bad" if status == "failed" else "muted"
        rows.append(
            [
                f"{step.get('index')}. {step.get('plugin')}",
                f"<span class='{cls}'>{_e(status)}</span>",
                size_text(metrics.get("size_bytes")),
                _latency(metrics),
                metrics.get("nodes", "-"),
                *cells,
                _e(ratios(original, metrics)) or "-",
            ]
        )
    comp = report.get("compile")
    if comp:
        ver = comp.get("verification") or {}
        passed = "" if not ver else (" verified" if ver.get("passed") else " FAILED verification")
        files = ", ".join(Path(f).name for f in comp.get("files") or [])
        rows.append([f"compile: {comp.get('plugin')}", _e(f"{comp.get('status')}{passed}"), "-", "-", "-"])
        rows[-1] += ["-"] * len(names) + [_e(files) or "-"]
    return "<h2>Steps</h2>" + _table(head, rows, escape=False)


def _bars(report: Mapping[str, Any]) -> str:
    """One bar chart per quantity: each step's value as a fraction of the original's."""
    original = (report.get("original") or {}).get("metrics") or {}
    steps = [s for s in report.get("steps") or [] if s.get("metrics")]
    if not steps:
        return ""
    charts = []
    quantities = [
        ("size", lambda m: m.get("size_bytes")),
        ("latency p50", lambda m: (m.get("latency") or {}).get("p50_ms")),
    ]
    quantities.append(("memory", lambda m: (m.get("latency") or {}).get("memory_bytes")))
    for title, get in quantities:
        base = get(original)
        points = [(f"{s['index']}. {s['plugin']}", get(s["metrics"])) for s in steps]
        points = [(label, v / base) for label, v in points if v is not None and base]
        if points:
            charts.append(_bar_chart(f"{title} (original = 1)", points, reference=1.0))
    for name in metric_columns(report):
        points = []
        for s in steps:
            found = ((s.get("verification") or {}).get("metrics_vs_original") or {}).get(name) or {}
            if found.get("value") is not None:
                points.append((f"{s['index']}. {s['plugin']}", float(found["value"])))
        if points:
            charts.append(_bar_chart(f"{name} against the original", points, reference=None))
    return "<h2>What each step bought</h2>" + "".join(charts)


def _budgets(report: Mapping[str, Any]) -> str:
    rows = []
    for step in report.get("steps") or []:
        ver = step.get("verification") or {}
        for metric, budget in (ver.get("budgets") or {}).items():
            margin = budget.get("margin")
            cls = "bad" if margin is not None and margin < 0 else "ok"
            rows.append(
                [
                    f"{step.get('index')}. {step.get('plugin')}",
                    _e(metric),
                    _num(budget.get("min")),
                    _num(budget.get("value")),
                    f"<span class='{cls}'>{_num(margin)}</span>",
                    _e(budget.get("against")),
                    _e(budget.get("set_by")),
                ]
            )
        for failure in ver.get("failures") or []:
            rows.append(
                [
                    f"{step.get('index')}. {step.get('plugin')}",
                    "failure",
                    "",
                    "",
                    f"<span class='bad'>{_e(failure)}</span>",
                    "",
                    "",
                ]
            )
    if not rows:
        return ""
    head = ["step", "metric", "budget", "value", "margin", "against", "set by"]
    return "<h2>Budgets</h2>" + _table(head, rows, escape=False)


def _profile(report: Mapping[str, Any]) -> str:
    """The per-node error profile of the failed step (its first diverging node marked), else of the most
    lossy step."""
    chosen = None
    for step in report.get("steps") or []:
        div = (step.get("verification") or {}).get("divergence") or {}
        if div.get("profile"):
            chosen = (step, div.get("profile"), div.get("node"))
    if chosen is None and report.get("profile"):
        prof = report["profile"]
        step = next((s for s in report.get("steps") or [] if s.get("index") == prof.get("index")), {})
        chosen = (step, prof.get("rows") or [], prof.get("first_diverging"))
    if chosen is None:
        return ""
    step, rows, marked = chosen
    if not rows:
        return ""
    title = f"{step.get('index')}. {step.get('plugin')}: cosine of every intermediate tensor against the model before it"
    chart = _line_chart(title, [r.get("cosine") for r in rows], [r.get("node") for r in rows], marked)
    note = f"<p>first diverging node: <code>{_e(marked)}</code></p>" if marked else ""
    return "<h2>Layer-wise error profile</h2>" + chart + note


def _plugin_tables(report: Mapping[str, Any]) -> str:
    """Tables plugins recorded as lists of rows (quant's candidates, mixed precision, prune's sensitivity)."""
    out = []
    for step in report.get("steps") or []:
        details = step.get("details") or {}
        for key, value in details.items():
            rows = (
                value.get("sensitivity") if key == "mixed_precision" and isinstance(value, Mapping) else value
            )
            if (
                isinstance(rows, list)
                and rows
                and all(isinstance(r, Mapping) for r in rows)
                and len(rows) <= 500
            ):
                columns = list(
                    dict.fromkeys(k for r in rows for k in r if not isinstance(r[k], (dict, list)))
                )[:10]
                if columns:
                    body = [[_cell(r.get(c)) for c in columns] for r in rows]
                    out.append(f"<h3>{_e(step.get('plugin'))}: {_e(key)}</h3>" + _table(columns, body))
    return "<h2>Plugin tables</h2>" + "".join(out) if out else ""


def _search(report: Mapping[str, Any]) -> str:
    section = report.get("search")
    if not section:
        return ""
    objective, metric = section.get("objective", "latency"), section.get("metric", "metric")
    parts = [
        f"<h2>Search</h2><p>{len(section.get('trials') or [])} trials, {section.get('cache', {}).get('hits', 0)} cached steps reused; best: <code>{_e((section.get('best') or {}).get('label', '-'))}</code></p>"
    ]
    trials = [
        t for t in section.get("trials") or [] if t.get(objective) is not None and t.get("metric") is not None
    ]
    for kind, front in (section.get("front") or {}).items():
        on_front = {p["trial"] for p in front}
        points = [
            (t[objective], t["metric"], t["id"] in on_front, t.get("passed"))
            for t in trials
            if t.get("node_kind") == kind
        ]
        parts.append(_scatter(f"{objective} vs {metric} on {kind}", points, objective, metric))
    if section.get("command"):
        parts.append(f"<p>re-run: <code>{_e(section['command'])}</code></p>")
    return "".join(parts)


def _environment(report: Mapping[str, Any]) -> str:
    cpu = report.get("cpu") or {}
    tools = report.get("tools") or {}
    rows = [["CPU", _e(cpu.get("model", "-"))], ["flags", _e(" ".join(cpu.get("flags") or []))]]
    rows += [["threads", _e(report.get("threads"))], ["seed", _e(report.get("seed"))]]
    rows += [[_e(k), _e(v)] for k, v in tools.items()]
    return "<h2>Environment</h2>" + _table(["", ""], rows, escape=False)


# -- drawing -------------------------------------------------------------------------------------
def _bar_chart(title: str, points: Sequence[tuple[str, float]], reference: float | None) -> str:
    width, row, left = 640, 22, 170
    top = max([v for _, v in points] + [reference or 0.0, 1e-9])
    height = row * len(points) + 34
    svg = [f"<svg width='{width}' height='{height}' role='img' aria-label='{_e(title)}'>"]
    svg.append(f"<text x='0' y='14' font-weight='600'>{_e(title)}</text>")
    scale = (width - left - 70) / top
    for i, (label, value) in enumerate(points):
        y = 24 + i * row
        svg.append(f"<text x='0' y='{y + 14}'>{_e(label[:26])}</text>")
        svg.append(
            f"<rect x='{left}' y='{y + 3}' width='{max(value * scale, 1):.1f}' height='{row - 7}' fill='{COLORS[i % len(COLORS)]}'/>"
        )
        svg.append(f"<text x='{left + value * scale + 4:.1f}' y='{y + 14}'>{value:.4g}</text>")
    if reference is not None:
        x = left + reference * scale
        svg.append(
            f"<line x1='{x:.1f}' x2='{x:.1f}' y1='20' y2='{height}' stroke='#57606a' stroke-dasharray='3,3'/>"
        )
    svg.append("</svg>")
    return "<div class='card'>" + "".join(svg) + "</div>"


def _line_chart(
    title: str, values: Sequence[float | None], labels: Sequence[str | None], marked: str | None
) -> str:
    width, height, left, bottom = 900, 240, 50, 30
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(min(finite), 0.9), 1.0
    span = (hi - lo) or 1.0
    step = (width - left - 10) / max(len(values) - 1, 1)
    coords = [
        (left + i * step, 20 + (hi - v) / span * (height - bottom - 20))
        for i, v in enumerate(values)
        if v is not None and math.isfinite(v)
    ]
    svg = [f"<svg width='{width}' height='{height}' role='img' aria-label='{_e(title)}'>"]
    svg.append(f"<text x='0' y='12' font-weight='600'>{_e(title)}</text>")
    svg.append(f"<text x='0' y='24'>{hi:.3g}</text><text x='0' y='{height - bottom}'>{lo:.3g}</text>")
    svg.append(
        "<polyline fill='none' stroke='#0969da' stroke-width='1.5' points='"
        + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        + "'/>"
    )
    if marked in labels:
        i = list(labels).index(marked)
        x = left + i * step
        svg.append(
            f"<line x1='{x:.1f}' x2='{x:.1f}' y1='16' y2='{height - bottom}' stroke='#cf222e' stroke-width='2'/>"
        )
        svg.append(
            f"<text x='{min(x + 4, width - 200):.1f}' y='{height - 8}' fill='#cf222e'>{_e(marked)}</text>"
        )
    svg.append(
        f"<text x='{left}' y='{height - 8}' class='muted'>graph order &rarr; ({len(values)} tensors)</text>"
    )
    svg.append("</svg>")
    return "<div class='card'>" + "".join(svg) + "</div>"


def _scatter(title: str, points: Sequence[tuple[float, float, bool, bool]], xname: str, yname: str) -> str:
    width, height, left, bottom = 640, 300, 60, 40
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) or 1.0
    y0, y1 = min(ys), max(ys)
    xspan, yspan = (x1 - x0) or abs(x1) or 1.0, (y1 - y0) or 0.01
    svg = [f"<svg width='{width}' height='{height}' role='img' aria-label='{_e(title)}'>"]
    svg.append(f"<text x='0' y='12' font-weight='600'>{_e(title)}</text>")
    for x, y, front, passed in points:
        cx = left + (x - x0) / xspan * (width - left - 20)
        cy = 24 + (y1 - y) / yspan * (height - bottom - 30)
        color = "#cf222e" if front else "#8c959f"
        fill = color if passed else "none"
        svg.append(f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='5' stroke='{color}' fill='{fill}'/>")
    svg.append(f"<text x='{left}' y='{height - 8}'>{_e(xname)} {x0:.4g} &rarr; {x1:.4g}</text>")
    svg.append(f"<text x='0' y='30'>{y1:.4g}</text><text x='0' y='{height - bottom}'>{y0:.4g}</text>")
    svg.append(
        f"<text x='{width - 230}' y='{height - 8}'>red: Pareto front; hollow: misses the budget ({_e(yname)})</text>"
    )
    svg.append("</svg>")
    return "<div class='card'>" + "".join(svg) + "</div>"


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], escape: bool = True) -> str:
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{_e(c) if escape else c}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _model_name(report: Mapping[str, Any]) -> str:
    return Path(str((report.get("settings") or {}).get("model") or "model")).name


def _latency(metrics: Mapping[str, Any]) -> str:
    lat = metrics.get("latency") or {}
    return f"{lat['p50_ms']:.3f}" if lat.get("p50_ms") is not None else "-"


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.5g}"
    return _e(value)


def _cell(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)
