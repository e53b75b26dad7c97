"""Rendering analysis results: rich tables for the terminal, Markdown for tickets. No analysis here."""

from __future__ import annotations

import pyarrow as pa
from rich.console import Console
from rich.table import Table

from cctrace.analyze.categories import LABELS
from cctrace.ui.safe import cell, clean, markup

NO_STACK = "(no stack)"  # calls recorded without a Python stack (--no-stacks, host probes, no Python)


def relative(text: str, cwd: str | None) -> str:
    """A call site's path shown relative to the traced command's working directory when under it."""
    return text[len(cwd) + 1 :] if cwd and text.startswith(cwd.rstrip("/") + "/") else text


def site(row: dict, cwd: str | None = None) -> str:
    """`file:line function` of a callsites row, control characters escaped."""
    if row.get("callsite") is None:
        return NO_STACK
    return clean(relative(f"{row['callsite']} {row.get('function') or ''}".strip(), cwd))


def callsite_table(rows: list[dict], title: str, limit: int = 10, cwd: str | None = None) -> Table:
    """The call sites that lost the most time (rows of the callsites query)."""
    t = Table(title=title)
    for c in ("call site", "category", "calls", "per step", "lost ms", "per step µs"):
        t.add_column(c, justify="left" if c in ("call site", "category") else "right", overflow="fold")
    for r in rows[:limit]:
        t.add_row(
            cell(site(r, cwd)),
            LABELS.get(r["category"], r["category"]),
            str(r["calls"]),
            f"{r['per_step']:.2f}",
            f"{r['lost_ms']:.3f}",
            f"{r['lost_per_step_us']:.2f}",
        )
    return t


def arrow_table(t: pa.Table, title: str | None = None, limit: int = 200) -> Table:
    out = Table(title=cell(title) if title else None, show_lines=False)
    for name in t.column_names:
        out.add_column(cell(name), overflow="fold")
    for row in t.slice(0, limit).to_pylist():
        out.add_row(*[cell(v) for v in row.values()])
    return out


def print_arrow(t: pa.Table, console: Console, title: str | None = None, limit: int = 200) -> None:
    """Query rows for the terminal: a table when it fits the terminal's width, else one block per row
    (`column  value` lines), so that no number is ever split across lines or cut short."""
    from rich.measure import Measurement

    table = arrow_table(t, title, limit)
    if Measurement.get(console, console.options.update_width(1 << 16), table).maximum <= console.width:
        console.print(table)
        return
    if title:
        console.print(cell(title), style="bold")
    names = [cell(n) for n in t.column_names]
    width = max(len(n) for n in names)
    for i, row in enumerate(t.slice(0, limit).to_pylist(), 1):
        console.print(f"-- row {i} --", style="dim")
        for name, v in zip(names, row.values(), strict=True):
            line = name.copy()
            line.pad_right(width - len(name) + 2)
            line.append_text(cell(v))
            console.print(line, overflow="fold")
    if t.num_rows > limit:
        console.print(f"({t.num_rows - limit} more rows: --format csv or json for all)", style="dim")


def print_partial(partial: list[str], console: Console) -> None:
    """PARTIAL, with what is missing, when the trace lacks data (the numbers below count only what loaded)."""
    for p in partial:
        console.print(f"[bold red]PARTIAL[/bold red] {markup(p, None)}")


def describe_steps(r: dict) -> str:
    """How many steps, how they were found and how regular they are."""
    if not r["steps"]:
        return "no steps found"
    return (
        f"{r['steps']} steps (from {r['step_source']}), {r['step_ms']} ms/step; median {r['step_median_ms']} ms, "
        f"p10-p90 {r['step_p10_ms']}-{r['step_p90_ms']} ms"
    )


def _seconds(ms: float) -> str:
    return f"{ms / 1e3:.1f} s" if ms >= 1e3 else f"{ms:.1f} ms"


def describe_traced(r: dict) -> str | None:
    """How much of the run the tracing windows covered ("traced 2 windows, 3.1 s of 9.8 s"); None when
    the whole run was traced. The window, idle time and steps count only traced time."""
    t = r.get("traced")
    if not t:
        return None
    of = f" of {_seconds(t['run_ms'])}" if t.get("run_ms") is not None else ""
    n = t["windows"]
    return f"traced {n} window{'s' if n != 1 else ''}, {_seconds(t['traced_ms'])}{of}; the analysis counts traced time only"


