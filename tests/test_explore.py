"""The explorer driven through textual's pilot on real (H100) sample traces."""

import os
import shutil

import pytest
from textual.widgets import DataTable, Input, Label, OptionList, Static, TabbedContent

from cctrace.ui.explore import HELP, SCREENS, Explorer, Timeline
from cctrace.ui.timeline import paint_levels
from tests.conftest import ROOT
from tests.synth import Spec, generate


def _copy(tmp_path_factory, name):
    d = tmp_path_factory.mktemp("ex") / name
    shutil.copytree(ROOT / "sample_traces" / name, d)
    return d


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    return _copy(tmp_path_factory, "serve-bridge")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return _copy(tmp_path_factory, "serve-baseline")


async def _go_to_step(app, pilot, step: str) -> Input:
    """Types `step` into the timeline's go-to box (key g) and presses enter; the box, to check what stays."""
    await pilot.press("g")
    await pilot.pause()
    box = app.screen.query_one("#step-input", Input)
    box.value = step
    await pilot.press("enter")
    await pilot.pause()
    return box


async def test_overview_timeline_tables_sql(trace):
    app = Explorer(trace)
    async with app.run_test(size=(120, 40)) as pilot:
        overview = str(app.query_one("#overview-text", Static).render())
        assert "300 steps (nvtx)" in overview and "sync waits / readbacks" in overview and "unexplained" in overview
        findings = app.query_one("#findings", DataTable)
        assert findings.row_count >= 2  # small crossings and sync waits have advice
        # timeline: zoom, pan, jump to a step
        await pilot.press("2")
        assert app.query_one(TabbedContent).active == "timeline"
        tl = app.query_one(Timeline)
        span = tl.span
        await pilot.press("plus")
        assert tl.span == span // 2
        start = tl.start
        await pilot.press("right_square_bracket")
        assert tl.start > start
        await pilot.press("n")  # the first step: step 1, as the report numbers it
        step_lo, step_hi = tl.a.con.execute("SELECT start_ns, end_ns FROM steps WHERE step = 1").fetchall()[0]
        assert (tl.start, tl.span, tl.step) == (step_lo, step_hi - step_lo, 1)
        text = str(tl.render())
        assert "stream 7" in text and "thread" in text and "step 1 of 300" in text
        await _go_to_step(app, pilot, "42")
        name42, lo42 = tl.a.con.execute("SELECT name, start_ns FROM steps WHERE step = 42").fetchall()[0]
        assert tl.start == lo42 and name42 == "step 46"  # NVTX "step 5" is step 1
        await pilot.press("w")
        assert (tl.start, tl.span) == (tl.lo, tl.hi - tl.lo)
        await pilot.press("e")
        detail = str(app.query_one("#event-detail", Static).render())
        assert ("issued by cudaMemcpyAsync" in detail and "HtoD" in detail) or "DtoH" in detail
        # crossing-cost plot
        await pilot.press("3")
        await pilot.pause()
        plot = str(app.query_one("#cost-plot", Static).render())
        assert "HtoD pinned: toll" in plot and "fitted model" in plot
        # tables: run a canned query
        await pilot.press("4")
        ol = app.query_one("#queries", OptionList)
        ol.focus()
        ol.highlighted = next(
            q for q in range(ol.option_count) if str(ol.get_option_at_index(q).prompt) == "sync_waits"
        )
        await pilot.press("enter")
        table = app.query_one("#query-table", DataTable)
        assert table.row_count == 2 and "wait_kind" in [str(c.label) for c in table.columns.values()]
        flt = app.query_one("#query-filter", Input)
        flt.focus()
        flt.value = "readback"
        await pilot.press("enter")
        assert table.row_count == 1
        # SQL console
        await pilot.press("escape")
        await pilot.press("5")
        box = app.query_one("#sql-input", Input)
        box.focus()
        box.value = "SELECT copy_kind, count(*) AS n FROM copies GROUP BY 1 ORDER BY 1"
        await pilot.press("enter")
        sql = app.query_one("#sql-table", DataTable)
        assert sql.row_count == 2
        box.value = "SELECT * FROM copies WHERE bytes < 0"
        await pilot.press("enter")
        assert "0 rows" in str(app.query_one("#sql-status", Label).render())
        assert [str(c.label) for c in sql.columns.values()] == ["no rows"]
        box.value = "SELECT nope FROM nowhere"
        await pilot.press("enter")
        assert "error" in str(app.query_one("#sql-status", Label).render())
        # help screen
        await pilot.press("escape")
        await pilot.press("question_mark")
        assert "zoom in" in str(app.screen.query_one("#help", Static).render())
        await pilot.press("escape")


