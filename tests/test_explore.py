"""The explorer driven through textual's pilot on a real (H100) sample trace."""

import shutil

import pytest
from textual.widgets import DataTable, Input, Label, OptionList, Static, TabbedContent

from cctrace.ui.explore import Explorer, Timeline
from tests.conftest import ROOT
from tests.synth import Spec, generate


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    d = tmp_path_factory.mktemp("ex") / "serve-bridge"
    shutil.copytree(ROOT / "sample_traces" / "serve-bridge", d)
    return d


async def test_overview_timeline_tables_sql(trace):
    app = Explorer(trace)
    async with app.run_test(size=(120, 40)) as pilot:
        overview = str(app.query_one("#overview-text", Static).render())
        assert "300 steps (nvtx)" in overview and "sync waits / readbacks" in overview
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
        await pilot.press("n")
        step_lo, step_hi = tl.a.con.execute("SELECT start_ns, end_ns FROM steps ORDER BY start_ns LIMIT 1").fetchall()[
            0
        ]
        assert (tl.start, tl.span) == (step_lo, step_hi - step_lo)
        text = str(tl.render())
        assert "stream 7" in text and "thread" in text
        await pilot.press("g")
        await pilot.pause()
        step_box = app.screen.query_one("#step-input", Input)
        step_box.value = "42"
        await pilot.press("enter")
        await pilot.pause()
        lo42 = tl.a.con.execute("SELECT start_ns FROM steps ORDER BY start_ns LIMIT 1 OFFSET 42").fetchall()[0][0]
        assert tl.start == lo42
        await pilot.press("e")
        detail = str(app.query_one("#event-detail", Static).render())
        assert ("issued by cudaMemcpyAsync" in detail and "HtoD" in detail) or "DtoH" in detail
        # crossing-cost plot
        await pilot.press("3")
        plot = str(app.query_one("#cost-plot", Static).render())
        assert "HtoD pinned: toll" in plot and "the fitted model" in plot
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
        await pilot.press("5")
        box = app.query_one("#sql-input", Input)
        box.focus()
        box.value = "SELECT copy_kind, count(*) AS n FROM copies GROUP BY 1 ORDER BY 1"
        await pilot.press("enter")
        sql = app.query_one("#sql-table", DataTable)
        assert sql.row_count == 2
        box.value = "SELECT nope FROM nowhere"
        await pilot.press("enter")
        assert "error" in str(app.query_one("#sql-status", Label).render())
        # help screen
        app.set_focus(None)
        await pilot.press("question_mark")
        assert "zoom in" in str(app.screen.query_one("#help", Static).render())
        await pilot.press("escape")


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
        slow = app.query_one("#slow-steps", DataTable)
        assert slow.row_count == 10
        assert all(float(slow.get_row_at(i)[3]) > 500 for i in range(10))  # each step ~600 us slower than base
        svg = app.export_screenshot()
        assert "<svg" in svg


SNAPSHOTS = ROOT / "tests" / "snapshots"


async def test_main_screens_at_80x24_match_their_snapshots(trace):
    """SVG snapshots of the main screens on an 80x24 terminal, committed so changes show in review.
    CCTRACE_UPDATE_SNAPSHOTS=1 rewrites them."""
    import os

    app = Explorer(trace)
    app.animation_level = "none"  # the tab underline must not be caught mid-slide
    async with app.run_test(size=(80, 24)) as pilot:
        shots = {}
        for key, name in (("1", "overview"), ("2", "timeline"), ("3", "cost"), ("4", "tables")):
            await pilot.press(key)
            await pilot.pause()
            shots[name] = app.export_screenshot()
        assert "Overview" in shots["overview"] and "stream" in shots["timeline"].replace("&#160;", " ")
    SNAPSHOTS.mkdir(exist_ok=True)
    for name, svg in shots.items():
        path = SNAPSHOTS / f"explore-{name}.svg"
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
