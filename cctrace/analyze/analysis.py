"""Analysis: runs the canned SQL in queries/ over a loaded trace and composes the report and diff.

All attribution is SQL (queries/*.sql over the topic modules queries/_<topic>.sql); this module only
binds parameters, builds the modules a query needs, runs it, and assembles rows into the report.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from cctrace.analyze.categories import CATEGORIES, NAMES, advise, code_variables, measured
from cctrace.analyze.categories import arrow as categories_arrow
from cctrace.analyze.store import VIEWS as STORE_VIEWS
from cctrace.analyze.store import connect, partial_of
from cctrace.resources import data_dir
from cctrace.trace.schema import TABLES, empty_table

QUERY_DIR = data_dir("queries")


@dataclass(frozen=True)
class Param:
    """A parameter the SQL reads with getvariable(): every one is bound, with this default when not given."""

    name: str
    type: type
    default: object
    doc: str


# every parameter the queries read, with its type, default and meaning: the only place defaults live
PARAM_TABLE: tuple[Param, ...] = (
    Param("step_pattern", str, "step%", "NVTX range names that mark a step (LIKE pattern)"),
    Param(
        "steps_from",
        str,
        "auto",
        "where steps come from: auto (the first that finds any) or one of nvtx, step_function, readback, "
        "graph_replay, driver_sync, worker_sync, period; none: no steps, the whole recording is the window",
    ),
    Param("min_steps", int, 3, "fewest iterations a detector must see to mark steps"),
    Param("small_bytes", int, None, "copies below this many bytes are small (unset: toll x bandwidth, from the model)"),
    Param("small_fit_bytes", int, 65536, "copies at most this big fit the fixed toll"),
    Param("large_fit_bytes", int, 1048576, "copies at least this big fit the bandwidth"),
    Param(
        "default_gbps",
        float,
        25.0,
        "bandwidth assumed when a direction has no large copies (bundled H100 profile: pinned bandwidth)",
    ),
    Param(
        "launch_gap_us", float, 10.0, "a copy starting this long after its call returned was not delayed by the call"
    ),
    Param(
        "normal_call_us",
        float,
        20.0,
        "normal cost of a call meant to return at once (bundled H100 profile: 2x p90 of an async copy call)",
    ),
    Param("alloc_window_us", float, 200.0, "how soon after an allocation a copy counts as alloc-and-copy"),
    Param(
        "slow_step_factor",
        float,
        4.0,
        "a step this many times the median step, its excess not from crossings, was slowed by something else",
    ),
)
PARAMS: dict[str, Param] = {p.name: p for p in PARAM_TABLE}
STEP_SOURCES = (
    "auto",
    "nvtx",
    "step_function",
    "readback",
    "graph_replay",
    "driver_sync",
    "worker_sync",
    "period",
    "none",
)


class QueryError(Exception):
    """A query that cannot run; the message says which and why."""


_HEADER = re.compile(r"--\s*(name|module|answers|needs|columns):\s*(.*)")
_VARIABLE = re.compile(r"getvariable\('(\w+)'\)")


def _header(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = _HEADER.match(line)
        if m:
            out[m.group(1)] = m.group(2).strip()
        elif line.strip() and not line.startswith("--"):
            break
    return out


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


@dataclass(frozen=True)
class Module:
    """One topic file of shared temp objects (queries/_<topic>.sql), built only when a query needs it."""

    name: str
    path: Path
    needs: tuple[str, ...]
    answers: str


@functools.cache
def modules() -> dict[str, Module]:
    out = {}
    for p in sorted(QUERY_DIR.glob("_*.sql")):
        h = _header(p)
        name = h.get("module", p.stem.lstrip("_"))
        out[name] = Module(name, p, _names(h.get("needs", "")), h.get("answers", ""))
    return out


def module_order(wanted: tuple[str, ...] | None = None) -> list[str]:
    """The modules to build for `wanted` (every module when None), each after what it needs."""
    mods = modules()
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...] = ()) -> None:
        if name in order:
            return
        if name not in mods:
            raise QueryError(f"no analysis module {name!r}; known: {', '.join(mods)}")
        if name in path:
            raise QueryError(f"analysis modules need each other: {' -> '.join((*path, name))}")
        for n in mods[name].needs:
            visit(n, (*path, name))
        order.append(name)

    for name in mods if wanted is None else wanted:
        visit(name)
    return order


@dataclass
class Query:
    name: str
    path: Path
    answers: str
    needs: tuple[str, ...] | None  # None: a query that declares nothing needs every module
    columns: str

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def column_names(self) -> list[str]:
        """The declared columns; `<category>_us` stands for one column per category, in the table's order."""
        out = []
        for c in _names(self.columns):
            out += [c.replace("<category>", n) for n in NAMES] if "<category>" in c else [c]
        return out

    @property
    def params(self) -> list[str]:
        """The parameters this query reads, itself or through the modules it needs."""
        texts = [self.sql] + [modules()[m].path.read_text() for m in module_order(self.needs)]
        used = {v for t in texts for v in _VARIABLE.findall(t)}
        return [p for p in PARAMS if p in used]


