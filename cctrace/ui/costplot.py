"""The explorer's crossing-cost plot: latency over size (log-log) as text, sized to the terminal."""

from __future__ import annotations

import math

from rich.text import Text


def cost_plot(latency: list[dict], cost_model: list[dict], width: int, height: int) -> Text:
    """Latency vs size, log-log, per direction and host memory kind: measured medians as letters in
    their series' colour, each series' fitted model (toll + bytes / bandwidth) as a dotted curve;
    `*` where several series' medians share a cell, listed under the plot."""
    rows = latency
    if not rows:
        return Text("no host<->device copies in this trace", style="dim")
    series = sorted({(r["copy_kind"], r["host_kind"]) for r in rows})
    model = {(m["copy_kind"], m["host_kind"]): m for m in cost_model}
    marks, colours = "ABCDEFGH", ("#4aa3ff", "#ff9f1c", "#2ec4b6", "#c77dff", "#e9c46a", "#ff4d6d")
    xs = [math.log2(max(r["size_bytes"], 1)) for r in rows]
    x0, x1 = min(xs), max(xs) + 1e-9

    def size_at(cx: int) -> float:
        return 2 ** (x0 + cx / max(width - 1, 1) * (x1 - x0))

    def model_us(key: tuple, nbytes: float) -> float | None:
        m = model.get(key)
        return m["toll_us"] + nbytes / (m["gbps"] * 1e3) if m and m["gbps"] else None

    curves = {k: [model_us(k, size_at(cx)) for cx in range(width)] for k in series}
    # the measured medians set the scale; model curves outside it are clipped
    ys = [math.log10(max(r["median_us"], 1e-3)) for r in rows if r["median_us"] is not None]
    y0, y1 = min(ys) - 0.05, max(ys) + 0.05

    def cy(v: float) -> int:
        return height - 1 - int((math.log10(max(v, 1e-3)) - y0) / (y1 - y0) * (height - 1))

    grid: list[list[tuple[str, str]]] = [[(" ", "")] * width for _ in range(height)]
    for k, key in enumerate(series):
        for cx, v in enumerate(curves[key]):
            if v is not None and 0 <= cy(v) < height and grid[cy(v)][cx][0] == " ":
                grid[cy(v)][cx] = ("·", colours[k % len(colours)])
    shared: dict[tuple[int, int], set[str]] = {}
    for r in rows:
        if r["median_us"] is None:
            continue
        k = series.index((r["copy_kind"], r["host_kind"]))
        cx = int((math.log2(max(r["size_bytes"], 1)) - x0) / (x1 - x0) * (width - 1))
        y, mark = cy(r["median_us"]), marks[k % len(marks)]
        shared.setdefault((y, cx), set()).add(mark)
        many = len(shared[y, cx]) > 1
        grid[y][cx] = ("*", "bold") if many else (mark, f"bold {colours[k % len(colours)]}")
    out = Text(no_wrap=True, overflow="crop")
    out.append(f"latency µs (log) {10**y0:.2f} to {10**y1:.0f}, size bytes (log2) {2**x0:.0f} to {2**x1:.0f}\n")
    for line in grid:
        out.append("|")
        for ch, style in line:
            out.append(ch, style=style)
        out.append("\n")
    out.append("+" + "-" * width + "\n")
    for k, key in enumerate(series):
        m = model.get(key)
        fit = (
            f"toll {m['toll_us']} us, {m['gbps']} GB/s" + (" (assumed)" if m["bandwidth_assumed"] else "") if m else ""
        )
        out.append(f"{marks[k % len(marks)]}", style=f"bold {colours[k % len(colours)]}")
        out.append(f" {key[0]} {key[1]}: {fit}\n")
    both = [f"{size_at(cx):.0f} B: {''.join(sorted(m))}" for (_, cx), m in sorted(shared.items()) if len(m) > 1]
    out.append("· fitted model (toll + bytes / bandwidth)", style="dim")
    if both:
        out.append(("\n* several series in one cell: " + ", ".join(both))[: width + 1], style="dim")
    return out
