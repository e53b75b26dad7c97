"""`cctrace explore`: a textual app over the DuckDB trace. It renders what analysis returns and asks
DuckDB for the visible window only (the timeline never loads the trace into Python)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Header, Input, Label, OptionList, Static, TabbedContent, TabPane

from cctrace.analyze.analysis import Analysis, QueryError, diff, list_queries, report
from cctrace.ui.render import LABELS, diff_rows

HELP = """\
[b]cctrace explore[/b] — keys

  1..6          overview, timeline, crossing cost, tables, SQL, diff (with BASE)
  ?             this help          q  quit
  timeline:     + / -  zoom in / out      [ / ]  (or h / l)  pan
                n  next step   g  go to step N   f  next finding (a stall or wait)
                e  select the next copy: its fields, issuing call, what it waited for
  tables:       enter on a query to run it; click a column header to sort
  SQL:          type a query over the trace's tables and views, enter to run
"""


class StepScreen(ModalScreen[int | None]):
    """Asks for a step number to jump to."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def compose(self) -> ComposeResult:
        yield Input(placeholder="step number (0-based), enter to jump", id="step-input")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(int(event.value) if event.value.strip().isdigit() else None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "close")]

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")


def _bar(pct: float, width: int = 30) -> str:
    n = max(0, min(width, round(pct / 100 * width)))
    return "█" * n + "·" * (width - n)