def _query(path: Path, default_name: str, default_answers: str = "") -> Query:
    h = _header(path)
    needs = _names(h["needs"]) if "needs" in h else None
    return Query(h.get("name", default_name), path, h.get("answers", default_answers), needs, h.get("columns", ""))


def list_queries() -> list[Query]:
    return [_query(p, p.stem) for p in sorted(QUERY_DIR.glob("*.sql")) if not p.name.startswith("_")]


def find_query(name_or_file: str) -> Query:
    p = Path(name_or_file)
    if p.suffix == ".sql" and p.exists():
        return _query(p, p.stem, "your query")
    for q in list_queries():
        if q.name == name_or_file:
            return q
    known = ", ".join(q.name for q in list_queries())
    raise QueryError(f"no canned query {name_or_file!r} (and no such .sql file); known: {known}")


def _typed(k: str, v: object) -> object:
    typ = PARAMS[k].type
    try:
        out = typ(v)
    except ValueError:
        raise QueryError(f"parameter {k} needs a {typ.__name__}, got {v!r}") from None
    if k == "steps_from" and out not in STEP_SOURCES:
        raise QueryError(f"steps_from must be one of {', '.join(STEP_SOURCES)}, got {v!r}")
    return out


def parse_params(pairs: list[str] | tuple[str, ...]) -> dict[str, object]:
    """['k=v', ...] -> typed values; unknown names and bad values raise QueryError."""
    out: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise QueryError(f"parameter {pair!r} is not k=v")
        k, v = pair.split("=", 1)
        if k not in PARAMS:
            raise QueryError(f"unknown parameter {k!r}; known: {', '.join(PARAMS)}")
        out[k] = _typed(k, v)
    return out


def _statements(sql: str) -> list[str]:
    """Split a file of statements at semicolons that end a line (the modules' convention)."""
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
    """Each parameter's value when none is given: the bundled profile's, else the table's default."""
    return {p.name: p.default for p in PARAM_TABLE} | reference_params()


