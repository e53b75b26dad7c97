"""The explorer's timeline on traces recorded in tracing windows (record --duration/--toggle-signal,
attach): the time between windows is painted untraced, not idle, and a bucket's busy fraction is of its
traced time. Synthetic traces with detach gaps (tests/synth.py), textual's pilot at 80x24 and 200x50,
the glyphs read back from the screen and compared with SQL's busy and traced time."""

import re

import pytest

from cctrace.analyze.analysis import Analysis
from cctrace.ui.explore import Explorer, Timeline
from cctrace.ui.timeline import UNTRACED, busy_rows, legend, paint, traced_part
from tests.synth import US, Spec, generate, serve_loop
from tests.test_explore import _painted, _union_ns

MARGIN = 100 * US  # each window opens this long before its first event and closes this long after its last


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("tw")
    generate(d / "nvtx", Spec(steps=20, detach_after=9, untraced_ns=30_000 * US, margin_ns=MARGIN))
    serve_loop(detach_at=(101, 201)).write(d / "loop")  # two 50 ms detaches, no NVTX
    generate(d / "whole", Spec(steps=5))  # traced throughout
    return d


def _overlap(spans, a: float, b: float) -> float:
    return sum(max(min(e, b) - max(s, a), 0) for s, e in spans)


def _track_intervals(con, label: str) -> list[tuple[int, int]]:
    """The intervals that make a track busy, from the trace's tables: a stream's copies and kernels, a
    thread's calls and off-CPU waits."""
    kind, id_ = label.split()
    if kind == "stream":
        sql = "SELECT start_ns, end_ns FROM copies WHERE stream_id = $id UNION ALL "
        sql += "SELECT start_ns, end_ns FROM kernels WHERE stream_id = $id"
    else:
        sql = "SELECT start_ns, end_ns FROM api_calls WHERE tid = $id UNION ALL "
        sql += "SELECT start_ns, end_ns FROM host_waits WHERE tid = $id"
    return con.execute(sql, {"id": int(id_)}).fetchall()


@pytest.mark.parametrize("name", ["nvtx", "loop"])
@pytest.mark.parametrize("size", [(80, 24), (200, 50)])
async def test_untraced_buckets_and_busy_of_traced_time(traces, name, size):
    """Over the whole window and zoomed in on a gap's edges: every bucket with no traced time, and no
    other, is shaded untraced over each track's whole height; the axis marks the gaps and the status line
    says how much of the view was untraced; each track's painted busy time (fraction x the cell's traced
    time) is within one cell of SQL's busy time; the legend lists the shade."""
    app = Explorer(traces / name)
    async with app.run_test(size=size) as pilot:
        await pilot.press("2")
        await pilot.pause()
        tl = app.query_one(Timeline)
        con = tl.a.con
        spans = con.execute("SELECT start_ns, end_ns FROM traced ORDER BY start_ns").fetchall()
        assert len(spans) == (2 if name == "nvtx" else 3)
        for view in ("whole", "zoomed"):
            if view == "zoomed":
                await pilot.press("plus")  # the middle half: the nvtx gap's both edges, one edge of each loop gap
                await pilot.pause()
            lo, hi = tl.window()
            lines = str(tl.render()).splitlines()
            assert all(len(line) <= tl.size.width <= size[0] for line in lines), max(map(len, lines))
            cells = len(tl.traced)
            cell_ns = (hi - lo) / cells
            traced_ns = [_overlap(spans, lo + c * cell_ns, lo + (c + 1) * cell_ns) for c in range(cells)]
            untraced = {c for c in range(cells) if traced_ns[c] < 0.5}
            assert len(untraced) > cells // 10, (view, len(untraced))
            assert any(0 < t < cell_ns - 0.5 for t in traced_ns)  # a partly traced bucket at a gap's edge
            # the status line: how much of this view was not traced
            gap_ms = float(re.search(r", ([\d.]+) ms untraced$", lines[0]).group(1))
            assert gap_ms == pytest.approx((hi - lo - sum(traced_ns)) / 1e6, abs=0.001)
            assert "untraced" in lines[1]  # the axis marks the gap
            axis = lines[1][len(lines[1]) - cells :]
            marked = {c for c in range(cells) if axis[c] == UNTRACED[0]}
            assert marked and marked <= untraced
            tracks = {r.label(False): r for r in tl.rows}
            assert tracks and set(tracks) >= {"stream 7"}
            painted = _painted(lines, tl.row_height, cells)
            assert set(painted) == set(tracks)
            for label, row in tracks.items():
                assert row.traced is tl.traced  # one traced part per painting, shared by the rows
                i = next(i for i, line in enumerate(lines) if line[: len(line) - cells].strip() == label)
                block = [ln[len(ln) - cells :] for ln in lines[i - tl.row_height + 1 : i + 1]]
                shaded = {c for c in range(cells) if all(b[c] == UNTRACED[0] for b in block)}
                assert shaded == untraced, (view, label)
                assert not any(b[c] == UNTRACED[0] for b in block for c in range(cells) if c not in untraced)
                truth = _union_ns(_track_intervals(con, label), lo, hi)
                shown = sum(f * t for f, t in zip(painted[label], traced_ns, strict=True))
                assert abs(shown - truth) <= cell_ns, (view, label, shown, truth, cell_ns)
            assert f"{UNTRACED[0]} untraced" in "\n".join(lines[-2:])  # the legend
        if name == "nvtx":  # the middle of the window lies in the gap: zoomed in on it, nothing was traced
            await pilot.press("plus", "plus", "plus")
            await pilot.pause()
            text = str(tl.render())
            assert not any(tl.traced) and "not traced in this view" in text


def test_a_partly_traced_bucket_counts_its_traced_part(traces):
    """Three 400 us buckets around the end of the first window: traced, half traced, untraced. The half
    traced bucket's busy fraction is busy time over its 200 us traced, not over 400 us; the untraced one is
    shaded, not idle. A trace without windows: every bucket exactly fully traced, no shade in the legend."""
    a = Analysis(traces / "nvtx")
    try:
        end = a.scalar("SELECT min(end_ns) FROM traced")  # the first window's end
        width = 400 * US
        lo = end - 3 * width // 2
        part = traced_part(a.con, lo, lo + 3 * width, 3)
        rows = {r.label(False): r for r in busy_rows(a.con, lo, lo + 3 * width, 3)}
        half = (end - width // 2, end)
        truth = {label: _union_ns(_track_intervals(a.con, label), *half) for label in rows}
    finally:
        a.close()
    assert part == [1.0, 0.5, 0.0]
    stream = rows["stream 7"]
    # the last step's kernels run to its end, MARGIN before the window closes: half of the traced half
    assert truth["stream 7"] == MARGIN and stream.frac[1] == pytest.approx(0.5)
    for label, row in rows.items():
        assert row.frac[1] == pytest.approx(truth[label] / (width // 2)), label
        assert row.frac[2] == 0.0 and row.traced == part
        bottom = paint(row, 2)[-1].plain
        assert bottom[2] == UNTRACED[0] and UNTRACED[0] not in bottom[:2]
    b = Analysis(traces / "whole")
    try:
        lo, hi = b.con.execute("SELECT start_ns, end_ns FROM win").fetchall()[0]
        assert b.scalar("SELECT windows FROM traced_summary") is None
        assert traced_part(b.con, lo, hi, 150) == [1.0] * 150
    finally:
        b.close()
    assert "untraced" not in legend(200).plain and "untraced" in legend(200, untraced=True).plain
