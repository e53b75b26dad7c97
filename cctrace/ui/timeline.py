"""The explorer's timeline as data: per track (GPU stream, host thread) and time bucket, the fraction of
the bucket's time the track was busy and the category that took most of it. DuckDB computes it for the
visible window only; painting turns fractions into bars of eighth blocks, one or more lines tall, whose
painted total stays within half a level of one cell of the true busy time (the rounding error is carried
along the row)."""

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
SELECT kind, pid, id, b, busy.ns / $w AS frac, top.cat
FROM busy JOIN top USING (kind, pid, id, b)
ORDER BY kind, pid, id, b
"""


@dataclass
class Row:
    kind: str  # 'stream' or 'thread'
    pid: int
    id: int
    frac: list[float]  # busy fraction per bucket
    cat: list[int]  # dominant category per bucket (0: idle)

    def label(self, several_pids: bool) -> str:
        return (f"p{self.pid} " if several_pids else "") + f"{self.kind} {self.id}"


def busy_rows(con, lo: int, hi: int, cells: int) -> list[Row]:
    """Every track with activity in [lo, hi), as `cells` buckets of (hi - lo) / cells ns each."""
    cells = max(cells, 1)
    w = max(hi - lo, 1) / cells
    rows: dict[tuple, Row] = {}
    params = {"lo": lo, "hi": hi, "w": w, "n": cells}
    for kind, pid, id_, b, frac, cat in con.execute(SQL, params).fetchall():
        r = rows.setdefault(
            (kind, pid, id_), Row(kind, pid, id_ if id_ is not None else -1, [0.0] * cells, [0] * cells)
        )
        r.frac[b], r.cat[b] = min(max(frac, 0.0), 1.0), cat
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
    with most of the time; a dot where the track was busy for less than half a level."""
    lines = [Text() for _ in range(height)]
    for f, cat, level in zip(row.frac, row.cat, paint_levels(row.frac, 8 * height), strict=True):
        colour = CATEGORIES[cat][1] if f > 0 else ""
        for k in range(height):  # k = 0 is the bottom line
            sub = min(max(level - 8 * k, 0), 8)
            ch = LEVELS[sub] if sub else (TINY if k == 0 and f > 0 and level == 0 else " ")
            lines[height - 1 - k].append(ch, style=colour if ch != " " else "")
    return lines


def legend(width: int) -> Text:
    """The colours with their labels, wrapped to `width` (no line longer than the screen)."""
    out, used = Text(), 0
    items = [(label, colour) for label, colour in CATEGORIES.values()]
    items.append((f"{TINY} <1/16 busy", "dim"))
    for label, colour in items:
        n = len(label) + 3
        if used and used + n > width:
            out.append("\n")
            used = 0
        out.append("█ " if colour != "dim" else "", style=colour)
        out.append(label + (" " if colour != "dim" else "   "), style="dim" if colour == "dim" else "")
        used += n
    return out