class Timeline(Static):
    """One row per GPU stream and host thread; each character is a time bucket of the visible window."""

    def __init__(self, analysis: Analysis, **kw) -> None:
        super().__init__(**kw)
        self.a = analysis
        lo, hi, steps = analysis.con.execute("SELECT start_ns, end_ns, steps FROM win").fetchall()[0]
        self.lo, self.hi = lo or 0, hi or 1
        self.steps = steps
        self.start = self.lo
        self.span = max((self.hi - self.lo) // 20, 1) if steps else (self.hi - self.lo)
        self.step_index = 0

    def window(self) -> tuple[int, int]:
        return self.start, self.start + self.span

    def refresh_view(self) -> None:
        self.update(self.render_rows(100))

    def render_rows(self, width: int) -> Text:
        lo, hi = self.window()
        bucket = max((hi - lo) // width, 1)
        q = """
            SELECT track, b, max(prio) AS p FROM (
              SELECT 'stream ' || stream_id AS track, CASE copy_kind WHEN 'HtoD' THEN 3 WHEN 'DtoH' THEN 2 ELSE 1 END AS prio,
                     start_ns, end_ns FROM copies WHERE end_ns >= ? AND start_ns <= ?
              UNION ALL SELECT 'stream ' || stream_id, 1, start_ns, end_ns FROM kernels WHERE end_ns >= ? AND start_ns <= ?
              UNION ALL SELECT 'thread ' || tid, CASE WHEN name LIKE '%Synchronize%' THEN 5 ELSE 4 END, start_ns, end_ns
                     FROM api_calls WHERE end_ns >= ? AND start_ns <= ?
              UNION ALL SELECT 'thread ' || tid, 6, start_ns, end_ns FROM host_waits WHERE end_ns >= ? AND start_ns <= ?
            ), range(0, ?) r(b)
            WHERE start_ns < ? + (b + 1) * ? AND end_ns > ? + b * ?
            GROUP BY ALL ORDER BY track, b"""
        rows = self.a.con.execute(q, [lo, hi, lo, hi, lo, hi, lo, hi, width, lo, bucket, lo, bucket]).fetchall()
        tracks: dict[str, list[str]] = {}
        glyph = {
            1: ("▆", "green"),
            2: ("▆", "magenta"),
            3: ("▆", "cyan"),
            4: ("▂", "yellow"),
            5: ("▄", "red"),
            6: ("▄", "blue"),
        }
        for track, b, p in rows:
            tracks.setdefault(track, [" "] * width)[b] = p
        out = Text()
        out.append(
            f"{(lo - self.lo) / 1e6:9.3f} ms … {(hi - self.lo) / 1e6:9.3f} ms   ({(hi - lo) / 1e3:.1f} µs shown)\n",
            style="bold",
        )
        for track in sorted(tracks):
            out.append(f"{track:>14s} ")
            for cell in tracks[track]:
                if cell == " ":
                    out.append("·", style="dim")
                else:
                    ch, style = glyph[cell]
                    out.append(ch, style=style)
            out.append("\n")
        if not tracks:
            out.append("(nothing in this window)\n", style="dim")
        out.append("HtoD cyan, DtoH magenta, kernel green | host call yellow, sync red, off-CPU blue", style="dim")
        return out

    def zoom(self, factor: float) -> None:
        mid = self.start + self.span // 2
        self.span = max(int(self.span * factor), 1000)
        self.start = max(self.lo, mid - self.span // 2)
        self.refresh_view()

    def pan(self, frac: float) -> None:
        self.start = min(max(self.lo, self.start + int(self.span * frac)), max(self.lo, self.hi - self.span))
        self.refresh_view()

    def next_step(self) -> None:
        self.goto_step(self.step_index)

    def goto_step(self, index: int) -> bool:
        """Show step `index` (0-based, in time order); False if there is no such step."""
        row = self.a.con.execute(
            "SELECT start_ns, end_ns FROM steps ORDER BY start_ns LIMIT 1 OFFSET ?", [max(index, 0)]
        ).fetchall()
        if not row:
            return False
        self.start, self.span = row[0][0], max(row[0][1] - row[0][0], 1)
        self.step_index = index + 1
        self.refresh_view()
        return True

    def select_next_event(self) -> Text:
        """The next copy in (or after) the window: its fields, the call that issued it, what it waited for."""
        after = getattr(self, "selected_ns", self.start - 1)
        cur = self.a.con.execute("SELECT * FROM copies_with_api WHERE start_ns > ? ORDER BY start_ns LIMIT 1", [after])
        names = [d[0] for d in cur.description]
        row = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        if not row:
            return Text("no further copies", style="dim")
        c = row[0]
        self.selected_ns = c["start_ns"]
        if not (self.start <= c["start_ns"] <= self.start + self.span):
            self.start = max(self.lo, c["start_ns"] - self.span // 2)
            self.refresh_view()
        out = Text()
        out.append(
            f"{c['op']} {c['copy_kind']} {c['bytes']} B {c['src_kind']}->{c['dst_kind']} stream {c['stream_id']} "
            f"at {(c['start_ns'] - self.lo) / 1e6:.3f} ms, {(c['end_ns'] - c['start_ns']) / 1e3:.1f} us, "
            f"correlation {c['correlation_id']}\n",
            style="bold",
        )
        if c["api_name"]:
            out.append(
                f"  issued by {c['api_name']} on thread {c['api_tid']}: "
                f"{(c['api_end_ns'] - c['api_start_ns']) / 1e3:.1f} us in the call, GPU start "
                f"{(c['start_ns'] - c['api_start_ns']) / 1e3:.1f} us after it began\n"
            )
        waits = self.a.con.execute(
            """SELECT blocked_by_stream, wait_ns FROM bridge_waits
                                      WHERE pid = ? AND copy_start_ns = ?""",
            [c["pid"], c["start_ns"]],
        ).fetchall()
        for stream, ns in waits:
            out.append(f"  waited {ns / 1e3:.1f} us for a copy on stream {stream}\n")
        return out

    def next_finding(self) -> None:
        row = self.a.con.execute(
            """SELECT start_ns FROM (SELECT start_ns FROM async_calls WHERE stall_ns > 0
                                    UNION ALL SELECT start_ns FROM sync_calls) WHERE start_ns > ?
                                    ORDER BY start_ns LIMIT 1""",
            [self.start + self.span // 2],
        ).fetchall()
        if row:
            self.start = max(self.lo, row[0][0] - self.span // 2)
            self.refresh_view()


class Explorer(App):
    TITLE = "cctrace explore"
    CSS = """
    #help { padding: 1 2; background: $panel; border: round $accent; width: 80; height: auto; }
    HelpScreen { align: center middle; }
    #queries { height: 8; }
    """
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("question_mark", "help", "help"),
        Binding("1", "tab('overview')", "overview"),
        Binding("2", "tab('timeline')", "timeline"),
        Binding("3", "tab('cost')", "cost"),
        Binding("4", "tab('tables')", "tables"),
        Binding("5", "tab('sql')", "SQL"),
        Binding("6", "tab('diff')", "diff", show=False),
        Binding("plus,equals_sign", "zoom(0.5)", "zoom in", show=False),
        Binding("minus", "zoom(2)", "zoom out", show=False),
        Binding("left_square_bracket,h", "pan(-0.5)", "pan left", show=False),
        Binding("right_square_bracket,l", "pan(0.5)", "pan right", show=False),
        Binding("n", "next_step", "next step", show=False),
        Binding("f", "next_finding", "next finding", show=False),
        Binding("e", "next_event", "next event", show=False),
        Binding("g", "goto_step", "go to step", show=False),
    ]

    def __init__(self, trace: Path, base: Path | None = None) -> None:
        super().__init__()
        self.trace, self.base = Path(trace), Path(base) if base else None
        self.analysis = Analysis(self.trace)
        self.report = report(self.trace)

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="overview"):
            with TabPane("Overview", id="overview"):
                yield Static(self._overview(), id="overview-text")
                yield DataTable(id="findings", cursor_type="row")
            with TabPane("Timeline", id="timeline"):
                yield Timeline(self.analysis, id="timeline-view")
                yield Static("e: select the next copy in view and show its fields and linked events", id="event-detail")
            with TabPane("Cost", id="cost"):
                yield Static(self._cost_plot(), id="cost-plot")
            with TabPane("Tables", id="tables"), Vertical():
                yield OptionList(*[q.name for q in list_queries()], id="queries")
                yield Label("", id="query-info")
                yield Input(placeholder="filter rows (text, enter)", id="query-filter")
                yield DataTable(id="query-table", zebra_stripes=True)
            with TabPane("SQL", id="sql"):
                yield Input(placeholder="SELECT ... FROM copies ...  (enter runs it)", id="sql-input")
                yield Label("", id="sql-status")
                yield DataTable(id="sql-table", zebra_stripes=True)
            if self.base:
                with TabPane("Diff", id="diff"), Vertical():
                    yield DataTable(id="diff-table")
                    yield Label("steps of TRACE that took longest against BASE's median step", id="slow-label")
                    yield DataTable(id="slow-steps")
        yield Footer()

    def on_mount(self) -> None:
        findings = self.query_one("#findings", DataTable)
        findings.add_columns("finding", "lost ms", "advice")
        for c in self.report["categories"]:
            if c["advice"]:
                findings.add_row(LABELS[c["category"]], f"{c['lost_ms']:.3f}", c["advice"], key=c["category"])
        self.query_one(Timeline).refresh_view()
        if self.base:
            d = diff(self.base, self.trace, trace_report=self.report)
            t = self.query_one("#diff-table", DataTable)
            t.add_columns("category", "base ms/step", "trace ms/step", "delta ms/step", "share of gap")
            for row in diff_rows(d):
                t.add_row(*row)
            t.add_row(
                "step time",
                f"{d['base_step_ms']:.4f}",
                f"{d['trace_step_ms']:.4f}",
                f"{d['gap_ms_per_step']:+.4f}",
                "100%",
            )
            median_us = (d["base_step_median_ms"] or 0) * 1e3
            slow = self.query_one("#slow-steps", DataTable)
            slow.add_columns("step", "name", "step us", "vs base median us", "async stalls us", "sync waits us")
            for r in sorted(self.analysis.rows("step_timeline"), key=lambda r: -r["step_us"])[:10]:
                slow.add_row(
                    str(r["step"]),
                    r["name"],
                    f"{r['step_us']:.1f}",
                    f"{r['step_us'] - median_us:+.1f}",
                    f"{r['async_stalls_us']:.1f}",
                    f"{r['sync_waits_us']:.1f}",
                )

    def _cost_plot(self, width: int = 60, height: int = 14) -> Text:
        """Latency vs size, log-log, per direction and host memory kind: medians as letters, model as dots."""
        rows = self.analysis.rows("latency_by_size")
        out = Text()
        if not rows:
            return Text("no host<->device copies in this trace", style="dim")
        import math

        xs = [math.log2(max(r["size_bytes"], 1)) for r in rows]
        ys = [math.log10(max(v, 1e-3)) for r in rows for v in (r["median_us"], r["model_us"]) if v is not None]
        x0, x1, y0, y1 = min(xs), max(xs) + 1e-9, min(ys), max(ys) + 1e-9
        grid = [[" "] * width for _ in range(height)]
        series = sorted({(r["copy_kind"], r["host_kind"]) for r in rows})
        marks = "ABCDEFGH"
        for r in rows:
            k = series.index((r["copy_kind"], r["host_kind"]))
            cx = int((math.log2(max(r["size_bytes"], 1)) - x0) / (x1 - x0) * (width - 1))
            for v, ch in ((r["model_us"], "·"), (r["median_us"], marks[k % len(marks)])):
                if v is None:
                    continue
                cy = int((math.log10(max(v, 1e-3)) - y0) / (y1 - y0) * (height - 1))
                if ch != "·" or grid[height - 1 - cy][cx] == " ":
                    grid[height - 1 - cy][cx] = ch
        out.append(
            f"latency (us, log) from {10**y0:.2f} to {10**y1:.0f}; size (bytes, log2) "
            f"from {2**x0:.0f} to {2**x1:.0f}\n",
            style="bold",
        )
        for line in grid:
            out.append("|" + "".join(line) + "\n")
        out.append("+" + "-" * width + "\n")
        for k, (ck, hk) in enumerate(series):
            m = next((c for c in self.report["cost_model"] if (c["copy_kind"], c["host_kind"]) == (ck, hk)), None)
            fit = (
                f"toll {m['toll_us']} us, {m['gbps']} GB/s" + (" (assumed)" if m and m["bandwidth_assumed"] else "")
                if m
                else ""
            )
            out.append(f"{marks[k % len(marks)]} {ck} {hk}: {fit}\n")
        out.append("· the fitted model (toll + bytes / bandwidth)", style="dim")
        return out

    def _overview(self) -> Text:
        r = self.report
        out = Text()
        out.append(f"trace {Path(r['trace']).name}\n", style="bold")
        out.append(
            f"command {' '.join(r['command'] or [])}\nGPU {', '.join(r['gpu']) or 'unknown'}; "
            f"CC {(r['confidential_computing'] or {}).get('ccFeature', 'unknown')}\n"
        )
        srcs = (
            "; ".join(
                f"{k}: {v['processes']} process(es), {v['dropped']} dropped, {v['errors']} errors"
                for k, v in (r.get("sources") or {}).items()
            )
            or "none recorded"
        )
        out.append(
            f"driver {r.get('driver') or 'unknown'}; sources {srcs}; host probes {r.get('host_probes') or 'off'}\n"
        )
        out.append(f"window {r['window_ms']} ms, {r['steps']} steps ({r['step_source']}), {r['step_ms']} ms/step\n\n")
        for c in r["categories"]:
            out.append(
                f"{LABELS[c['category']]:>24s} {_bar(c['pct_of_window'])} {c['lost_ms']:9.3f} ms "
                f"{c['pct_of_window']:5.1f}%\n"
            )
        return out

    # ---- actions ----------------------------------------------------------------------------
    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_tab(self, tab: str) -> None:
        if tab == "diff" and not self.base:
            return
        self.query_one(TabbedContent).active = tab

    def _timeline(self) -> Timeline | None:
        return self.query_one(Timeline) if self.query_one(TabbedContent).active == "timeline" else None

    def action_zoom(self, factor: float) -> None:
        if t := self._timeline():
            t.zoom(factor)

    def action_pan(self, frac: float) -> None:
        if t := self._timeline():
            t.pan(frac)

    def action_next_step(self) -> None:
        if t := self._timeline():
            t.next_step()

    def action_goto_step(self) -> None:
        if t := self._timeline():
            self.push_screen(StepScreen(), lambda n: n is not None and t.goto_step(n))

    def action_next_event(self) -> None:
        if t := self._timeline():
            self.query_one("#event-detail", Static).update(t.select_next_event())

    def action_next_finding(self) -> None:
        if t := self._timeline():
            t.next_finding()

    # ---- events --------------------------------------------------------------------------------
    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        name = str(event.option.prompt)
        q = next(q for q in list_queries() if q.name == name)
        self.query_one("#query-info", Label).update(q.answers)
        self._fill(self.query_one("#query-table", DataTable), lambda: self.analysis.run(name))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "query-filter":
            self._refill_filtered(event.value)
            return
        status = self.query_one("#sql-status", Label)

        def run():
            rel = self.analysis.con.sql(event.value)
            if rel is None:
                raise QueryError("that statement returns no rows")
            return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()

        n = self._fill(self.query_one("#sql-table", DataTable), run, status)
        if n is not None:
            status.update(f"{n} rows")

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.data_table.sort(event.column_key)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "findings":
            query = {"alloc_and_copy": "alloc_copy"}.get(str(event.row_key.value), str(event.row_key.value))
            self.action_tab("tables")
            self.query_one("#query-info", Label).update(f"the events behind: {query}")
            self._fill(self.query_one("#query-table", DataTable), lambda: self.analysis.run(query))

    def _refill_filtered(self, text: str) -> None:
        t = getattr(self, "_query_result", None)
        if t is None:
            return
        needle = text.strip().lower()
        table = self.query_one("#query-table", DataTable)
        table.clear()
        for row in t.to_pylist():
            cells = ["" if v is None else str(v) for v in row.values()]
            if not needle or any(needle in c.lower() for c in cells):
                table.add_row(*cells)

    def _fill(self, table: DataTable, produce, status: Label | None = None) -> int | None:
        try:
            t = produce()
        except (QueryError, Exception) as e:  # noqa: BLE001 - show the user's SQL error, keep the app
            if status is not None:
                status.update(f"error: {e}")
            return None
        if table.id == "query-table":
            self._query_result = t.slice(0, 2000)
        table.clear(columns=True)
        table.add_columns(*t.column_names)
        for row in t.slice(0, 2000).to_pylist():
            table.add_row(*["" if v is None else str(v) for v in row.values()])
        return t.num_rows


def run(trace: Path, base: Path | None = None) -> None:
    Explorer(trace, base).run()
