"""`cctrace explore`: a textual app over the DuckDB trace. It renders what analysis returns and asks
DuckDB for the visible window only (the timeline never loads the trace into Python)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Header, Input, Label, OptionList, Static, TabbedContent, TabPane

from cctrace.analyze.analysis import Analysis, QueryError, diff, list_queries, report
from cctrace.analyze.span import analysis_window, step_range
from cctrace.ui.costplot import cost_plot
from cctrace.ui.render import (
    LABELS,
    describe_slow_steps,
    describe_traced,
    describe_unmeasured,
    diff_rows,
    lost_ms_text,
    slow_steps_cells,
)
from cctrace.ui.safe import cell as safe_cell
from cctrace.ui.safe import clean
from cctrace.ui.timeline import UNTRACED, busy_rows, legend, paint, traced_part, untraced_marks

# the screens, in key order: (key, tab id, name); the help text and the bindings are derived from it
SCREENS = (
    ("1", "overview", "overview"),
    ("2", "timeline", "timeline"),
    ("3", "cost", "crossing cost"),
    ("4", "tables", "tables"),
    ("5", "sql", "SQL"),
    ("6", "diff", "diff"),
)

HELP = f"""\
[b]cctrace explore[/b] — keys (escape closes this; arrows scroll)
{"  ".join(f"{k} {name}" for k, _, name in SCREENS)}
?  this help    q  quit    escape  leave a text box
tab / shift+tab  next / previous part of a screen
enter  open the selected row, run the query or the SQL

[b]overview[/b]  enter on a finding: the events behind it (tables)
[b]timeline[/b]  + -  zoom in / out   [ ] or h l  pan   w  whole window
          n  next step   g  go to step N (from 1, as in the report)
          f  next finding (a stall or wait)
          times: ms from the window's start, as export --window takes
          e  next copy: its fields, its call, what it waited for
          a cell is a slice of time: bar height = busy share,
          colour = what took most of it (legend under the rows)
[b]tables[/b]    enter on a query runs it; the filter box narrows rows;
          click a column header to sort
[b]SQL[/b]       a query over the trace's tables and views; enter runs it
[b]diff[/b]      base vs trace ms/step per category, the unexplained
          rest, the ground truth (--emulate-bridge), slowest steps
"""


class StepScreen(ModalScreen[int | None]):
    """Asks for a step number to jump to."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps

    def compose(self) -> ComposeResult:
        yield Input(placeholder=f"step 1 to {self.steps}, enter to jump, escape to cancel", id="step-input")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        if not text.isdigit() or not 1 <= int(text) <= self.steps:
            self.notify(f"a step number from 1 to {self.steps}, please", severity="warning")
            return
        self.dismiss(int(text))

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(HELP, id="help")


def _bar(pct: float, width: int = 30) -> str:
    n = max(0, min(width, round(pct / 100 * width)))
    return "█" * n + "·" * (width - n)


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.3f} ms" if abs(ns) >= 1e6 else f"{ns / 1e3:.1f} µs"