class Analysis:
    """One read-only connection to a trace with every parameter bound (given ones over the bundled H100
    profile's reference values over the table's defaults). The analysis modules are built on demand:
    a canned query builds the ones it declares (and what they need), `con` and `scalar` build all."""

    def __init__(self, trace: Path, params: dict[str, object] | None = None, external_access: bool = False) -> None:
        self.trace = Path(trace)
        for k in params or {}:
            if k not in PARAMS:
                raise QueryError(f"unknown parameter {k!r}")
        self.params = {**reference_params(), **(params or {})}
        self._con = connect(self.trace, external_access=external_access)  # True: only for --allow-external-access
        self._built: set[str] = set()
        con = self._con
        for k, v in (default_params() | self.params).items():
            v = None if v is None else _typed(k, v)
            con.execute(f"SET VARIABLE {k} = ?", [v]).fetchall()  # name checked above; value bound
        for k, v in code_variables().items():
            con.execute(f"SET VARIABLE {k} = ?", [v]).fetchall()
        present = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE NOT temporary").fetchall()}
        for table in TABLES:  # a file loaded by an older version lacks the newer tables: they are empty
            if table not in present:
                con.register("_empty", empty_table(table))
                con.execute(f'CREATE TEMP TABLE "{table}" AS SELECT * FROM _empty').fetchall()
                con.unregister("_empty")
        con.register("_categories", categories_arrow())
        con.execute("CREATE TEMP TABLE categories AS SELECT * FROM _categories").fetchall()
        con.unregister("_categories")
        for name, sql in STORE_VIEWS.items():  # this version's joins, also over a file loaded by an older one
            con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS {sql}').fetchall()

    def build(self, wanted: tuple[str, ...] | None = None) -> None:
        """Build the modules `wanted` (all when None) and what they need, each once per connection."""
        for name in module_order(wanted):
            if name in self._built:
                continue
            for stmt in _statements(modules()[name].path.read_text()):
                try:
                    self._con.execute(stmt).fetchall()
                except Exception as e:  # noqa: BLE001 - duckdb raises many error types
                    raise QueryError(f"analysis module {name} failed: {e}") from None
            self._built.add(name)

    @property
    def con(self):
        """The connection with every module built, for SQL of any kind."""
        self.build()
        return self._con

    def run(self, name_or_file: str) -> pa.Table:
        q = find_query(name_or_file)
        self.build(q.needs)
        try:
            rel = self._con.sql(q.sql)
            return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
        except Exception as e:  # noqa: BLE001 - duckdb raises many error types
            raise QueryError(f"query {q.name} failed: {e}") from None

    def rows(self, name: str) -> list[dict]:
        return self.run(name).to_pylist()

    def scalar(self, sql: str):
        return self.con.execute(sql).fetchall()[0][0]

    def one(self, sql: str) -> dict:
        """The first row of `sql` (over every module) as a dict."""
        cur = self.con.execute(sql)
        rows = cur.fetchall()
        return dict(zip([d[0] for d in cur.description], rows[0], strict=True)) if rows else {}

    def close(self) -> None:
        self._con.close()


def _device(profile: Path | None) -> str | None:
    """The calibrated machine a profile describes (its GPU's name), for the remedies measured there."""
    from cctrace.trace.profile import DEFAULT_PROFILE, ProfileError, load_profile

    try:
        return ((load_profile(profile or DEFAULT_PROFILE).get("machine") or {}).get("device_name")) or None
    except ProfileError:
        return None


