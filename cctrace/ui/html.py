"""`cctrace report --html OUT.html`: the report as one self-contained page for an incident ticket.

Inline SVG and CSS only (no script, no font, no network at view time): the lost time per category, the
per-step timeline of lost time, the crossing-cost plot (measured medians and the fitted model) and the
top offenders (call sites when the report carries them). It renders what analysis returns; every number
on the page is a number of the report (or of the step_timeline and latency_by_size queries) as printed.
"""

from __future__ import annotations

import html
import math

from cctrace.ui.render import LABELS, describe_slow_steps, describe_traced, describe_unmeasured, lost_ms_text
from cctrace.ui.safe import clean

# one colour per loss category (page only); "unexplained" is grey
COLOURS = {
    "small_crossings": "#4a90d9",
    "stream_concurrency": "#9b59b6",
    "async_stalls": "#e67e22",
    "alloc_and_copy": "#16a085",
    "sync_waits": "#d64541",
}
SERIES = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def _t(value) -> str:
    """Text from a trace, safe in HTML: control characters written as escapes (cctrace.ui.safe), markup
    escaped."""
    return html.escape(clean(value, None))


def _num(x: float, digits: int = 3) -> str:
    return f"{x:,.{digits}f}"


def category_bars(r: dict, width: int = 760) -> str:
    """Horizontal bars: each category's lost ms (and the unexplained rest) against the window."""
    window = r["window_ms"] or 1

    def value(c: dict) -> str:
        return f"{_num(c['lost_ms'])} ms ({c['pct_of_window']:.1f}%)" if c.get("measured", True) else lost_ms_text(c)

    rows = [(c["category"], LABELS[c["category"]], c["lost_ms"], value(c)) for c in r["categories"]]
    rest = {"lost_ms": r["unexplained_ms"], "pct_of_window": 100 * r["unexplained_ms"] / window}
    rows.append(("unexplained", "unexplained (compute, Python, ...)", r["unexplained_ms"], value(rest)))
    label_w, bar_w, h = 230, width - 230 - 170, 26
    out = [f'<svg id="category-bars" class="chart" width="{width}" height="{h * len(rows) + 10}" role="img">']
    for i, (key, label, ms, text) in enumerate(rows):
        y = 5 + i * h
        w = max(0.0, min(1.0, ms / window)) * bar_w
        colour = COLOURS.get(key, "#999")
        out.append(
            f'<g class="cat" data-category="{key}" data-lost-ms="{ms}">'
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">{_t(label)}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{bar_w}" height="{h - 8}" fill="#eee"/>'
            f'<rect class="bar" x="{label_w}" y="{y + 4}" width="{w:.2f}" height="{h - 8}" fill="{colour}"/>'
            f'<text class="value" x="{label_w + bar_w + 8}" y="{y + 17}">{_t(text)}</text></g>'
        )
    out.append("</svg>")
    return "\n".join(out)


def step_chart(r: dict, steps: list[dict], width: int = 900, height: int = 260) -> str:
    """Per step (numbered from 1): its time as a grey bar, each category's lost µs stacked in front."""
    if not steps:
        return '<p class="none">no steps in this trace: no per-step timeline</p>'
    cats = [c["category"] for c in r["categories"]]
    left, bottom, top = 60, 30, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = max(max(s["step_us"], sum(s.get(f"{c}_us", 0) for c in cats)) for s in steps) or 1
    bw = plot_w / len(steps)
    out = [f'<svg id="step-chart" class="chart" width="{width}" height="{height}" role="img">']
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        out.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" class="tick">{peak * frac:,.0f}</text>')
    for i, s in enumerate(steps):
        x = left + i * bw
        sh = s["step_us"] / peak * plot_h
        out.append(
            f'<g class="step" data-step="{s["step"]}" data-step-us="{s["step_us"]}">'
            f"<title>step {s['step']} ({_t(s['name'])}): {s['step_us']:,.1f} µs</title>"
            f'<rect x="{x:.2f}" y="{top + plot_h - sh:.2f}" width="{max(bw - 0.3, 0.5):.2f}" height="{sh:.2f}" fill="#ddd"/>'
        )
        y = top + plot_h
        for c in cats:
            v = s.get(f"{c}_us", 0) or 0
            if v <= 0:
                continue
            h = v / peak * plot_h
            y -= h
            out.append(
                f'<rect class="lost" data-category="{c}" x="{x:.2f}" y="{y:.2f}" width="{max(bw - 0.3, 0.5):.2f}" '
                f'height="{h:.2f}" fill="{COLOURS[c]}"/>'
            )
        out.append("</g>")
    out.append(f'<text x="{left}" y="{height - 8}" class="tick">step 1</text>')
    out.append(
        f'<text x="{width - 10}" y="{height - 8}" text-anchor="end" class="tick">step {steps[-1]["step"]}</text>'
    )
    out.append(
        f'<text x="12" y="{top + plot_h / 2}" transform="rotate(-90 12 {top + plot_h / 2})" class="tick">µs</text>'
    )
    out.append("</svg>")
    return "\n".join(out)