def describe_ground_truth(r: dict) -> str | None:
    """The emulator's injections inside the window against what the categories explain, else the whole
    run's counters (traces recorded before per-injection rows), labelled as such."""
    gt = r.get("ground_truth")
    if gt:
        share = f"{gt['explained_share']:.1%}" if gt["explained_share"] is not None else "n/a"
        aside = gt.get("unmeasured_ms") or 0
        of_it = f", {aside} ms of it into what this trace cannot measure (set aside)" if aside else ""
        return (
            f"ground truth (this window): the emulator injected {gt['injected_ms']} ms{of_it}; the categories it "
            f"maps to explain {gt['explained_ms']} ms ({share})"
        )
    if r.get("bridge_emulation"):
        return describe_injected(r["bridge_emulation"])
    return None


def print_report(r: dict, console: Console) -> None:
    console.print(f"[bold]cctrace report[/bold] {markup(r['trace'])}")
    print_partial(r.get("partial") or [], console)
    console.print(
        f"window {r['window_ms']} ms, {describe_steps(r)}; GPU {markup(', '.join(map(str, r['gpu'])) or 'unknown')}"
    )
    traced = describe_traced(r)
    if traced:
        console.print(traced)
    truth = describe_ground_truth(r)
    if truth:
        console.print(f"[magenta]{truth}[/magenta]")
    t = Table(title="Where the time went")
    for c in ("category", "events", "lost ms", "per step µs", "% of window", "GPU idle overlap ms"):
        t.add_column(c, justify="left" if c == "category" else "right")
    for c in r["categories"]:
        t.add_row(
            LABELS[c["category"]],
            str(c["events"]),
            *category_cells(c),
        )
    t.add_row("[dim]unexplained (compute, Python, ...)[/dim]", "", f"{r['unexplained_ms']:.3f}", "", "", "")
    console.print(t)
    slow = describe_slow_steps(r)
    if slow:
        console.print(f"[yellow]{slow}[/yellow]")
    unmeasured = describe_unmeasured(r)
    if unmeasured:
        console.print(f"[yellow]{markup(unmeasured, None)}[/yellow]")
    elif not r["gpu_busy_complete"]:
        console.print("[yellow]no kernels recorded: GPU idle counts copies only (record with --kernels)[/yellow]")
    for c in r["categories"]:
        if c["advice"]:
            console.print(f"• {LABELS[c['category']]}: {c['advice']}")
            if c.get("where"):
                console.print(f"    most of it at [bold]{markup(relative(c['where'], r.get('cwd')))}[/bold]")
            for row in r["top"].get(c["category"], [])[:2]:
                console.print(f"    [dim]{markup(_brief(row), 400)}[/dim]")
    if any(row["callsite"] is not None for row in r.get("callsites") or []):
        title = "Top call sites (innermost frame outside the frameworks)"
        console.print(callsite_table(r["callsites"], title, cwd=r.get("cwd")))
    cm = Table(title="Crossing cost model (fitted on this trace)")
    for col in ("copy_kind", "host_kind", "copies", "toll_us", "gbps", "bandwidth_assumed"):
        cm.add_column(col)
    for row in r["cost_model"]:
        cm.add_row(
            *[cell(row[k]) for k in ("copy_kind", "host_kind", "copies", "toll_us", "gbps", "bandwidth_assumed")]
        )
    console.print(cm)


def _brief(row: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in row.items() if v not in (None, ""))