def report(trace: Path, params: dict[str, object] | None = None, profile: Path | None = None) -> dict:
    """The attribution report as plain data: the same keys feed the terminal, JSON and Markdown views.
    `profile`: the bridge profile whose machine the advice's measured remedies are looked up for."""
    from cctrace.trace.injections import injected_summary
    from cctrace.trace.manifest import read_manifest

    a = Analysis(trace, params)
    try:
        w = a.one("SELECT * FROM win")
        steps = w["steps"]
        window_ms = (w["traced_ns"] or 0) / 1e6  # its traced time: what lay between tracing windows is not in it
        facts = a.one("SELECT * FROM trace_facts")
        device = _device(profile)
        cats = {r["category"]: r for r in a.rows("attribution")}
        kernels = a.scalar("SELECT count(*) FROM kernels") > 0
        gpu_idle_known = facts["gpu_times"] or kernels  # what GPU idle is made of: GPU-side copies, kernels
        categories = []
        sites = a.rows("callsites")
        for c in CATEGORIES:
            r = cats[c.name]
            categories.append(
                {
                    "category": c.name,
                    **{k: r[k] for k in ("events", "lost_ms", "per_step_us", "pct_of_window")},
                    "gpu_idle_overlap_ms": r["gpu_idle_overlap_ms"] if gpu_idle_known else None,
                    "measured": measured(c.name, facts),
                    "advice": advise(c.name, facts, device, facts["host_only"]) if r["lost_ms"] > 0 else None,
                    "where": _top_site(sites, c.name) if r["lost_ms"] > 0 else None,
                }
            )
        explained = sum(c["lost_ms"] for c in categories)
        slow = a.rows("slow_steps")
        top = {c.name: a.rows(c.query)[:3] for c in CATEGORIES}
        m = read_manifest(trace if Path(trace).is_dir() else Path(trace).parent)

        def ms(ns):
            return round(ns / 1e6, 6) if ns is not None else None

        return {
            "trace": str(trace),
            "partial": partial_of(a.con),  # what the trace is missing: the views print PARTIAL
            "command": m.get("command"),
            "cwd": m.get("cwd"),  # where the traced command ran: call sites are shown relative to it
            "gpu": [g.get("name") for g in (m.get("gpu") or {}).get("gpus", [])],
            "driver": (m.get("gpu") or {}).get("driver_version"),
            "sources": {
                k: {"processes": v.get("processes"), "dropped": v.get("dropped"), "errors": len(v.get("errors") or [])}
                for k, v in (m.get("sources") or {}).items()
            },
            "host_probes": ((m.get("options") or {}).get("host_probes") or {}).get("state"),
            "host_only": facts["host_only"],
            "gpu_times": facts["gpu_times"],
            "confidential_computing": (m.get("gpu") or {}).get("confidential_computing"),
            "bridge_emulation": injected_summary(m.get("bridge_emulation")),
            "ground_truth": _ground_truth(a, steps, {c["category"] for c in categories if not c["measured"]}),
            "traced": _traced(a, m),
            "window_ms": round(window_ms, 3),
            "steps": steps,
            "step_source": w["step_source"],
            "step_ms": round(window_ms / steps, 4) if steps else None,
            "step_median_ms": ms(w["step_median_ns"]),
            "step_p10_ms": ms(w["step_p10_ns"]),
            "step_p90_ms": ms(w["step_p90_ns"]),
            "categories": categories,
            "explained_ms": round(explained, 3),
            "unexplained_ms": round(window_ms - explained, 3),
            # steps far longer than the median without crossings to show for it: their excess, not crossings'
            "slow_steps": {"steps": len(slow), "excess_ms": round(sum(r["excess_us"] for r in slow) / 1e3, 3)},
            # null where nothing GPU-side was recorded (host-timed copies, no kernels): unknown, not 0
            "gpu_idle_ms": round(a.scalar("SELECT coalesce(sum(end_ns - start_ns), 0) FROM gpu_idle") / 1e6, 3)
            if gpu_idle_known
            else None,
            "gpu_busy_complete": kernels,
            "cost_model": a.rows("cost_model"),
            "top": top,
            "callsites": [s for s in sites if s["lost_ms"] > 0],
            "facts": facts,
            "calls": sorted(r[0] for r in a.con.execute("SELECT DISTINCT name FROM calls").fetchall()),
            "params": default_params() | a.params,
        }
    finally:
        a.close()


def _traced(a: Analysis, manifest: dict) -> dict | None:
    """How much of the run was traced: windows (merged over the processes), their time, and the run's
    (the recording's start to end, None where the manifest lacks them); None when the whole run was."""
    windows, traced_ns = a.con.execute("SELECT windows, traced_ns FROM traced_summary").fetchall()[0]
    if windows is None:
        return None
    start, end = manifest.get("start_ns"), manifest.get("end_ns")
    run = end - start if isinstance(start, int) and isinstance(end, int) and end >= start else None
    return {
        "windows": windows,
        "traced_ms": round(traced_ns / 1e6, 3),
        "run_ms": round(run / 1e6, 3) if run is not None else None,
    }