def _ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 values inside [lo, hi] for a log axis; the ends themselves when the range holds too few."""
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks = [m * 10**e for e in range(e0, e1 + 1) for m in (1, 2, 5) if lo <= m * 10**e <= hi]
    if len(ticks) > 8:
        ticks = [t for t in ticks if f"{t:g}"[0] == "1"]
    return ticks if len(ticks) >= 2 else sorted({float(f"{lo:.3g}"), *ticks, float(f"{hi:.3g}")})


def cost_plot(r: dict, latency: list[dict], width: int = 900, height: int = 380) -> str:
    """Latency over size (log-log) per direction and host memory kind: measured medians as dots, the
    fitted model (toll + bytes / bandwidth) as a line."""
    if not latency:
        return '<p class="none">no host&lt;-&gt;device copies in this trace</p>'
    series = sorted({(p["copy_kind"], p["host_kind"]) for p in latency})
    model = {(m["copy_kind"], m["host_kind"]): m for m in r["cost_model"]}
    xs = [math.log2(max(p["size_bytes"], 1)) for p in latency]
    ys = [math.log10(max(p["median_us"], 1e-3)) for p in latency if p["median_us"] is not None]
    x0, x1 = min(xs) - 0.5, max(xs) + 0.5
    y0, y1 = min(ys) - 0.1, max(ys) + 0.1
    left, bottom, top, right = 70, 40, 10, 250
    pw, ph = width - left - right, height - top - bottom

    def px(b: float) -> float:
        return left + (math.log2(max(b, 1)) - x0) / (x1 - x0) * pw

    def py(us: float) -> float:
        return top + ph - (math.log10(max(us, 1e-3)) - y0) / (y1 - y0) * ph

    out = [f'<svg id="cost-plot" class="chart" width="{width}" height="{height}" role="img">']
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#bbb"/>')
    for e in range(math.ceil(x0), math.floor(x1) + 1, 2):
        x = left + (e - x0) / (x1 - x0) * pw
        lab = f"{2**e / 2**20:g} MiB" if e >= 20 else (f"{2**e / 1024:g} KiB" if e >= 10 else f"{2**e} B")
        out.append(f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle" class="tick">{lab}</text>')
    for v in _ticks(10**y0, 10**y1):
        y = py(v)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{v:g} µs</text>')
    out.append(f'<clipPath id="plot-area"><rect x="{left}" y="{top}" width="{pw}" height="{ph}"/></clipPath>')
    for k, key in enumerate(series):
        colour = SERIES[k % len(SERIES)]
        m = model.get(key)
        if m and m["gbps"]:
            pts = []
            for i in range(61):
                b = 2 ** (x0 + i / 60 * (x1 - x0))
                pts.append(f"{px(b):.1f},{py(m['toll_us'] + b / (m['gbps'] * 1e3)):.1f}")
            out.append(
                f'<polyline class="model" clip-path="url(#plot-area)" points="{" ".join(pts)}" fill="none" '
                f'stroke="{colour}" stroke-dasharray="4 3"/>'
            )
        for p in latency:
            if (p["copy_kind"], p["host_kind"]) == key and p["median_us"] is not None:
                out.append(
                    f'<circle class="median" data-series="{_t(key[0])} {_t(key[1])}" data-bytes="{p["size_bytes"]}" '
                    f'data-median-us="{p["median_us"]}" cx="{px(p["size_bytes"]):.1f}" cy="{py(p["median_us"]):.1f}" '
                    f'r="4" fill="{colour}"><title>{_t(key[0])} {_t(key[1])} {p["size_bytes"]} B: median '
                    f"{p['median_us']} µs over {p['copies']} copies</title></circle>"
                )
        ly = top + 14 + k * 34
        fit = (
            f"toll {m['toll_us']} µs, {m['gbps']} GB/s" + (" (assumed)" if m["bandwidth_assumed"] else "") if m else ""
        )
        out.append(f'<circle cx="{left + pw + 14}" cy="{ly - 4}" r="4" fill="{colour}"/>')
        out.append(f'<text x="{left + pw + 24}" y="{ly}" class="legend">{_t(key[0])} {_t(key[1])}</text>')
        out.append(f'<text x="{left + pw + 24}" y="{ly + 14}" class="tick">{_t(fit)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _table(rows: list[dict], cls: str) -> str:
    if not rows:
        return '<p class="none">no rows</p>'
    cols = list(rows[0])
    head = "".join(f"<th>{_t(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{_t('' if r.get(c) is None else r.get(c))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def offenders(r: dict) -> str:
    """The top call sites when the report names them (traces recorded with Python stacks), then each
    category's top rows."""
    sites = [s for s in r.get("callsites") or [] if s.get("callsite")]
    parts = ["<h3>Top call sites</h3>" + _table(sites[:15], "callsites")] if sites else []
    for c in r["categories"]:
        rows = (r.get("top") or {}).get(c["category"]) or []
        if rows:
            parts.append(f'<h3 data-category="{c["category"]}">{_t(LABELS[c["category"]])}</h3>' + _table(rows, "top"))
    return "\n".join(parts) or '<p class="none">nothing lost to the boundary categories</p>'


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1000px; }
h1 { font-size: 20px; } h2 { font-size: 17px; margin-top: 28px; } h3 { font-size: 14px; }
.chart text { font: 12px system-ui, sans-serif; fill: #222; } .chart .tick { fill: #666; font-size: 11px; }
table { border-collapse: collapse; font-size: 12px; margin: 6px 0 14px; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: right; } th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
.legend-row span { display: inline-block; margin-right: 14px; } .sw { width: 10px; height: 10px; display: inline-block; }
.none { color: #777; } .meta { color: #444; }
"""


def report_page(r: dict, steps: list[dict], latency: list[dict]) -> str:
    """The whole page: `r` is the report (as `report --json` prints it), `steps` the step_timeline rows,
    `latency` the latency_by_size rows."""
    step_line = (
        f"{r['steps']} steps ({_t(r['step_source'])}), {r['step_ms']} ms/step" if r["steps"] else "no steps found"
    )
    legend = "".join(
        f'<span><i class="sw" style="background:{COLOURS[c["category"]]}"></i> {_t(LABELS[c["category"]])}</span>'
        for c in r["categories"]
    )
    advice = "".join(
        f"<li><b>{_t(LABELS[c['category']])}</b>: {_t(c['advice'])}"
        + (f" Most of it at <code>{_t(c['where'])}</code>." if c.get("where") else "")
        + "</li>"
        for c in r["categories"]
        if c["advice"]
    )
    injected = ""
    if r.get("bridge_emulation"):
        from cctrace.ui.render import describe_injected

        injected = f'<p class="meta" id="injected">{_t(describe_injected(r["bridge_emulation"]))}</p>'
    traced = f'<p class="meta" id="traced">{_t(describe_traced(r))}</p>' if describe_traced(r) else ""
    slow = describe_slow_steps(r)
    slow_p = f'<p class="meta" id="slow-steps">{_t(slow)}</p>' if slow else ""
    idle = "not measured" if r["gpu_idle_ms"] is None else f"{r['gpu_idle_ms']} ms"
    unmeasured = describe_unmeasured(r)
    slow_p += f'\n<p class="meta" id="unmeasured">{_t(unmeasured)}</p>' if unmeasured else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>cctrace report: {_t(r["trace"])}</title><style>{CSS}</style></head>
<body>
<h1>cctrace report: {_t(r["trace"])}</h1>
<p class="meta">command <code>{_t(" ".join(r.get("command") or []))}</code><br>
GPU {_t(", ".join(g for g in r["gpu"] if g) or "unknown")}; driver {_t(r.get("driver") or "unknown")};
CC {_t((r.get("confidential_computing") or {}).get("ccFeature", "unknown"))}<br>
window <span id="window-ms">{r["window_ms"]}</span> ms, {step_line}; GPU idle {idle}</p>
{traced}
{injected}
<h2>Where the time went</h2>
{category_bars(r)}
{slow_p}
{"<ul>" + advice + "</ul>" if advice else ""}
<h2>Lost time per step</h2>
<p class="legend-row">{legend} <span><i class="sw" style="background:#ddd"></i> step time</span></p>
{step_chart(r, steps)}
<h2>Crossing cost (fitted on this trace)</h2>
{cost_plot(r, latency)}
<h2>Top offenders</h2>
{offenders(r)}
<p class="meta">made by cctrace; every figure comes from <code>cctrace report --json</code> and the
step_timeline and latency_by_size queries of the same trace.</p>
</body></html>
"""
