"""Is cctrace true on third-party stacks? The workloads of tests/workloads/ (HF transformers generate,
a JAX jit loop, a CuPy loop, a CUDA-graph replay loop), each run plain, recorded with the default kinds
and recorded under `--emulate-bridge b300-tdx`, checked against what each says it issued.

Two phases, because the GPU machine has no duckdb:

    python benchmarks/truth.py record OUTDIR [--only hf_generate,jax_loop]   # on the GPU machine
    python benchmarks/truth.py report OUTDIR [OUTDIR...]                     # where duckdb is

`record` writes OUTDIR/summaries.json (each run's own summary, and the copies and the API calls by
name found between the workload's fences, read with pyarrow) and OUTDIR/<workload>-<mode>.tar.gz
(each trace, written as soon as it exists), and prints the copy counts. `report` loads each trace, runs report and diff, and prints
one table: per workload, copies found vs issued (must be exact), steps found vs iterations (within
±5%), the explained share of the injected time in the analysis window (90-110%) and diff's explained
share of the injected per-step gap (>= 90%). `--json` prints the rows instead. OUTDIR defaults to
$OUT/truth when OUT is set.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS_DIR = ROOT / "tests" / "workloads"
sys.path.insert(0, str(WORKLOADS_DIR))
from _common import KEYS, WORKLOADS, parse_summary, window_calls, window_counts  # noqa: E402

MODES = {"default": [], "bridge": ["--emulate-bridge", "b300-tdx"]}
# the injected time that falls inside the analysis window (each injection clipped to it)
INJECTED_IN_WINDOW_SQL = """
SELECT coalesce(sum(greatest(0, least(i.ts_ns + i.ns, w.end_ns) - greatest(i.ts_ns, w.start_ns))), 0) / 1e6
       AS injected_ms,
       count(*) FILTER (i.ts_ns >= w.start_ns AND i.ts_ns < w.end_ns) AS injections,
       (SELECT coalesce(sum(ns), 0) / 1e6 FROM bridge_injections) AS injected_total_ms
FROM bridge_injections i, win w
"""


def _run(cmd: list[str], timeout: float) -> tuple[dict | None, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    s = parse_summary(r.stdout)
    if s is not None:
        s["wall_s"] = round(time.monotonic() - t0, 1)
    return s, "" if r.returncode == 0 else f"exit {r.returncode}: {r.stderr[-1500:]}"


def record(outdir: Path, only: list[str], timeout: float, record_opts: list[str]) -> int:
    outdir.mkdir(parents=True, exist_ok=True)
    results_path = outdir / "summaries.json"
    results: dict = json.loads(results_path.read_text()) if results_path.exists() else {}
    tmp = Path(tempfile.mkdtemp(prefix="cct-truth-"))
    for name in only:
        need, plain_extra = WORKLOADS[name]
        if importlib.util.find_spec(need) is None:
            results[name] = {"skipped": f"{need} is not installed"}
            results_path.write_text(json.dumps(results, indent=1, sort_keys=True))
            print(f"{name:<13} skipped: {need} is not installed", flush=True)
            continue
        script = [sys.executable, str(WORKLOADS_DIR / f"{name}.py"), "--json"]
        entry: dict = {}
        entry["plain"], err = _run(script + plain_extra, timeout)
        if err:
            entry["plain_error"] = err
        for mode, opts in MODES.items():
            trace = tmp / f"{name}-{mode}"
            cmd = [sys.executable, "-m", "cctrace", "record", "-q", "--no-load", "--force", "-o", str(trace)]
            cmd += [*opts, *record_opts]
            summary, err = _run([*cmd, "--", *script], timeout)
            run: dict = {"summary": summary, "error": err or None}
            if trace.is_dir():
                run["window"] = window_counts(trace)
                run["window_calls"] = window_calls(trace)
                m = trace / "manifest.json"
                if m.exists():
                    run["injected"] = (json.loads(m.read_text()).get("bridge_emulation") or {}).get("injected")
                with tarfile.open(outdir / f"{name}-{mode}.tar.gz", "w:gz") as tar:
                    tar.add(trace, arcname=trace.name)
            entry[mode] = run
        results[name] = entry
        results_path.write_text(json.dumps(results, indent=1, sort_keys=True))
        print(_copy_line(name, entry), flush=True)
    return 0


def _copy_line(name: str, entry: dict) -> str:
    plain = entry.get("plain") or {}
    issued = plain.get("window") or {}
    parts = [f"{name:<13} issued H2D/D2H {issued.get('h2d')}/{issued.get('d2h')}"]
    for mode in MODES:
        w = (entry.get(mode) or {}).get("window") or {}
        ok = all(w.get(k) == issued.get(k) for k in KEYS) and w.get("fences") == 2
        parts.append(f"{mode}: {w.get('h2d')}/{w.get('d2h')} {'exact' if ok else 'MISMATCH'}")
        if (entry.get(mode) or {}).get("error"):
            parts.append(f"({mode} failed: {entry[mode]['error'][:200]})")
    return "  ".join(parts)


def _analysis():
    """cctrace's analysis, imported where the report phase runs (the record phase's machine has no duckdb)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # this checkout's cctrace
    from cctrace.analyze import analysis

    return analysis