def report_markdown(r: dict) -> str:
    lines = [
        f"### cctrace report: `{clean(r['trace'])}`",
        "",
        *[f"**PARTIAL** {clean(p, None)}" for p in r.get("partial") or []],
        f"Window {r['window_ms']} ms, {describe_steps(r)}.",
        "",
        *([f"{describe_traced(r)}.", ""] if describe_traced(r) else []),
        *([f"_{describe_ground_truth(r)}_", ""] if describe_ground_truth(r) else []),
        "| category | events | lost ms | per step µs | % of window | GPU idle overlap ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in r["categories"]:
        lines.append(f"| {LABELS[c['category']]} | {c['events']} | {' | '.join(category_cells(c))} |")
    lines.append(f"| unexplained | | {r['unexplained_ms']:.3f} | | | |")
    lines.append("")
    slow = describe_slow_steps(r)
    if slow:
        lines += [f"_{slow}_", ""]
    unmeasured = describe_unmeasured(r)
    if unmeasured:
        lines += [f"_{clean(unmeasured, None)}_", ""]
    lines += [
        f"- **{LABELS[c['category']]}**: {c['advice']}"
        + (f" Most of it at `{clean(relative(c['where'], r.get('cwd')))}`." if c.get("where") else "")
        for c in r["categories"]
        if c["advice"]
    ]
    sites = [row for row in r.get("callsites") or [] if row["callsite"] is not None]
    if sites:
        lines += ["", "| call site | category | calls | per step | lost ms |", "| --- | --- | ---: | ---: | ---: |"]
        lines += [
            f"| `{site(row, r.get('cwd'))}` | {LABELS.get(row['category'], row['category'])} | {row['calls']} | {row['per_step']:.2f} | "
            f"{row['lost_ms']:.3f} |"
            for row in sites[:10]
        ]
    return "\n".join(lines) + "\n"


def diff_rows(d: dict) -> list[tuple[str, str, str, str, str]]:
    """Per category: label, base and trace ms/step, delta, share of the gap (terminal and explorer alike)."""
    rows = []
    for c in d["categories"]:
        if not c.get("measured", True):
            rows.append((LABELS[c["category"]], "not measured", "", "", ""))
            continue
        share = "" if c["share_of_gap"] is None else f"{100 * c['share_of_gap']:.1f}%"
        rows.append(
            (
                LABELS[c["category"]],
                f"{c['base_ms_per_step']:.4f}",
                f"{c['trace_ms_per_step']:.4f}",
                f"{c['delta_ms_per_step']:+.4f}",
                share,
            )
        )
    return rows


def lost_ms_text(c: dict) -> str:
    """A category's lost ms, or that the trace cannot measure it (never a zero that means unknown)."""
    return f"{c['lost_ms']:.3f}" if c.get("measured", True) else "not measured"


def category_cells(c: dict) -> tuple[str, str, str, str]:
    """A category's lost ms, per step µs, % of window and GPU idle overlap ms, as the tables show them."""
    if not c.get("measured", True):
        return (lost_ms_text(c), "-", "-", "-")
    overlap = c["gpu_idle_overlap_ms"]
    idle = "-" if overlap is None else f"{overlap:.3f}"  # None: GPU idle not measured
    return (lost_ms_text(c), f"{c['per_step_us']:.2f}", f"{c['pct_of_window']:.2f}", idle)


def describe_unmeasured(r: dict) -> str | None:
    """Why some figures are not measured: no GPU-side copy times; None where they all are."""
    missing = [LABELS[c["category"]] for c in r["categories"] if not c.get("measured", True)]
    if r.get("gpu_idle_ms", 0) is None:
        missing.append("GPU idle")
    if r.get("gpu_times", True) or not missing:
        return None
    return (
        f"the copies carry host call times, not GPU-side ones (the driver interposer or host probes recorded them): "
        f"{' and '.join(missing)} not measured; record with CUPTI (`--interpose off`, the default kinds) for them"
    )


def describe_slow_steps(r: dict) -> str | None:
    """A report's steps slowed by something other than crossings, in a sentence; None without any."""
    slow = r.get("slow_steps") or {}
    if not slow.get("steps"):
        return None
    return (
        f"{slow['steps']} step(s) ran at least {r['params']['slow_step_factor']:g}x the median step with no crossings "
        f"to show for it ({slow['excess_ms']:.3f} ms of the unexplained time): the host, another tenant, a GC pause "
        "or other work (cctrace query slow_steps lists them)"
    )


def slow_steps_cells(d: dict) -> tuple[str, ...] | None:
    """The diff table's row for the steps slowed by something other than crossings; None without any."""
    slow = d.get("slow_steps")
    if not slow or not (slow["base"] or slow["trace"]):
        return None
    gap = d["gap_ms_per_step"]
    share = f"{100 * d['slow_steps_ms_per_step'] / gap:.1f}%" if gap else ""
    label = f"slow steps, not crossings ({slow['base']} -> {slow['trace']})"
    return (label, "", "", f"{d['slow_steps_ms_per_step']:+.4f}", share)


def print_diff(d: dict, console: Console) -> None:
    console.print(f"[bold]cctrace diff[/bold] {markup(d['base'])} -> {markup(d['trace'])}")
    print_partial(d.get("partial") or [], console)
    console.print(
        f"step time {d['base_step_ms']:.4f} -> {d['trace_step_ms']:.4f} ms "
        f"({d['gap_ms_per_step']:+.4f} ms/step, {d['gap_pct']}%)"
    )
    if d.get("gap_median_ms_per_step") is not None:
        console.print(
            f"[dim]median step {d['base_step_median_ms']:.4f} -> {d['trace_step_median_ms']:.4f} ms "
            f"({d['gap_median_ms_per_step']:+.4f} ms): a mean gap far from it means some steps were slowed "
            "by something else (another tenant, the host)[/dim]"
        )
    t = Table(title="What explains the gap (per step)")
    for c in ("category", "base ms", "trace ms", "delta ms", "share of gap"):
        t.add_column(c, justify="left" if c == "category" else "right")
    for row in diff_rows(d):
        t.add_row(*row)
    slow = slow_steps_cells(d)
    if slow:
        t.add_row(f"[dim]{slow[0]}[/dim]", *slow[1:])
    t.add_row("[dim]unexplained[/dim]", "", "", f"{d['unexplained_ms_per_step']:+.4f}", "")
    console.print(t)
    sites = [row for row in d.get("callsites") or [] if row["delta_ms_per_step"]]
    if sites:
        st = Table(title="Call sites that changed most (lost ms per step)")
        for c in ("call site", "category", "base ms", "trace ms", "delta ms"):
            st.add_column(c, justify="left" if c in ("call site", "category") else "right", overflow="fold")
        for row in sites:
            st.add_row(
                cell(site(row)),
                LABELS.get(row["category"], row["category"]),
                f"{row['base_ms_per_step']:.4f}",
                f"{row['trace_ms_per_step']:.4f}",
                f"{row['delta_ms_per_step']:+.4f}",
            )
        console.print(st)
    for w in d.get("warnings") or []:
        console.print(f"[yellow]cannot judge: {w}[/yellow]")
    inj = d.get("bridge_injected_ms_per_step")
    if inj:
        scope = (
            "over the analysed windows"
            if d.get("bridge_injected_scope") == "window"
            else ("whole run, warm-up included")
        )
        console.print(
            f"ground truth ({scope}): injected {inj:+.4f} ms/step, explained {d['explained_ms_per_step']:+.4f} "
            f"ms/step ({d['explained_ms_per_step'] / inj:.1%})"
        )
        for c in d["categories"]:
            if c.get("injected_ms_per_step") is not None:
                console.print(
                    f"[dim]  {LABELS[c['category']]}: injected {c['injected_ms_per_step']:+.4f}, "
                    f"explained {c['delta_ms_per_step']:+.4f} ms/step[/dim]"
                )
        rest = d["gap_ms_per_step"] - inj
        if rest > 0 and d.get("same_program", True) and not d.get("warnings"):
            console.print(
                f"[dim]the other {rest:+.4f} ms/step of the gap was not injected (the emulator's own cost, "
                "run-to-run variance)[/dim]"
            )


def describe_injected(summary: dict) -> str:
    """One line saying what the emulator injected over the whole run (warm-up included)."""
    ms, n = summary["injected_ms"], summary["counts"]
    return (
        f"emulated bridge {summary['spec']} (whole run, warm-up included): {summary['tolls']:,} tolls "
        f"{ms['toll']} ms, bandwidth {ms['bandwidth']} ms, serialization {n['serialize']:,} ({ms['serialize']} ms), "
        f"async blocking {n['async_block']:,} ({ms['async_block']} ms)"
    )
