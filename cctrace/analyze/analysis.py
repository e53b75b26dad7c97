"""Analysis: runs the canned SQL in queries/ over a loaded trace and composes the report and diff.

All attribution is SQL (queries/*.sql over the views of queries/_views.sql); this module only
binds parameters, runs queries, and assembles their rows into the report's structure.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from cctrace.analyze.store import VIEWS as STORE_VIEWS
from cctrace.analyze.store import connect, partial_of
from cctrace.resources import data_dir

QUERY_DIR = data_dir("queries")
VIEWS = QUERY_DIR / "_views.sql"
CATEGORIES = ("small_crossings", "stream_concurrency", "async_stalls", "alloc_and_copy", "sync_waits")

# every parameter the queries read (getvariable), with its type and default
PARAMS: dict[str, tuple[type, object, str]] = {
    "step_pattern": (str, "step%", "NVTX range names that mark a step (LIKE pattern)"),
    "small_bytes": (int, None, "copies below this many bytes are small (default: toll x bandwidth)"),
    "small_fit_bytes": (int, 65536, "copies at most this big fit the fixed toll"),
    "large_fit_bytes": (int, 1048576, "copies at least this big fit the bandwidth"),
    "default_gbps": (
        float,
        25.0,
        "bandwidth assumed when a direction has no large copies (bundled H100 profile: pinned bandwidth)",
    ),
    "launch_gap_us": (float, 10.0, "a copy starting this long after its call returned was not delayed by the call"),
    "normal_call_us": (
        float,
        20.0,
        "normal cost of a call meant to return at once (bundled H100 profile: 2x p90 of an async copy call)",
    ),
    "alloc_window_us": (float, 200.0, "how soon after an allocation a copy counts as alloc-and-copy"),
}

ADVICE = {
    "small_crossings": "batch small copies: pack per-step inputs into one pinned buffer and copy it once",
    "stream_concurrency": "stage H2D copies on one idle stream instead of spreading them over busy streams",
    "async_stalls": "async calls block here: move H2D to a staging stream and keep launches off the copy path",
    "alloc_and_copy": "avoid per-step allocation: reuse preallocated (pinned) buffers instead of torch.tensor(list)",
    "sync_waits": "drain D2H readbacks (.tolist()/.item()) on a worker thread, or overlap them with the next step",
}


class QueryError(Exception):
    """A query that cannot run; the message says which and why."""


@dataclass
class Query:
    name: str
    path: Path
    answers: str
    params: str
    columns: str

    @property
    def sql(self) -> str:
        return self.path.read_text()


def _header(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"--\s*(name|answers|params|columns):\s*(.*)", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
        elif line.strip() and not line.startswith("--"):
            break
    return out


def list_queries() -> list[Query]:
    out = []
    for p in sorted(QUERY_DIR.glob("*.sql")):
        if p.name.startswith("_"):
            continue
        h = _header(p)
        out.append(Query(h.get("name", p.stem), p, h.get("answers", ""), h.get("params", ""), h.get("columns", "")))
    return out


def find_query(name_or_file: str) -> Query:
    p = Path(name_or_file)
    if p.suffix == ".sql" and p.exists():
        h = _header(p)
        return Query(h.get("name", p.stem), p, h.get("answers", "your query"), h.get("params", ""), "")
    for q in list_queries():
        if q.name == name_or_file:
            return q
    known = ", ".join(q.name for q in list_queries())
    raise QueryError(f"no canned query {name_or_file!r} (and no such .sql file); known: {known}")


def parse_params(pairs: list[str] | tuple[str, ...]) -> dict[str, object]:
    """['k=v', ...] -> typed values; unknown names and bad values raise QueryError."""
    out: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise QueryError(f"parameter {pair!r} is not k=v")
        k, v = pair.split("=", 1)
        if k not in PARAMS:
            raise QueryError(f"unknown parameter {k!r}; known: {', '.join(PARAMS)}")
        typ = PARAMS[k][0]
        try:
            out[k] = typ(v)
        except ValueError:
            raise QueryError(f"parameter {k} needs a {typ.__name__}, got {v!r}") from None
    return out


def _statements(sql: str) -> list[str]:
    """Split a file of statements at semicolons that end a line (the views file's convention)."""
    body = "\n".join(ln for ln in sql.splitlines() if not ln.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*\n", body + "\n") if s.strip()]


@functools.cache
def reference_params() -> dict[str, object]:
    """The built-in reference: parameters from the bridge profile measured on the H100 (bundled)."""
    from cctrace.trace.profile import DEFAULT_PROFILE, ProfileError, load_profile, params_from_profile

    try:
        return params_from_profile(load_profile(DEFAULT_PROFILE))
    except ProfileError:
        return {}


def default_params() -> dict[str, object]:
    """Each parameter's value when none is given: the bundled profile's, else the SQL's fallback."""
    return {k: d[1] for k, d in PARAMS.items()} | reference_params()


class Analysis:
    """One read-only connection to a trace with the shared views and the parameters bound
    (given ones over the bundled H100 profile's reference values over the SQL's fallbacks)."""

    def __init__(
        self, trace: Path, params: dict[str, object] | None = None, external_access: bool = False
    ) -> None:
        self.trace = Path(trace)
        self.con = connect(self.trace, external_access=external_access)  # True: only for --allow-external-access
        self.params = {**reference_params(), **(params or {})}
        for k, v in self.params.items():
            if k not in PARAMS:
                raise QueryError(f"unknown parameter {k!r}")
            self.con.execute(f"SET VARIABLE {k} = ?", [v]).fetchall()  # name checked above; value bound
        for name, sql in STORE_VIEWS.items():  # this version's joins, also over a file loaded by an older one
            self.con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS {sql}').fetchall()
        for stmt in _statements(VIEWS.read_text()):
            self.con.execute(stmt).fetchall()

    def run(self, name_or_file: str) -> pa.Table:
        q = find_query(name_or_file)
        try:
            rel = self.con.sql(q.sql)
            return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
        except Exception as e:  # noqa: BLE001 - duckdb raises many error types
            raise QueryError(f"query {q.name} failed: {e}") from None

    def rows(self, name: str) -> list[dict]:
        return self.run(name).to_pylist()

    def scalar(self, sql: str):
        return self.con.execute(sql).fetchall()[0][0]

    def close(self) -> None:
        self.con.close()


def report(trace: Path, params: dict[str, object] | None = None) -> dict:
    """The attribution report as plain data: the same keys feed the terminal, JSON and Markdown views."""
    from cctrace.trace.injections import injected_summary
    from cctrace.trace.manifest import read_manifest

    a = Analysis(trace, params)
    try:
        start, end, steps, nvtx = a.con.execute("SELECT start_ns, end_ns, steps, nvtx FROM win").fetchall()[0]
        window_ns = (end or 0) - (start or 0)
        cats = {r["category"]: r for r in a.rows("attribution")}
        categories = []
        explained = 0.0
        sites = a.rows("callsites")
        for c in CATEGORIES:
            r = cats.get(
                c, {"events": 0, "lost_ms": 0.0, "per_step_us": 0.0, "pct_of_window": 0.0, "gpu_idle_overlap_ms": 0.0}
            )
            explained += r["lost_ms"]
            categories.append(
                {
                    "category": c,
                    **{k: r[k] for k in ("events", "lost_ms", "per_step_us", "pct_of_window", "gpu_idle_overlap_ms")},
                    "advice": ADVICE[c] if r["lost_ms"] > 0 else None,
                    "where": _top_site(sites, c) if r["lost_ms"] > 0 else None,
                }
            )
        top = {
            "small_crossings": a.rows("small_crossings")[:3],
            "stream_concurrency": a.rows("stream_concurrency")[:3],
            "async_stalls": a.rows("async_stalls")[:3],
            "alloc_and_copy": a.rows("alloc_copy")[:3],
            "sync_waits": a.rows("sync_waits")[:3],
        }
        has_kernels = a.scalar("SELECT count(*) FROM kernels") > 0
        window_ms = window_ns / 1e6
        m = read_manifest(trace if Path(trace).is_dir() else Path(trace).parent)
        return {
            "trace": str(trace),
            "partial": partial_of(a.con),  # what the trace is missing: the views print PARTIAL
            "command": m.get("command"),
            "gpu": [g.get("name") for g in (m.get("gpu") or {}).get("gpus", [])],
            "driver": (m.get("gpu") or {}).get("driver_version"),
            "sources": {
                k: {"processes": v.get("processes"), "dropped": v.get("dropped"), "errors": len(v.get("errors") or [])}
                for k, v in (m.get("sources") or {}).items()
            },
            "host_probes": ((m.get("options") or {}).get("host_probes") or {}).get("state"),
            "confidential_computing": (m.get("gpu") or {}).get("confidential_computing"),
            "bridge_emulation": injected_summary(m.get("bridge_emulation")),
            "window_ms": round(window_ms, 3),
            "steps": steps,
            "step_source": "nvtx" if nvtx else ("detected" if steps else "none"),
            "step_ms": round(window_ms / steps, 4) if steps else None,
            "step_median_ms": a.scalar("SELECT median(end_ns - start_ns) / 1e6 FROM steps"),
            "categories": categories,
            "explained_ms": round(explained, 3),
            "unexplained_ms": round(window_ms - explained, 3),
            "gpu_idle_ms": round(a.scalar("SELECT coalesce(sum(end_ns - start_ns), 0) FROM gpu_idle") / 1e6, 3),
            "gpu_busy_complete": has_kernels,
            "cost_model": a.rows("cost_model"),
            "top": top,
            "callsites": [s for s in sites if s["lost_ms"] > 0],
            "params": default_params() | a.params,
        }
    finally:
        a.close()


def diff(base: Path, trace: Path, params: dict[str, object] | None = None, trace_report: dict | None = None) -> dict:
    """Which category explains how much of the per-step time gap between two traces.
    `trace_report`: TRACE's report when the caller already has it (with the same params)."""
    b, t = report(base, params), trace_report or report(trace, params)

    def per_step(r: dict, ms: float) -> float:
        return ms / r["steps"] if r["steps"] else ms

    base_step = b["step_ms"] if b["step_ms"] is not None else b["window_ms"]
    trace_step = t["step_ms"] if t["step_ms"] is not None else t["window_ms"]
    gap = trace_step - base_step
    rows, explained = [], 0.0
    for cb, ct in zip(b["categories"], t["categories"], strict=True):
        delta = per_step(t, ct["lost_ms"]) - per_step(b, cb["lost_ms"])
        explained += delta
        rows.append(
            {
                "category": cb["category"],
                "base_ms_per_step": round(per_step(b, cb["lost_ms"]), 5),
                "trace_ms_per_step": round(per_step(t, ct["lost_ms"]), 5),
                "delta_ms_per_step": round(delta, 5),
                "share_of_gap": round(delta / gap, 4) if gap else None,
            }
        )
    injected = (
        _injected_per_step(t) - _injected_per_step(b) if (t["bridge_emulation"] or b["bridge_emulation"]) else None
    )
    return {
        "base": str(base),
        "trace": str(trace),
        "partial": [f"BASE: {p}" for p in b["partial"]] + [f"TRACE: {p}" for p in t["partial"]],
        "base_step_ms": base_step,
        "trace_step_ms": trace_step,
        "base_step_median_ms": b["step_median_ms"],
        "trace_step_median_ms": t["step_median_ms"],
        # the typical step's gap: on a shared host a few slowed steps move the mean, not the median
        "gap_median_ms_per_step": (
            round(t["step_median_ms"] - b["step_median_ms"], 5)
            if t["step_median_ms"] is not None and b["step_median_ms"] is not None
            else None
        ),
        "gap_ms_per_step": round(gap, 5),
        "gap_pct": round(100 * gap / base_step, 2) if base_step else None,
        "categories": rows,
        "explained_ms_per_step": round(explained, 5),
        "unexplained_ms_per_step": round(gap - explained, 5),
        "explained_share": round(explained / gap, 4) if gap else None,
        "callsites": callsite_diff(b, t),
        # ground truth, when a trace was recorded with --emulate-bridge: what the emulator injected
        # per step more in TRACE than in BASE (its whole run, warm-up included, over the steps)
        "bridge_injected_ms_per_step": round(injected, 5) if injected is not None else None,
    }


def _top_site(sites: list[dict], category: str) -> str | None:
    """The call site (`file:line function`) that lost the most time in `category`, when stacks were recorded."""
    for s in sites:  # ordered by lost time
        if s["category"] == category and s["callsite"] is not None:
            return f"{s['callsite']} {s['function'] or ''}".strip()
    return None


def callsite_diff(b: dict, t: dict, limit: int = 10) -> list[dict]:
    """Per call site and category, lost ms per step in BASE and TRACE: the sites that changed most first."""

    def per_step(r: dict) -> dict[tuple[str, str, str], float]:
        steps = r["steps"] or 1
        return {(s["callsite"], s["function"], s["category"]): s["lost_ms"] / steps for s in r.get("callsites") or []}

    pb, pt = per_step(b), per_step(t)
    rows = [
        {
            "callsite": k[0],
            "function": k[1],
            "category": k[2],
            "base_ms_per_step": round(pb.get(k, 0.0), 5),
            "trace_ms_per_step": round(pt.get(k, 0.0), 5),
            "delta_ms_per_step": round(pt.get(k, 0.0) - pb.get(k, 0.0), 5),
        }
        for k in pb.keys() | pt.keys()
    ]
    rows.sort(key=lambda r: (-abs(r["delta_ms_per_step"]), r["callsite"], r["category"]))
    return rows[:limit]


def _injected_per_step(r: dict) -> float:
    inj = r["bridge_emulation"]
    if not inj:
        return 0.0
    total = sum(inj["injected_ms"].values())
    return total / r["steps"] if r["steps"] else total