def _safely(what: str, fn, *args, **kwargs):
    """fn's result, or None with one line on stderr: one trace that does not load leaves the table's others."""
    from cctrace.analyze.store import LoadError

    try:
        return fn(*args, **kwargs)
    except (LoadError, _analysis().QueryError, OSError, ValueError) as e:
        sys.stderr.write(f"{what}: {e}\n")
        return None


def _traces(outdir: Path) -> Path:
    """Each tarred trace, unpacked once under OUTDIR/traces."""
    dest = outdir / "traces"
    dest.mkdir(exist_ok=True)
    for tar_path in sorted(outdir.glob("*.tar.gz")):
        if not (dest / tar_path.name.removesuffix(".tar.gz")).exists():
            with tarfile.open(tar_path) as tar:
                _extract(tar, dest)
    return dest


def _extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Plain files and folders inside DEST only: tarfile's 'data' filter where this Python has it
    (3.11.4+; Debian 12's python3 is 3.11.2), else the same refusal by hand."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = dest.resolve()
    for m in tar.getmembers():
        if not (m.isfile() or m.isdir()) or not (root / m.name).resolve().is_relative_to(root):
            raise SystemExit(f"{tar.name}: refusing {m.name!r} (not a plain file or folder inside the archive)")
    tar.extractall(dest)


def _injected_in_window(trace: Path) -> dict | None:
    a = _analysis().Analysis(trace)
    try:
        return a.one(INJECTED_IN_WINDOW_SQL) or None
    finally:
        a.close()


def _issued(name: str, plain: dict) -> dict:
    """What the plain run says it issued in the window. hf_generate summaries from before it recorded its
    transformers version counted under inference_mode, where the dispatch mode saw only `lift_fresh`
    (18 of 822 crossings): those are re-derived from their parameters, as hf_generate does now."""
    if name == "hf_generate" and plain.get("params") and "transformers" not in plain:
        from hf_generate import derived_window

        return derived_window(plain["params"])
    return plain.get("window") or {}


def _ratio(a, b) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def workload_row(name: str, entry: dict, traces: Path) -> dict:
    """One workload's row of the table: its summaries (`entry`, from summaries.json) against the report of
    each of its traces under TRACES (TRACES/NAME-MODE) and the diff of the pair."""
    if "skipped" in entry:
        return {"workload": name, "skipped": entry["skipped"]}
    analysis = _analysis()
    plain = entry.get("plain") or {}
    issued = _issued(name, plain)
    row: dict = {"workload": name, "issued": {k: issued.get(k) for k in ("h2d", "d2h")}}
    reports = {}
    for mode in MODES:
        trace = traces / f"{name}-{mode}"
        w = (entry.get(mode) or {}).get("window") or {}
        row[f"copies_{mode}"] = {k: w.get(k) for k in ("h2d", "d2h")}
        row[f"workload_step_ms_{mode}"] = ((entry.get(mode) or {}).get("summary") or {}).get("step_ms_median")
        row[f"copies_exact_{mode}"] = w.get("fences") == 2 and all(w.get(k) == issued.get(k) for k in KEYS)
        rep = _safely(f"report {trace}", analysis.report, trace) if trace.is_dir() else None
        if rep:
            reports[mode] = rep
            row[f"steps_{mode}"] = rep.get("steps")
            row[f"step_source_{mode}"] = rep.get("step_source")
            row[f"gpu_times_{mode}"] = rep.get("gpu_times")  # CUPTI's copies; not the interposer's host times
            for k in ("step_median_ms", "step_p10_ms", "step_p90_ms"):
                row[f"{k}_{mode}"] = rep.get(k)
            lo, hi = plain.get("iterations") or 0, plain.get("iterations_total") or 0
            row[f"steps_ok_{mode}"] = bool(rep.get("steps")) and 0.95 * lo <= rep["steps"] <= 1.05 * hi
    row["iterations"] = plain.get("iterations")
    bridge = reports.get("bridge")
    inj = _safely(f"injected {name}", _injected_in_window, traces / f"{name}-bridge") if bridge else None
    if bridge and inj:
        row["injected_window_ms"] = round(inj["injected_ms"], 3)
        row["explained_ms"] = bridge.get("explained_ms")
        row["explained_share_of_injected"] = _ratio(bridge.get("explained_ms"), inj["injected_ms"])
        # per category the injected kinds map to: is the time in the right category, not only in some?
        truth = bridge.get("ground_truth") or {}
        row["by_category"] = {
            c["category"]: {"injected_ms": c["injected_ms"], "explained_share": c["explained_share"]}
            for c in truth.get("categories") or []
            if c["category"]
        }
    if bridge and reports.get("default") and inj:
        pair = (traces / f"{name}-default", traces / f"{name}-bridge")
        d = _safely(f"diff {name}", analysis.diff, *pair, trace_report=bridge)
        if d:
            per_step = inj["injected_ms"] / bridge["steps"] if bridge.get("steps") else None
            row["diff_explained_ms_per_step"] = d.get("explained_ms_per_step")
            row["injected_ms_per_step"] = round(per_step, 5) if per_step else None
            row["diff_share_of_injected_gap"] = _ratio(d.get("explained_ms_per_step"), per_step)
            row["diff_explained_share_of_gap"] = d.get("explained_share")
    return row


def report(outdirs: list[Path]) -> list[dict]:
    """The table's rows from one or more record phases' OUTDIRs (e.g. the workloads split over runs)."""
    results, where = {}, {}
    for outdir in outdirs:
        found = json.loads((outdir / "summaries.json").read_text())
        results.update(found)
        where.update(dict.fromkeys(found, _traces(outdir)))
    return [workload_row(name, entry, where[name]) for name, entry in results.items()]


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.0%}" if unit == "%" else f"{v:.3g}"
    return str(v)