def _ground_truth(a: Analysis, steps: int, unmeasured: set[str]) -> dict | None:
    """What the emulator injected inside the window (bridge_injections), per category it maps to, beside
    what that category explains; None for traces without the table's rows. What went to a category this
    trace cannot measure (`unmeasured`) is set aside: the share is of the rest."""
    rows = a.rows("ground_truth")
    if not rows:
        return None
    injected = sum(r["injected_ms"] for r in rows)
    aside = sum(r["injected_ms"] for r in rows if r["category"] in unmeasured)
    mapped = [r for r in rows if r["category"] and r["category"] not in unmeasured]
    explained = sum(r["explained_ms"] or 0 for r in mapped)
    return {
        "scope": "window",
        "injected_ms": round(injected, 3),
        "injected_ms_per_step": round(injected / steps, 5) if steps else None,
        "unmeasured_ms": round(aside, 3),  # injected into what this trace cannot measure
        "explained_ms": round(explained, 3),
        "explained_share": round(explained / (injected - aside), 4) if injected > aside else None,
        "categories": rows,
    }


def _same_program(b: dict, t: dict) -> bool:
    """Two traces of one program: the same command line, or (without one) the same calls made."""
    if b.get("command") and t.get("command"):
        return b["command"] == t["command"]
    return b["calls"] == t["calls"]


def _noise_ms(b: dict, t: dict) -> float | None:
    """The step-time noise of the two runs: each one's p10-p90 spread over the square root of its steps,
    combined; a gap within it cannot be told from run-to-run variance."""
    parts = []
    for r in (b, t):
        if not r["steps"] or r["step_p10_ms"] is None:
            return None
        parts.append(((r["step_p90_ms"] - r["step_p10_ms"]) ** 2) / r["steps"])
    return round(sum(parts) ** 0.5, 5)


def _injected_per_step(r: dict, scope: str) -> dict[str, float]:
    """Injected ms per step by category (None: a kind no category explains), over `scope`: the window
    (bridge_injections) or the whole run (the manifest's counters, warm-up included)."""
    if scope == "window":
        gt = r["ground_truth"]
        rows = gt["categories"] if gt else []
        out = {row["category"]: row["injected_ms"] for row in rows}
    else:
        inj = r["bridge_emulation"]
        out = {}
        if inj:
            for c in CATEGORIES:
                ms = sum(inj["injected_ms"].get(k, 0.0) for k in c.injected_kinds)
                if ms:
                    out[c.name] = ms
    return {k: v / r["steps"] if r["steps"] else v for k, v in out.items()}