async def test_escape_leaves_any_input_and_keys_stay_visible(trace):
    app = Explorer(trace)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5")
        box = app.query_one("#sql-input", Input)
        box.focus()
        await pilot.press("q", "1")
        assert box.value == "q1" and app.query_one(TabbedContent).active == "sql"  # typed into the box
        shown = {b.binding.description for b in app.active_bindings.values() if b.binding.show and b.enabled}
        assert "leave box" in shown  # typing keys are the box's until escape, and the footer says so
        await pilot.press("escape")
        assert app.focused is None
        await pilot.press("1")
        assert app.query_one(TabbedContent).active == "overview" and box.value == "q1"
        for tab, filt in (("tables", "#query-filter"), ("sql", "#sql-input")):
            app.query_one(TabbedContent).active = tab
            app.query_one(filt, Input).focus()
            await pilot.press("escape", "2")
            assert app.query_one(TabbedContent).active == "timeline"
        # the go-to box: a number out of range keeps it open; escape cancels
        step_box = await _go_to_step(app, pilot, "301")
        assert app.screen.query_one("#step-input", Input) is step_box
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.screen_stack[0]
        # timeline keys show on the timeline only
        shown = {b.binding.description for b in app.active_bindings.values() if b.binding.show and b.enabled}
        assert {"zoom", "pan", "step", "go to", "copy", "finding"} <= shown
        await pilot.press("1")
        shown = {b.binding.description for b in app.active_bindings.values() if b.binding.show and b.enabled}
        assert "zoom" not in shown and {"quit", "keys", "screens"} <= shown


def test_help_lists_every_screen_and_key():
    for key, _, name in SCREENS:
        assert f"{key} {name}" in HELP
    for key in ("+ -", "[ ]", " w ", " n ", " g ", " f ", " e ", "escape", "tab", "enter", "q "):
        assert key in HELP, key
    assert all(len(line) <= 70 for line in HELP.replace("[b]", "").replace("[/b]", "").splitlines())


def _union_ns(intervals, lo, hi):
    """Busy time of a set of intervals inside [lo, hi), overlaps counted once (plain Python)."""
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted((max(s, lo), min(e, hi)) for s, e in intervals if e > lo and s < hi):
        if cur_e is None or s > cur_e:
            total += 0 if cur_e is None else cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (0 if cur_e is None else cur_e - cur_s)


@pytest.mark.parametrize("size", [(80, 24), (200, 50)])
async def test_timeline_paints_the_busy_fraction(trace, size):
    """Each track's painted busy time (eighths per cell x cell width) is within one cell of SQL's
    busy time for it; no row is wider than the terminal."""
    app = Explorer(trace)
    async with app.run_test(size=size) as pilot:
        await pilot.press("2")
        await pilot.pause()
        tl = app.query_one(Timeline)
        con = tl.a.con
        for view in ("whole", "step"):
            if view == "step":
                await _go_to_step(app, pilot, "81")  # the slowest step
            lo, hi = tl.window()
            lines = str(tl.render()).splitlines()
            assert all(len(line) <= tl.size.width <= size[0] for line in lines), max(map(len, lines))
            assert "|" + str(tl.step) in lines[2] if view == "step" else "steps start here" in lines[2]
            cells = len(tl.rows[0].frac)
            cell_ns = (hi - lo) / cells
            assert cells > size[0] - 20
            tracks = {r.label(False): r for r in tl.rows}
            (tid,) = con.execute("SELECT DISTINCT tid FROM api_calls").fetchone()  # the one host thread
            assert set(tracks) == {"stream 7", f"thread {tid}"}
            painted = _painted(lines, tl.row_height, cells)
            gpu = con.execute(
                "SELECT start_ns, end_ns FROM copies WHERE stream_id = 7 UNION ALL "
                "SELECT start_ns, end_ns FROM kernels WHERE stream_id = 7"
            ).fetchall()
            host = con.execute("SELECT start_ns, end_ns FROM api_calls WHERE tid = ?", [tid]).fetchall()
            for label, intervals in (("stream 7", gpu), (f"thread {tid}", host)):
                truth = _union_ns(intervals, lo, hi)
                assert abs(sum(painted[label]) * cell_ns - truth) <= cell_ns, (view, label, painted, truth, cell_ns)
            if view == "whole":  # the GPU is busy about 5% of the window: no cell is painted full
                assert _union_ns(gpu, lo, hi) / (hi - lo) < 0.1
                assert max(painted["stream 7"]) <= 0.25
        if size == (200, 50):
            assert tl.row_height > 1  # room to spare: taller bars