class Timeline(Static):
    """One row per GPU stream and host thread; each cell is a time bucket of the visible window, as
    many buckets as the terminal has columns (cctrace.ui.timeline)."""

    def __init__(self, analysis: Analysis, **kw) -> None:
        super().__init__(**kw)
        self.a = analysis
        w = analysis_window(analysis.con)
        self.lo, self.hi = w.start_ns, max(w.end_ns, w.start_ns + 1)
        self.steps = w.steps
        self.start, self.span = self.lo, self.hi - self.lo
        self.step = 0  # the step shown (from 1), 0 when none
        self.rows: list = []  # what was last painted (the busy-fraction test reads it)
        self.traced: list[float] = []  # the traced part of each painted bucket (timeline.traced_part)
        self.windowed = analysis.scalar("SELECT windows FROM traced_summary") is not None  # traced in windows
        self.row_height = 1  # lines per track in the last painting
        self._painted_for: tuple = ()  # (lo, hi, cells) of self.rows
        self.several_pids = (
            analysis.scalar(
                "SELECT count(DISTINCT pid) FROM (SELECT pid FROM api_calls UNION SELECT pid FROM copies "
                "UNION SELECT pid FROM kernels)"
            )
            > 1
        )

    def window(self) -> tuple[int, int]:
        return self.start, self.start + self.span

    def on_resize(self) -> None:
        self.refresh_view()

    def refresh_view(self) -> None:
        """Paint at the widget's width; before it is laid out (its tab never shown) nothing is asked of
        DuckDB: the resize that shows it paints."""
        if self.size.width:
            self.update(self.render_rows(max(self.size.width, 20)))

    def render_rows(self, width: int) -> Text:
        lo, hi = self.window()
        labels_w = 14 if self.several_pids else 11
        cells = max(width - labels_w - 1, 8)
        if self._painted_for != (lo, hi, cells):  # a resize to the same width asks DuckDB nothing
            self.traced = traced_part(self.a.con, lo, hi, cells)
            self.rows, self._painted_for = busy_rows(self.a.con, lo, hi, cells, self.traced), (lo, hi, cells)
        out = Text(no_wrap=True, overflow="crop")
        where = f"step {self.step} of {self.steps}: " if self.step else ""
        head = f"{where}{(lo - self.lo) / 1e6:.3f}-{(hi - self.lo) / 1e6:.3f} ms of the window, {_ms((hi - lo) / cells)}/cell"
        untraced = (hi - lo) / cells * (cells - sum(self.traced))
        if untraced >= 0.5:  # said only where tracing windows left time out of this view
            head += f", {_ms(untraced)} untraced"
        out.append(head[:width] + "\n", style="bold")
        axis, end = f"{'':>{labels_w}} |{_ms(0)}", f"+{_ms(hi - lo)}|"
        line = (axis + " " * max(width - len(axis) - len(end), 1) + end)[:width]
        if all(self.traced):
            out.append(line + "\n", style="dim")
        else:
            out.append_text(self._axis(line, labels_w + 1))
            out.append("\n", style="dim")
        out.append(f"{'steps':>{labels_w}} ")
        out.append(self._step_marks(lo, hi, cells), style="#b0b0b0")
        out.append("\n")
        self.row_height = self._row_height(len(self.rows))
        for r in self.rows:
            for k, line in enumerate(paint(r, self.row_height)):
                last = k == self.row_height - 1
                out.append(f"{r.label(self.several_pids)[:labels_w] if last else '':>{labels_w}} ")
                out.append_text(line)
                out.append("\n")
        if not any(self.traced):
            out.append("(not traced in this view: between tracing windows; w shows the whole window)\n", style="dim")
        elif not self.rows:
            out.append("(nothing in this window: w shows the whole window)\n", style="dim")
        out.append_text(legend(width, untraced=self.windowed))
        return out

    def _axis(self, line: str, at: int) -> Text:
        """The time axis (dim) with the untraced buckets marked on it where it is blank; the cells start
        at column `at`."""
        marks = untraced_marks(self.traced)
        out = Text(style="dim")
        for i, ch in enumerate(line):
            mark = marks[i - at] if 0 <= i - at < len(marks) and ch == " " else " "
            out.append(ch if mark == " " else mark, style=None if mark == " " else UNTRACED[1])
        return out

    def _row_height(self, tracks: int) -> int:
        """Lines per track: as many as the screen has room for (up to 4), at least one."""
        room = (self.parent.size.height if self.parent is not None else 0) - 6
        return max(1, min(4, room // max(tracks, 1)))

    def _step_marks(self, lo: int, hi: int, cells: int) -> str:
        """A row with `|` where a step starts and its number (from 1) beside it where there is room."""
        starts = self.a.con.execute(
            "SELECT step, start_ns FROM steps WHERE start_ns >= ? AND start_ns < ? ORDER BY start_ns", [lo, hi]
        ).fetchall()
        if len(starts) > cells // 3:
            return f"{len(starts)} steps start here: zoom in (+) or go to one (g)"[:cells]
        row = [" "] * cells
        for i, (step, t) in enumerate(starts):
            c = min(int((t - lo) / max(hi - lo, 1) * cells), cells - 1)
            row[c] = "|"
            room = (int((starts[i + 1][1] - lo) / max(hi - lo, 1) * cells) if i + 1 < len(starts) else cells) - c - 1
            label = str(step)
            if len(label) <= room:
                row[c + 1 : c + 1 + len(label)] = label
        return "".join(row)

    def zoom(self, factor: float) -> None:
        mid = self.start + self.span // 2
        self.span = min(max(int(self.span * factor), 1000), self.hi - self.lo)
        self.start = min(max(self.lo, mid - self.span // 2), self.hi - self.span)
        self.step = 0
        self.refresh_view()

    def pan(self, frac: float) -> None:
        self.start = min(max(self.lo, self.start + int(self.span * frac)), max(self.lo, self.hi - self.span))
        self.step = 0
        self.refresh_view()

    def whole(self) -> None:
        self.start, self.span, self.step = self.lo, self.hi - self.lo, 0
        self.refresh_view()

    def next_step(self) -> bool:
        return self.goto_step(self.step + 1)

    def goto_step(self, step: int) -> bool:
        """Show step `step` (numbered from 1, as the report numbers them); False if there is none."""
        r = step_range(self.a.con, step)
        if r is None:
            return False
        self.start, self.span, self.step = r[0], max(r[1] - r[0], 1), step
        self.refresh_view()
        return True

    def select_next_event(self) -> Text:
        """The next host<->device transfer in (or after) the window: its fields, the call that issued it,
        what it waited for. Host-probe-only traces have their probed copy calls here (no GPU times)."""
        after = getattr(self, "selected_ns", self.start - 1)
        cur = self.a.con.execute("SELECT * FROM xfers WHERE start_ns > ? ORDER BY start_ns LIMIT 1", [after])
        names = [d[0] for d in cur.description]
        row = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        if not row:
            any_ = self.a.scalar("SELECT count(*) FROM xfers")
            return Text("no further copies after this point" if any_ else "no copies in this trace", style="dim")
        c = row[0]
        self.selected_ns = c["start_ns"]
        if not (self.start <= c["start_ns"] <= self.start + self.span):
            self.start = max(self.lo, c["start_ns"] - self.span // 2)
            self.refresh_view()
        out = Text()
        timing = "GPU" if c["timing"] == "gpu" else "call (host probes: no GPU times)"
        out.append(
            clean(f"{c['copy_kind']} {c['bytes']} B {c['src_kind']}->{c['dst_kind']} stream {c['stream_id']} ")
            + f"at {(c['start_ns'] - self.lo) / 1e6:.3f} ms, {timing} {(c['end_ns'] - c['start_ns']) / 1e3:.1f} us, "
            f"correlation {c['correlation_id']}\n",
            style="bold",
        )
        if c["api_name"] and c["timing"] == "gpu":
            out.append(
                f"  issued by {clean(c['api_name'])} on thread {c['api_tid']}: "
                f"{(c['api_end_ns'] - c['api_start_ns']) / 1e3:.1f} us in the call, GPU start "
                f"{(c['start_ns'] - c['api_start_ns']) / 1e3:.1f} us after it began\n"
            )
        elif c["api_name"]:
            off = c["off_cpu_ns"]
            out.append(
                f"  {clean(c['api_name'])} on thread {c['api_tid']}"
                + (f", {off / 1e3:.1f} us of it off-CPU\n" if off is not None else "\n")
            )
        out.append(self._stack_lines(c["pid"], c["correlation_id"], c["api_source"]))
        waits = self.a.con.execute(
            "SELECT blocked_by_stream, wait_ns FROM bridge_waits WHERE pid = ? AND copy_start_ns = ?",
            [c["pid"], c["start_ns"]],
        ).fetchall()
        for stream, ns in waits:
            out.append(f"  waited {ns / 1e3:.1f} us for a copy on stream {stream}\n")
        return out

    def _stack_lines(self, pid: int, correlation_id: int | None, source: str | None) -> Text:
        """The call site and the Python stack of the call (pid, correlation id in its source's numbering),
        when stacks were recorded."""
        frames = self.a.con.execute(
            """SELECT s.file, s.line, s.function, s.is_callsite FROM api_calls a
               JOIN stacks s ON s.pid = a.pid AND s.stack_id = a.stack_id
               WHERE a.pid = ? AND a.correlation_id = ? AND a.source = ? AND a.stack_id IS NOT NULL
               ORDER BY s.depth""",
            [pid, correlation_id, source],
        ).fetchall()
        out = Text()
        site = next((f for f in frames if f[3]), None)
        if site:
            out.append(f"  at {clean(f'{site[0]}:{site[1]} {site[2]}')}\n", style="bold")
            chain = " < ".join(f"{fn} ({Path(file).name}:{line})" for file, line, fn, _ in frames)
            out.append(f"  stack: {clean(chain)}\n", style="dim")
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
            self.step = 0
            self.refresh_view()


TIMELINE_KEYS = {"zoom", "pan", "whole", "next_step", "goto_step", "next_event", "next_finding"}


class Explorer(App):
    TITLE = "cctrace explore"
    ENABLE_COMMAND_PALETTE = False  # its footer entry would push the screen's keys off an 80-column footer
    CSS = """
    #help-box { padding: 0 1; background: $panel; border: round $accent; width: 72; max-width: 100%;
                height: auto; max-height: 100%; }
    #help { width: auto; }
    HelpScreen, StepScreen { align: center middle; }
    #step-input { width: 50; }
    #queries { height: 6; }
    #timeline-scroll { height: 1fr; }
    #event-detail { height: auto; max-height: 8; }
    DataTable { height: auto; max-height: 100%; }
    #diff-table { height: auto; }
    """
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("question_mark", "help", "keys"),
        Binding("escape", "leave_input", "leave box"),
        # one footer entry for all screens ("1-6 screens"); each key is bound
        *[
            Binding(
                k,
                f"tab('{tab}')",
                "screens" if k == "1" else name,
                show=k == "1",
                key_display="1-6" if k == "1" else None,
            )
            for k, tab, name in SCREENS
        ],
        Binding("plus,equals_sign", "zoom(0.5)", "zoom", key_display="+-"),
        Binding("minus", "zoom(2)", "zoom out", show=False),
        Binding("left_square_bracket,h", "pan(-0.5)", "pan", key_display="[]"),
        Binding("right_square_bracket,l", "pan(0.5)", "pan right", show=False),
        Binding("w", "whole", "all", show=False),
        Binding("n", "next_step", "step"),
        Binding("g", "goto_step", "go to"),
        Binding("f", "next_finding", "finding"),
        Binding("e", "next_event", "copy"),
    ]

    def __init__(self, trace: Path, base: Path | None = None) -> None:
        super().__init__()
        self.trace, self.base = Path(trace), Path(base) if base else None
        self.analysis = Analysis(self.trace)
        self.report = report(self.trace)

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="overview"):
            with TabPane("1 Overview", id="overview"), VerticalScroll():
                yield Static(self._overview(), id="overview-text")
                yield DataTable(id="findings", cursor_type="row")
            with TabPane("2 Timeline", id="timeline"), Vertical():
                with VerticalScroll(id="timeline-scroll"):
                    yield Timeline(self.analysis, id="timeline-view")
                yield Static("e: the next copy in view, its fields and linked events", id="event-detail")
            with TabPane("3 Cost", id="cost"):
                yield Static(id="cost-plot")
            with TabPane("4 Tables", id="tables"), Vertical():
                yield OptionList(*[q.name for q in list_queries()], id="queries")
                yield Label("a canned query: arrows choose, enter runs it", id="query-info")
                yield Input(placeholder="filter rows (text, enter; escape leaves)", id="query-filter")
                yield DataTable(id="query-table", zebra_stripes=True)
            with TabPane("5 SQL", id="sql"), Vertical():
                yield Input(placeholder="SELECT ... FROM copies ... (enter runs, escape leaves)", id="sql-input")
                yield Label("", id="sql-status")
                yield DataTable(id="sql-table", zebra_stripes=True)
            if self.base:
                with TabPane("6 Diff", id="diff"), VerticalScroll():
                    yield Label("", id="diff-label")
                    yield DataTable(id="diff-table")
                    yield Label("", id="slow-label")
                    yield DataTable(id="slow-steps")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        findings = self.query_one("#findings", DataTable)
        findings.add_columns("finding", "lost ms", "advice")
        for c in self.report["categories"]:
            if c["advice"]:
                where = f" Most of it at {clean(c['where'])}." if c.get("where") else ""
                findings.add_row(LABELS[c["category"]], f"{c['lost_ms']:.3f}", c["advice"] + where, key=c["category"])
        self.query_one(Timeline).refresh_view()
        if self.base:
            self._fill_diff()

    def _fill_diff(self) -> None:
        """The diff's categories, the unexplained rest and the ground truth; TRACE's slowest steps."""
        d = diff(self.base, self.trace, trace_report=self.report)
        self.query_one("#diff-label", Label).update(
            f"{self.base.name} -> {self.trace.name}: step {d['base_step_ms']:.4f} -> {d['trace_step_ms']:.4f} ms "
            f"({d['gap_ms_per_step']:+.4f} ms/step)"
        )
        t = self.query_one("#diff-table", DataTable)
        t.add_columns("category", "base ms/step", "trace ms/step", "delta ms/step", "share of gap")
        for row in diff_rows(d):
            t.add_row(*row)
        slow = slow_steps_cells(d)
        if slow:
            t.add_row(*slow)
        gap = d["gap_ms_per_step"]
        share = f"{100 * d['unexplained_ms_per_step'] / gap:.1f}%" if gap else ""
        t.add_row("unexplained", "", "", f"{d['unexplained_ms_per_step']:+.4f}", share)
        t.add_row("step time", f"{d['base_step_ms']:.4f}", f"{d['trace_step_ms']:.4f}", f"{gap:+.4f}", "100%")
        inj = d.get("bridge_injected_ms_per_step")
        if inj:
            t.add_row("ground truth: injected", "", "", f"{inj:+.4f}", f"{100 * inj / gap:.1f}%" if gap else "")
        median_us = (d["base_step_median_ms"] or 0) * 1e3
        self.query_one("#slow-label", Label).update(
            f"slowest steps of TRACE, µs (BASE's median step: {median_us:.1f} µs)"
        )
        slow = self.query_one("#slow-steps", DataTable)
        cats = [c["category"] for c in self.report["categories"]]
        slow.add_columns("step", "name", "step µs", "vs base", *[LABELS[c] for c in cats])
        for r in sorted(self.analysis.rows("step_timeline"), key=lambda r: -r["step_us"])[:10]:
            slow.add_row(
                str(r["step"]),
                safe_cell(r["name"]),
                f"{r['step_us']:.1f}",
                f"{r['step_us'] - median_us:+.1f}",
                *[f"{r.get(f'{c}_us', 0.0):.1f}" for c in cats],
            )

    def _overview(self) -> Text:
        r = self.report
        out = Text()
        out.append(f"trace {clean(Path(r['trace']).name)}\n", style="bold")
        for p in r.get("partial") or []:
            out.append("PARTIAL ", style="bold red")
            out.append(f"{clean(p, None)}\n")
        out.append(
            f"command {clean(' '.join(map(str, r['command'] or [])), 400)}\n"
            f"GPU {clean(', '.join(map(str, r['gpu']))) or 'unknown'}; "
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
        out.append(f"window {r['window_ms']} ms, {r['steps']} steps ({r['step_source']}), {r['step_ms']} ms/step\n")
        traced = describe_traced(r)
        out.append(f"{traced}\n\n" if traced else "\n")
        for c in r["categories"]:
            out.append(
                f"{LABELS[c['category']]:>23s} {_bar(c['pct_of_window'], 25)} "
                + (
                    f"{c['lost_ms']:9.3f} ms {c['pct_of_window']:5.1f}%\n"
                    if c.get("measured", True)
                    else f"{lost_ms_text(c):>9s}\n"
                )
            )
        out.append(f"{'unexplained':>23s} {'':25s} {r['unexplained_ms']:9.3f} ms\n", style="dim")
        slow = describe_slow_steps(r)
        if slow:
            out.append(f"\n{slow}\n", style="yellow")
        unmeasured = describe_unmeasured(r)
        if unmeasured:
            out.append(f"\n{unmeasured}\n", style="yellow")
        return out

    # ---- actions ----------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> bool | None:  # noqa: ARG002
        """Timeline keys show (and act) on the timeline only; `escape` shows while a text box has focus."""
        if action in TIMELINE_KEYS:
            tabs = self.query(TabbedContent)
            return bool(tabs) and tabs.first().active == "timeline"
        if action == "leave_input":
            return isinstance(self.focused, Input)
        return True

    def on_tabbed_content_tab_activated(self) -> None:
        self.refresh_bindings()
        if self.query_one(TabbedContent).active == "cost":
            self._draw_cost()

    def on_descendant_focus(self) -> None:
        self.refresh_bindings()

    def on_descendant_blur(self) -> None:
        self.refresh_bindings()

    def on_resize(self) -> None:
        if self.is_mounted and self.query_one(TabbedContent).active == "cost":
            self._draw_cost()

    def _draw_cost(self) -> None:
        w, h = self.size
        plot = self.query_one("#cost-plot", Static)
        series = len({(r["copy_kind"], r["host_kind"]) for r in self.report["cost_model"]})
        rows = self.analysis.rows("latency_by_size")
        plot.update(cost_plot(rows, self.report["cost_model"], max(w - 4, 20), max(h - 9 - series, 6)))

    def action_leave_input(self) -> None:
        if isinstance(self.focused, Input):
            self.set_focus(None)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_tab(self, tab: str) -> None:
        if tab == "diff" and not self.base:
            self.notify("no diff: start with `cctrace explore TRACE BASE`", severity="warning")
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

    def action_whole(self) -> None:
        if t := self._timeline():
            t.whole()

    def action_next_step(self) -> None:
        if (t := self._timeline()) and not t.next_step():
            self.notify("no further step" if t.steps else "this trace has no steps")

    def action_goto_step(self) -> None:
        t = self._timeline()
        if not t:
            return
        if not t.steps:
            self.notify("this trace has no steps")
            return

        def go(n: int | None) -> None:
            if n is not None and not t.goto_step(n):
                self.notify(f"no step {n}: steps are 1 to {t.steps}", severity="warning")

        self.push_screen(StepScreen(t.steps), go)

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
                table.add_row(*map(safe_cell, cells))

    def _fill(self, table: DataTable, produce, status: Label | None = None) -> int | None:
        try:
            t = produce()
        except (QueryError, Exception) as e:  # noqa: BLE001 - show the user's SQL error, keep the app
            if status is not None:
                status.update(safe_cell(f"error: {e}", None))
            return None
        if table.id == "query-table":
            self._query_result = t.slice(0, 2000)
        table.clear(columns=True)
        if t.num_rows == 0:
            table.add_column("no rows")
            return 0
        table.add_columns(*map(safe_cell, t.column_names))
        for row in t.slice(0, 2000).to_pylist():
            table.add_row(*[safe_cell(v) for v in row.values()])
        return t.num_rows


def run(trace: Path, base: Path | None = None) -> None:
    Explorer(trace, base).run()
