"""The explorer's timeline as data: per track (GPU stream, host thread) and time bucket, the fraction of
the bucket's traced time the track was busy and the category that took most of it. DuckDB computes it for
the visible window only; painting turns fractions into bars of eighth blocks, one or more lines tall, whose
painted total stays within half a level of one cell of the true busy time (the rounding error is carried
along the row). Between tracing windows (record --duration/--toggle-signal, attach) nothing was recorded:
a bucket there is painted untraced, not idle, and a bucket partly there counts its traced part only (the
spans are the analysis's `traced` table, queries/_traced.sql)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text

# category code -> (label, colour): one colour per category, distinct on any 24-bit terminal
CATEGORIES: dict[int, tuple[str, str]] = {
    1: ("HtoD copy", "#4aa3ff"),
    2: ("DtoH copy", "#ff9f1c"),
    3: ("other copy/memset", "#c77dff"),
    4: ("kernel", "#2ec4b6"),
    5: ("host call", "#e9c46a"),
    6: ("sync wait", "#ff4d6d"),
    7: ("off-CPU", "#8d99ae"),
}
LEVELS = " ▁▂▃▄▅▆▇█"  # index = eighths of the bucket busy
TINY = "·"  # busy, but less than half an eighth: shown, not counted as painted
UNTRACED = ("░", "#6c6c6c")  # (glyph, colour) of a bucket with no traced time: nothing is known there

# busy time per (track, bucket) over the union of the track's intervals (overlaps count once), and the
# category with the most time in the bucket; the call_names view says which calls are syncs
SQL = """
WITH ev AS (
    SELECT 'stream' AS kind, pid, stream_id AS id,
           CASE WHEN op = 'memset' THEN 3 WHEN copy_kind = 'HtoD' THEN 1 WHEN copy_kind = 'DtoH' THEN 2 ELSE 3 END AS cat,
           start_ns, end_ns FROM copies WHERE end_ns > $lo AND start_ns < $hi
    UNION ALL SELECT 'stream', pid, stream_id, 4, start_ns, end_ns FROM kernels WHERE end_ns > $lo AND start_ns < $hi
    UNION ALL SELECT 'thread', a.pid, a.tid, CASE WHEN coalesce(n.sync, false) THEN 6 ELSE 5 END, a.start_ns, a.end_ns
    FROM api_calls a LEFT JOIN call_names n USING (name) WHERE a.end_ns > $lo AND a.start_ns < $hi
    UNION ALL SELECT 'thread', pid, tid, 7, start_ns, end_ns FROM host_waits WHERE end_ns > $lo AND start_ns < $hi
), c AS (
    SELECT kind, pid, id, cat, greatest(start_ns, $lo)::DOUBLE - $lo AS s, least(end_ns, $hi)::DOUBLE - $lo AS e
    FROM ev WHERE least(end_ns, $hi) > greatest(start_ns, $lo)
), o AS (
    SELECT *, max(e) OVER (PARTITION BY kind, pid, id ORDER BY s, e
                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_e FROM c
), isl AS (
    SELECT kind, pid, id, s, e,
           sum(CASE WHEN prev_e IS NULL OR s > prev_e THEN 1 ELSE 0 END)
               OVER (PARTITION BY kind, pid, id ORDER BY s, e ROWS UNBOUNDED PRECEDING) AS island FROM o
), merged AS (
    SELECT kind, pid, id, min(s) AS s, max(e) AS e FROM isl GROUP BY kind, pid, id, island
), busy AS (
    SELECT kind, pid, id, b, sum(least(e, (b + 1) * $w) - greatest(s, b * $w)) AS ns
    FROM (SELECT *, unnest(range(floor(s / $w)::BIGINT, least(ceil(e / $w)::BIGINT, $n))) AS b FROM merged)
    GROUP BY ALL
), per_cat AS (
    SELECT kind, pid, id, b, cat, sum(least(e, (b + 1) * $w) - greatest(s, b * $w)) AS ns
    FROM (SELECT *, unnest(range(floor(s / $w)::BIGINT, least(ceil(e / $w)::BIGINT, $n))) AS b FROM c)
    GROUP BY ALL
), top AS (
    SELECT kind, pid, id, b, arg_max(cat, ns) AS cat FROM per_cat GROUP BY ALL
)
SELECT kind, pid, id, b, busy.ns, top.cat
FROM busy JOIN top USING (kind, pid, id, b)
ORDER BY kind, pid, id, b
"""

# untraced ns per bucket: the gaps between consecutive traced spans, cut to [lo, hi) (the explorer's
# window lies within the first span's start and the last one's end: queries/_steps.sql `win`)
UNTRACED_SQL = """
WITH gap AS (
    SELECT greatest(s, $lo)::DOUBLE - $lo AS s, least(e, $hi)::DOUBLE - $lo AS e
    FROM (SELECT lag(end_ns) OVER (ORDER BY start_ns) AS s, start_ns AS e FROM traced)
    WHERE s IS NOT NULL AND least(e, $hi) > greatest(s, $lo)
)
SELECT b, sum(least(e, (b + 1) * $w) - greatest(s, b * $w)) AS ns
FROM (SELECT *, unnest(range(floor(s / $w)::BIGINT, least(ceil(e / $w)::BIGINT, $n))) AS b FROM gap)
GROUP BY b
"""


@dataclass
class Row:
    kind: str  # 'stream' or 'thread'
    pid: int
    id: int
    frac: list[float]  # busy fraction of each bucket's traced time
    cat: list[int]  # dominant category per bucket (0: idle)
    traced: list[float]  # traced fraction per bucket (shared by the rows): 1.0 throughout, 0.0 untraced

    def label(self, several_pids: bool) -> str:
        return (f"p{self.pid} " if several_pids else "") + f"{self.kind} {self.id}"


def _params(lo: int, hi: int, cells: int) -> dict:
    cells = max(cells, 1)
    return {"lo": lo, "hi": hi, "w": max(hi - lo, 1) / cells, "n": cells}


def traced_part(con, lo: int, hi: int, cells: int) -> list[float]:
    """The traced fraction of each of `cells` buckets over [lo, hi): exactly 1.0 where no gap between
    tracing windows touches the bucket (every bucket of a trace without windows), 0.0 where less than
    half a nanosecond of it was traced."""
    p = _params(lo, hi, cells)
    part = [1.0] * p["n"]
    for b, ns in con.execute(UNTRACED_SQL, p).fetchall():
        traced = p["w"] - ns
        part[b] = traced / p["w"] if traced >= 0.5 else 0.0
    return part


def busy_rows(con, lo: int, hi: int, cells: int, traced: list[float] | None = None) -> list[Row]:
    """Every track with activity in [lo, hi), as `cells` buckets of (hi - lo) / cells ns each; `traced`:
    traced_part() of the same buckets (asked of DuckDB when not given)."""
    p = _params(lo, hi, cells)
    traced = traced_part(con, lo, hi, cells) if traced is None else traced
    rows: dict[tuple, Row] = {}
    for kind, pid, id_, b, ns, cat in con.execute(SQL, p).fetchall():
        r = rows.setdefault(
            (kind, pid, id_),
            Row(kind, pid, id_ if id_ is not None else -1, [0.0] * p["n"], [0] * p["n"], traced),
        )
        if traced[b]:  # an event in untraced time (a clock that slipped) is not painted as busy
            r.frac[b], r.cat[b] = min(max(ns / (p["w"] * traced[b]), 0.0), 1.0), cat
    return list(rows.values())


def paint_levels(frac: list[float], levels: int = 8) -> list[int]:
    """Levels (eighths of a line, `levels` in all) to paint per cell: each within one level of its own
    fraction, idle cells never painted, and the row's painted total within half a level of the true total
    (the rounding error is carried to the right)."""
    out, carry = [], 0.0
    for f in frac:
        level = min(max(round((f + carry) * levels), 0), levels) if f > 0 else 0
        carry = f + carry - level / levels if f > 0 else carry
        out.append(level)
    return out


def paint(row: Row, height: int = 1) -> list[Text]:
    """One track's cells as `height` lines (top first): bar height = busy fraction, colour = the category
    with most of the time; a dot where the track was busy for less than half a level; an untraced bucket
    shaded over the whole height."""
    lines = [Text() for _ in range(height)]
    for f, cat, level, part in zip(row.frac, row.cat, paint_levels(row.frac, 8 * height), row.traced, strict=True):
        if not part:
            for line in lines:
                line.append(UNTRACED[0], style=UNTRACED[1])
            continue
        colour = CATEGORIES[cat][1] if f > 0 else ""
        for k in range(height):  # k = 0 is the bottom line
            sub = min(max(level - 8 * k, 0), 8)
            ch = LEVELS[sub] if sub else (TINY if k == 0 and f > 0 and level == 0 else " ")
            lines[height - 1 - k].append(ch, style=colour if ch != " " else "")
    return lines


def untraced_marks(traced: list[float]) -> str:
    """A row of cells: the untraced glyph over untraced buckets, "untraced" written inside each run of
    them that has room, blanks elsewhere."""
    row = [UNTRACED[0] if not part else " " for part in traced]
    word, c = " untraced ", 0
    while c < len(row):
        end = c
        while end < len(row) and not traced[end]:
            end += 1
        if end - c >= len(word) + 2:
            at = c + (end - c - len(word)) // 2
            row[at : at + len(word)] = word
        c = end + 1
    return "".join(row)


def legend(width: int, untraced: bool = False) -> Text:
    """The colours with their labels, wrapped to `width` (no line longer than the screen); `untraced`:
    also the untraced shade (a trace with tracing windows)."""
    out, used = Text(), 0
    items = [("█", colour, label) for label, colour in CATEGORIES.values()]
    items.append(("", "dim", f"{TINY} <1/16 busy"))
    if untraced:
        items.append((UNTRACED[0], UNTRACED[1], "untraced"))
    for glyph, colour, label in items:
        n = len(label) + 3
        if used and used + n > width:
            out.append("\n")
            used = 0
        out.append(f"{glyph} " if glyph else "", style=colour)
        out.append(label + (" " if glyph else "   "), style="" if glyph else "dim")
        used += n
    return out