def _columns(head: list[str], body: list[list[str]], left: int = 1) -> list[str]:
    """Aligned lines, two spaces between columns; the first `left` columns left-aligned, the rest right."""
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    return [
        "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in [head, *body]
    ]


def _copies(d: dict | None) -> str:
    return f"{(d or {}).get('h2d')}/{(d or {}).get('d2h')}"


def table_lines(rows: list[dict]) -> list[str]:
    """The truth table, then per workload and mode how the report found its steps and how regular they are."""
    head = ["workload", "copies issued", "found (default)", "found (bridge)", "steps", "iters", "source"]
    head += ["explained/injected", "diff/injected gap"]
    body, skipped = [], []
    for r in rows:
        if "skipped" in r:
            skipped.append(f"{r['workload']}: skipped: {r['skipped']}")
            continue
        found = [_copies(r.get(f"copies_{m}")) + (" ok" if r.get(f"copies_exact_{m}") else " NO") for m in MODES]
        steps = [_fmt(r.get(k)) for k in ("steps_default", "iterations", "step_source_default")]
        shares = [_fmt(r.get(k), "%") for k in ("explained_share_of_injected", "diff_share_of_injected_gap")]
        body.append([r["workload"], _copies(r["issued"]), *found, *steps, *shares])
    lines = _columns(head, body, left=1)
    lines.append("targets: copies exact; steps within 5% of iterations; explained/injected 90-110%; diff >= 90%")
    head = ["workload", "mode", "source", "steps", "iters", "median ms", "p10 ms", "p90 ms", "workload's median ms"]
    keys = ("steps", "iterations", "step_median_ms", "step_p10_ms", "step_p90_ms", "workload_step_ms")
    body = [
        [r["workload"], m, _fmt(r.get(f"step_source_{m}")), *(_fmt(r.get(f"{k}_{m}", r.get(k))) for k in keys)]
        for r in rows
        if "skipped" not in r
        for m in MODES
    ]
    lines += ["", "how the report found the steps, and how regular they are (the workload's own median per iteration):"]
    return lines + _columns(head, body, left=3) + skipped


def print_table(rows: list[dict]) -> None:
    print("\n".join(table_lines(rows)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("phase", choices=("record", "report"))
    default_out = os.path.join(os.environ["OUT"], "truth") if os.environ.get("OUT") else None
    p.add_argument("outdir", nargs="*", type=Path, help="record: one; report: one or more (default: $OUT/truth)")
    p.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated, from: {', '.join(WORKLOADS)}")
    p.add_argument("--timeout", type=float, default=240, help="seconds per run")
    p.add_argument("--json", action="store_true", help="report: the rows as JSON")
    p.add_argument(
        "--record-opt",
        action="append",
        default=[],
        help="record: one more `cctrace record` option for every traced run (repeatable), e.g. --record-opt=--driver",
    )
    a = p.parse_args(argv)
    outdirs = a.outdir or ([Path(default_out)] if default_out else [])
    if not outdirs or (a.phase == "record" and len(outdirs) > 1):
        p.error("record takes one OUTDIR, report one or more (or set OUT)")
    only = [w for w in a.only.split(",") if w]
    unknown = [w for w in only if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; known: {', '.join(WORKLOADS)}")
    if a.phase == "record":
        return record(outdirs[0], only, a.timeout, a.record_opt)
    rows = report(outdirs)
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