def _painted(lines: list[str], height: int, cells: int) -> dict[str, list[float]]:
    """The busy fraction each cell shows, read back from the glyphs on screen (eighth blocks stacked
    `height` lines tall; a dot or a blank is nothing)."""
    from cctrace.ui.timeline import LEVELS

    out = {}
    for i, line in enumerate(lines):
        label = line[: len(line) - cells].strip()
        if label.startswith(("stream", "thread")):
            block = [ln[len(ln) - cells :] for ln in lines[i - height + 1 : i + 1]]
            out[label] = [
                sum(LEVELS.index(b[c]) if b[c] in LEVELS else 0 for b in block) / (8 * height) for c in range(cells)
            ]
    return out


def test_paint_levels_carry_the_rounding():
    fr = [0.03] * 40 + [0.0] * 5 + [0.5, 1.0]
    lv = paint_levels(fr)
    assert lv[40:45] == [0] * 5  # idle cells are never painted
    assert abs(sum(lv) / 8 - sum(fr)) <= 1 / 16
    assert all(abs(level / 8 - f) <= 1 / 8 for level, f in zip(lv, fr, strict=True))


async def test_hostonly_trace_selects_probed_copy_calls(tmp_path_factory):
    app = Explorer(_copy(tmp_path_factory, "serve-hostonly"))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("2", "n", "e")
        detail = str(app.query_one("#event-detail", Static).render())
        assert "no GPU times" in detail and "cuMemcpy" in detail
        assert "thread" in str(app.query_one(Timeline).render())


async def test_diff_mode(tmp_path):
    generate(tmp_path / "base", Spec(stall_ns=0, steps=10))
    generate(tmp_path / "slow", Spec(stall_ns=300_000, steps=10))
    app = Explorer(tmp_path / "slow", tmp_path / "base")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("6")
        t = app.query_one("#diff-table", DataTable)
        rows = [t.get_row_at(i) for i in range(t.row_count)]
        stalls = next(r for r in rows if r[0] == "async stalls")
        assert stalls[3].startswith("+0.5")  # 2 x 300 us per step, beyond the 20 us normal cost each
        unexplained = next(r for r in rows if r[0] == "unexplained")
        step = next(r for r in rows if r[0] == "step time")
        explained = sum(float(r[3]) for r in rows[:5])
        assert abs(explained + float(unexplained[3]) - float(step[3])) < 2e-4
        assert not any(r[0].startswith("ground truth") for r in rows)  # no emulated bridge here
        slow = app.query_one("#slow-steps", DataTable)
        assert slow.row_count == 10
        cols = [str(c.label) for c in slow.columns.values()]
        assert cols[4:] == [
            "small crossings",
            "lost stream concurrency",
            "async stalls",
            "alloc-and-copy",
            "sync waits / readbacks",
        ]
        assert all(float(slow.get_row_at(i)[3]) > 500 for i in range(10))  # each step ~600 us slower than base
        # async stalls: 2 x (300 + 5 - 20) us per step, plus the alloc-copy call beyond its normal cost
        assert all(float(slow.get_row_at(i)[6]) == pytest.approx(574.4, abs=0.1) for i in range(10))


async def test_diff_mode_shows_the_ground_truth(trace, baseline):
    app = Explorer(trace, baseline)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("6")
        t = app.query_one("#diff-table", DataTable)
        rows = {t.get_row_at(i)[0]: t.get_row_at(i) for i in range(t.row_count)}
        assert float(rows["ground truth: injected"][3]) > 1.5  # the b300-tdx bridge injected ~1.9 ms/step


SNAPSHOTS = ROOT / "tests" / "snapshots"