def diff(base: Path, trace: Path, params: dict[str, object] | None = None, trace_report: dict | None = None) -> dict:
    """Which category explains how much of the per-step time gap between two traces, what the bridge
    emulator injected over the same windows (when it ran), and whether the gap can be judged at all.
    `trace_report`: TRACE's report when the caller already has it (with the same params)."""
    b, t = report(base, params), trace_report or report(trace, params)

    def per_step(r: dict, ms: float) -> float:
        return ms / r["steps"] if r["steps"] else ms

    base_step = b["step_ms"] if b["step_ms"] is not None else b["window_ms"]
    trace_step = t["step_ms"] if t["step_ms"] is not None else t["window_ms"]
    gap = trace_step - base_step
    emulated = [r for r in (b, t) if r["bridge_emulation"] or r["ground_truth"]]
    scope = None
    if emulated:
        scope = "window" if all(r["ground_truth"] for r in emulated) else "whole_run"
    inj_b = _injected_per_step(b, scope) if scope else {}
    inj_t = _injected_per_step(t, scope) if scope else {}
    rows, explained = [], 0.0
    slowed = per_step(t, t["slow_steps"]["excess_ms"]) - per_step(b, b["slow_steps"]["excess_ms"])
    for cb, ct in zip(b["categories"], t["categories"], strict=True):
        delta = per_step(t, ct["lost_ms"]) - per_step(b, cb["lost_ms"])
        if cb["measured"] and ct["measured"]:  # a category one trace cannot measure explains nothing
            explained += delta
        name = cb["category"]
        injected = inj_t.get(name, 0.0) - inj_b.get(name, 0.0) if name in inj_t or name in inj_b else None
        rows.append(
            {
                "category": name,
                "base_ms_per_step": round(per_step(b, cb["lost_ms"]), 5),
                "trace_ms_per_step": round(per_step(t, ct["lost_ms"]), 5),
                "delta_ms_per_step": round(delta, 5),
                "share_of_gap": round(delta / gap, 4) if gap else None,
                "injected_ms_per_step": round(injected, 5) if injected is not None else None,
                "measured": cb["measured"] and ct["measured"],  # in both traces
            }
        )
    injected_total = sum(inj_t.values()) - sum(inj_b.values()) if scope else None
    same = _same_program(b, t)
    noise = _noise_ms(b, t)
    warnings = []
    if noise is not None and abs(gap) < noise:
        warnings.append(
            f"the gap ({gap:+.4f} ms/step) is within the runs' step-time noise (±{noise:.4f} ms/step): "
            "it cannot be told from run-to-run variance"
        )
    if b["step_source"] != t["step_source"]:
        warnings.append(
            f"steps were found differently (BASE: {b['step_source']}, TRACE: {t['step_source']}): per-step "
            "figures may not compare; --param steps_from=... picks one way for both"
        )
    if b["gpu_times"] != t["gpu_times"]:
        warnings.append(
            "one trace has GPU-side copy times and the other only host call times (the driver interposer's): "
            "lost stream concurrency is measured in one of them only"
        )
    if b["host_only"] != t["host_only"]:
        warnings.append(
            "one trace has CUPTI records and the other host probes only: their categories are measured "
            "differently and do not compare"
        )
    if not same:
        warnings.append("the traces are of different programs (command lines or calls differ)")
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
        "noise_ms_per_step": noise,
        "base_step_source": b["step_source"],
        "trace_step_source": t["step_source"],
        "same_program": same,
        "warnings": warnings,
        "categories": rows,
        "explained_ms_per_step": round(explained, 5),
        # the slow steps' excess (report's slow_steps), per step: the gap's part that crossings did not cause
        "slow_steps": {"base": b["slow_steps"]["steps"], "trace": t["slow_steps"]["steps"]},
        "slow_steps_ms_per_step": round(slowed, 5),
        "unexplained_ms_per_step": round(gap - explained - slowed, 5),
        "explained_share": round(explained / gap, 4) if gap else None,
        "callsites": callsite_diff(b, t),
        # ground truth, when a trace was recorded with --emulate-bridge: what the emulator injected per
        # step more in TRACE than in BASE, over the analysed windows (bridge_injections) or, for traces
        # recorded before that table, over the whole run (warm-up included): bridge_injected_scope says
        "bridge_injected_ms_per_step": round(injected_total, 5) if injected_total is not None else None,
        "bridge_injected_scope": scope,
    }


def _top_site(sites: list[dict], category: str) -> str | None:
    """The call site (`file:line function`) that lost the most time in `category`, when stacks were recorded."""
    for s in sites:  # ordered by lost time
        if s["category"] == category and s["callsite"] is not None:
            return f"{s['callsite']} {s['function'] or ''}".strip()
    return None


def callsite_diff(b: dict, t: dict, limit: int = 10) -> list[dict]:
    """Per call site and category, lost ms per step in BASE and TRACE: the sites that changed most first
    (a category either trace cannot measure is left out)."""
    unmeasured = {c["category"] for r in (b, t) for c in r.get("categories", []) if not c["measured"]}

    def per_step(r: dict) -> dict[tuple[str, str, str], float]:
        steps = r["steps"] or 1
        sites = [s for s in r.get("callsites") or [] if s["category"] not in unmeasured]
        return {(s["callsite"], s["function"], s["category"]): s["lost_ms"] / steps for s in sites}

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
    rows.sort(key=lambda r: (-abs(r["delta_ms_per_step"]), r["callsite"] or "", r["category"]))
    return rows[:limit]