@pytest.mark.parametrize("size", [(80, 24), (200, 50)])
async def test_screens_match_their_snapshots(trace, baseline, size):
    """SVG snapshots of every screen at 80x24 and 200x50, committed so changes show in review.
    CCTRACE_UPDATE_SNAPSHOTS=1 rewrites them."""
    app = Explorer(trace, baseline)
    app.animation_level = "none"  # the tab underline must not be caught mid-slide
    shots = {}
    async with app.run_test(size=size) as pilot:
        for key, name, _ in SCREENS:
            await pilot.press(key)
            await pilot.pause()
            shots[name] = app.export_screenshot()
        await pilot.press("2")
        await _go_to_step(app, pilot, "81")
        shots["timeline-step"] = app.export_screenshot()
        await pilot.press("question_mark")
        await pilot.pause()
        shots["help"] = app.export_screenshot()
    assert "stream" in shots["timeline"].replace("&#160;", " ")
    SNAPSHOTS.mkdir(exist_ok=True)
    for name, svg in shots.items():
        path = SNAPSHOTS / f"explore-{name}-{size[0]}x{size[1]}.svg"
        if os.environ.get("CCTRACE_UPDATE_SNAPSHOTS") or not path.exists():
            path.write_text(svg)
        # what is written on screen must match; colours and geometry may differ between textual releases
        assert _screen_text(path.read_text()) == _screen_text(svg), (
            f"{path.name} changed; review it and rerun with CCTRACE_UPDATE_SNAPSHOTS=1"
        )


def _screen_text(svg: str) -> list[str]:
    import html
    import re

    return [html.unescape(t) for t in re.findall(r"<text [^>]*>([^<]*)</text>", svg)]


def test_explore_in_a_real_terminal(trace):
    """`cctrace explore` on a real pty at 80x24: it draws, the keys reach it, q quits with status 0."""
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios
    import time

    from tests.conftest import project_env

    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = project_env() | {"TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cctrace", "explore", str(trace)], stdin=sub, stdout=sub, stderr=sub, env=env
    )
    os.close(sub)
    seen = b""

    def read_until(needle: bytes, limit_s: float = 120) -> None:
        nonlocal seen
        end = time.monotonic() + limit_s  # a generous cap so a hang fails instead of blocking CI
        while needle not in seen.replace(b"\x1b", b"") and time.monotonic() < end:
            import select

            if select.select([main], [], [], 0.5)[0]:
                try:
                    seen += os.read(main, 65536)
                except OSError:
                    break
        assert needle in seen.replace(b"\x1b", b""), seen[-2000:]

    try:
        read_until(b"Overview")
        os.write(main, b"2")
        read_until(b"thread")
        os.write(main, b"q")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)


async def test_trace_without_steps_or_copies(one_call_trace):
    """A trace with one call and no steps: every screen opens, the step keys say there are none."""
    app = Explorer(one_call_trace)
    async with app.run_test(size=(80, 24)) as pilot:
        for key, _, _ in SCREENS[:5]:
            await pilot.press(key)
            await pilot.pause()
        await pilot.press("2", "n", "g", "e")
        await pilot.pause()
        tl = app.query_one(Timeline)
        assert tl.step == 0 and [r.label(False) for r in tl.rows] == ["thread 7"]
        assert "no copies in this trace" in str(app.query_one("#event-detail", Static).render())
        assert "no steps" in " ".join(str(n.message) for n in app._notifications)
        await pilot.press("6")  # no BASE: says how to get a diff
        assert app.query_one(TabbedContent).active == "timeline"


def test_cost_plot_fits_and_names_shared_cells():
    """Two series whose medians land in one cell draw `*` and are named under the plot; nothing is wider
    than the width asked for (plus the axis)."""
    from cctrace.ui.costplot import cost_plot

    def row(kind, host, size, us):
        return {"copy_kind": kind, "host_kind": host, "size_bytes": size, "copies": 9, "median_us": us, "model_us": us}

    lat = [row("HtoD", "pinned", 64, 300.0), row("DtoH", "pinned", 64, 300.0), row("HtoD", "pinned", 1 << 22, 700.0)]
    model = [
        {"copy_kind": k, "host_kind": "pinned", "toll_us": 300.0, "gbps": 10.0, "bandwidth_assumed": False}
        for k in ("HtoD", "DtoH")
    ]
    lines = str(cost_plot(lat, model, 40, 8)).splitlines()
    assert max(len(line) for line in lines[1:10]) <= 41
    assert sum(line.count("*") for line in lines[1:9]) == 1 and lines[-1] == "* several series in one cell: 64 B: AB"
    assert lines[-4].startswith("A DtoH pinned: toll 300.0 us, 10.0 GB/s")
