"""One runner for the examples/serve.py matrices (GPU machine): a SUITE's configurations run alternately
(A B C A B C ...) --reps times, each pinned to --cpus, and one table: median steps/s, min-max, median
step ms, the slowdown against the suite's baseline by median steps/s and its bootstrap 95% interval
(the runs resampled; wide when the machine was noisy), and the records/s each traced run captured.

    python benchmarks/run_serve.py record --reps 5 --cpus 2-5 [--steps N] [--only a,b] [--json F] [-- serve.py args]
    python benchmarks/run_serve.py samples --reps 3 --cpus 2-5 --keep OUTDIR   (sample_traces/record.sh)

Suites: record (cctrace record vs plain and torch.profiler), cupti (one CUPTI setting at a time),
bridge (the emulator's own cost), remedies (each remedy under an emulated bridge), probes (host
probes on serve.py; root and bcc), samples (the sample traces; --keep). With $OUT set, the results
are also written to $OUT/run_serve-SUITE.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from _serve import ROOT, SERVE, pinned, recorded, serve_summary

from cctrace.trace import handoff as H


@dataclass(frozen=True)
class Config:
    """One way to run serve.py: under `cctrace record RECORD` (None: plain), with SERVE args and ENV."""

    record: tuple[str, ...] | None = None
    serve: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    configs: dict[str, Config]
    baseline: str
    steps: int
    about: str


ZERO_BRIDGE = "toll_us=0,bw_ratio=1,serialize=off,async_block=off"
DEFAULT_KINDS = "memcpy,memcpy2,memset,memory,runtime,overhead"
BASE4 = "memcpy,memset,memory,sync"
REMEDIES = ("--packed-h2d", "--staging-stream", "--async-readback")
EMULATION_ONLY = ("--kinds", "none", "--host-probes", "off")  # the bridge alone: no CUPTI, no probes
RECORDING = ("--nvtx", "--kernels", "--host-probes", "off")


def _kinds(kinds: str, env: dict[str, str] | None = None) -> Config:
    return Config(("--kinds", kinds, "--host-probes", "off"), env=env or {})


def _bridged(*serve: str) -> Config:
    return Config((*EMULATION_ONLY, "--emulate-bridge", "b300-tdx"), ("--no-nvtx", *serve))


SUITES: dict[str, Suite] = {
    "record": Suite(
        {
            "plain": Config(),
            "cctrace": Config(("--host-probes", "off")),
            "cctrace+kernels+nvtx": Config(("--kernels", "--nvtx", "--host-probes", "off")),
            "torch.profiler": Config(serve=("--torch-profiler",)),
        },
        "plain",
        2000,
        "how much `cctrace record` slows serve.py, against plain and torch.profiler",
    ),
    "cupti": Suite(
        {
            "plain": Config(),
            "default": _kinds(DEFAULT_KINDS),
            "default-no-periodic-flush": _kinds(DEFAULT_KINDS, {H.CUPTI_FLUSH.name: "none"}),
            "default-python-callbacks": _kinds(DEFAULT_KINDS, {H.NO_SHIM.name: "1"}),
            "none": _kinds("none"),
            "base4": _kinds(BASE4),
            "memcpy": _kinds("memcpy"),
            "sync": _kinds("sync"),
            "memory": _kinds("memory"),
            "memcpy+runtime": _kinds("memcpy,runtime"),
            # RUNTIME on, but records kept for no call / for copies only (a regex of call names)
            "memcpy+runtime-none": _kinds("memcpy,runtime", {H.RUNTIME_KEEP.name: "^$"}),
            "memcpy+runtime-copies": _kinds("memcpy,runtime", {H.RUNTIME_KEEP.name: "^cudaMemcpy"}),
            "default+sync": _kinds(DEFAULT_KINDS + ",sync"),
            "base4+memcpy2": _kinds(BASE4 + ",memcpy2"),
            "base4+overhead": _kinds(BASE4 + ",overhead"),
            "base4+runtime": _kinds(BASE4 + ",runtime"),
            "default+kernel+nvtx": _kinds(DEFAULT_KINDS + ",kernel,nvtx"),
        },
        "plain",
        3000,
        "where the CUPTI source's cost comes from: one CUPTI setting at a time",
    ),
    "bridge": Suite(
        {
            "plain": Config(),
            "zero bridge, no recording": Config((*EMULATION_ONLY, "--emulate-bridge", ZERO_BRIDGE)),
            "recording (CUPTI)": Config(RECORDING),
            "recording + zero bridge": Config((*RECORDING, "--emulate-bridge", ZERO_BRIDGE)),
            "recording + b300-tdx": Config((*RECORDING, "--emulate-bridge", "b300-tdx")),
        },
        "plain",
        2000,
        "what the bridge emulation costs by itself: a zero bridge, with and without CUPTI",
    ),
    "remedies": Suite(
        {
            "no bridge": Config(serve=("--no-nvtx",)),
            "bridge": _bridged(),
            "bridge + packed H2D": _bridged("--packed-h2d"),
            "bridge + staging stream": _bridged("--staging-stream"),
            "bridge + async readback": _bridged("--async-readback"),
            "bridge + all three": _bridged(*REMEDIES),
        },
        "bridge",
        300,
        "how much each remedy in serve.py wins back under an emulated b300-tdx bridge (negative: faster)",
    ),
    "probes": Suite(
        {
            "plain": Config(),
            "host probes only": Config(("--kinds", "none", "--host-probes", "on")),
            "probes + launches": Config(("--kinds", "none", "--host-probes", "on", "--probe-launches")),
            "cupti + host probes": Config(("--host-probes", "on")),
        },
        "plain",
        3000,
        "what the eBPF host probes cost on serve.py (root and bcc)",
    ),
    "samples": Suite(
        {
            "serve-baseline": Config(RECORDING),
            "serve-zero-bridge": Config((*RECORDING, "--emulate-bridge", ZERO_BRIDGE)),
            "serve-bridge": Config((*RECORDING, "--emulate-bridge", "b300-tdx")),
            "serve-bridge-remedied": Config((*RECORDING, "--emulate-bridge", "b300-tdx"), REMEDIES),
            "serve-hostonly": Config(
                ("--kinds", "none", "--host-probes", "on", "--probe-launches", "--emulate-bridge", "b300-tdx")
            ),
        },
        "serve-baseline",
        300,
        "the sample traces in sample_traces/ (serve-hostonly needs root and bcc: --only to leave it out)",
    ),
}


@dataclass
class Run:
    steps_per_s: float
    step_ms: float
    records_per_s: float | None


def records_per_s(trace: Path) -> float | None:
    """Rows the traced processes wrote per second of their life (from their proc records)."""
    total, seconds = 0, 0.0
    for p in trace.glob("proc.*.json"):
        rec = json.loads(p.read_text())
        total += sum(rec.get("rows_written", {}).values())
        if rec.get("end_ns") and rec.get("start_ns"):
            seconds = max(seconds, (rec["end_ns"] - rec["start_ns"]) / 1e9)
    return total / seconds if seconds else None


def run_one(cfg: Config, serve_args: list[str], trace: Path, cpus: str | None, log: Path | None) -> Run:
    cmd = [sys.executable, SERVE, *cfg.serve, *serve_args]
    if cfg.record is not None:
        cmd = recorded(cmd, trace, list(cfg.record))
    r = subprocess.run(pinned(cmd, cpus), capture_output=True, text=True, cwd=ROOT, env={**os.environ, **cfg.env})
    if log is not None:
        log.write_text(r.stdout + r.stderr)
    s = serve_summary(r.stdout)
    if r.returncode != 0 or s is None:
        raise SystemExit(f"run failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    if trace.is_dir():
        (trace / "serve_summary.json").write_text(json.dumps(s, indent=2) + "\n")
    return Run(s["steps_per_s"], s["step_ms_median"], records_per_s(trace) if trace.is_dir() else None)


def slowdown(base: list[float], xs: list[float]) -> float:
    """% slower than the baseline, by median steps/s."""
    b = statistics.median(base)
    return 100 * (b - statistics.median(xs)) / b


def bootstrap_ci(base: list[float], xs: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of slowdown(): both sets of runs resampled with replacement."""
    rng = random.Random(seed)
    draws = sorted(slowdown(rng.choices(base, k=len(base)), rng.choices(xs, k=len(xs))) for _ in range(n))
    return draws[int(0.025 * n)], draws[int(0.975 * n) - 1]


def table(suite: Suite, runs: dict[str, list[Run]]) -> list[dict]:
    base = [r.steps_per_s for r in runs[suite.baseline]]
    rows = []
    for name, rs in runs.items():
        sps = [r.steps_per_s for r in rs]
        rps = [r.records_per_s for r in rs if r.records_per_s]
        lo, hi = bootstrap_ci(base, sps)
        rows.append(
            {
                "config": name,
                "steps_per_s": sps,
                "median": statistics.median(sps),
                "step_ms_median": statistics.median(r.step_ms for r in rs),
                "slowdown_pct": slowdown(base, sps),
                "slowdown_ci95_pct": [lo, hi],
                "records_per_s": statistics.median(rps) if rps else None,
            }
        )
    return rows


def render(rows: list[dict], baseline: str) -> str:
    head = f"{'configuration':28} {'steps/s':>8} {'min-max':>15} {'step ms':>8} {'slowdown':>9} {'95% CI':>17} {'records/s':>10}"
    out = [head]
    for r in rows:
        s = r["steps_per_s"]
        lo, hi = r["slowdown_ci95_pct"]
        ci = "(baseline)" if r["config"] == baseline else f"[{lo:+.1f}, {hi:+.1f}]%"
        rec = f"{r['records_per_s']:10.0f}" if r["records_per_s"] else f"{'-':>10}"
        out.append(
            f"{r['config']:28} {r['median']:8.1f} {min(s):7.1f}-{max(s):<7.1f} {r['step_ms_median']:8.3f} "
            f"{r['slowdown_pct']:+8.1f}% {ci:>17} {rec}"
        )
    return "\n".join(out)


def keep_medians(keep: Path, runs: dict[str, list[Run]]) -> dict:
    """For each configuration, the run with the median steps/s (the lower middle one of an even count)
    copied to KEEP/NAME: chosen by serve.py's own speed, never by what the analysis says."""
    chosen = {}
    for name, rs in runs.items():
        if not (keep / "runs" / f"{name}.1").is_dir():
            continue  # not recorded: nothing to keep
        order = sorted(range(len(rs)), key=lambda i: rs[i].steps_per_s)
        k = order[(len(rs) - 1) // 2]
        shutil.rmtree(keep / name, ignore_errors=True)
        shutil.copytree(keep / "runs" / f"{name}.{k + 1}", keep / name)
        chosen[name] = {"steps_per_s_by_rep": {str(i + 1): round(r.steps_per_s, 1) for i, r in enumerate(rs)}}
        chosen[name]["kept_rep"] = k + 1
    (keep / "recordings.json").write_text(json.dumps(chosen, indent=2) + "\n")
    return chosen


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("suite", choices=sorted(SUITES), help="which matrix")
    ap.add_argument("--reps", type=int, default=3, help="runs of each configuration, alternating (default 3)")
    ap.add_argument("--steps", type=int, help="serve.py --steps (default: the suite's)")
    ap.add_argument("--cpus", help="pin every run to these CPUs (taskset -c list, e.g. 2-5)")
    ap.add_argument("--only", help="comma-separated configuration names (the baseline is always run)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", type=Path, help="keep every run's trace in KEEP/runs and the median run in KEEP/NAME")
    ap.add_argument("serve_args", nargs="*", help="extra arguments for serve.py (after --)")
    a = ap.parse_args(argv)
    suite = SUITES[a.suite]
    names = list(suite.configs)
    if a.only:
        wanted = set(a.only.split(","))
        if unknown := wanted - set(names):
            raise SystemExit(f"unknown configuration(s) {sorted(unknown)}; {a.suite} has: {', '.join(names)}")
        names = [n for n in names if n in wanted or n == suite.baseline]
    serve_args = ["--steps", str(a.steps or suite.steps), *a.serve_args]
    runs: dict[str, list[Run]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        where = a.keep / "runs" if a.keep else Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        for rep in range(1, a.reps + 1):
            for n in names:
                trace, log = where / f"{n}.{rep}", (where / f"{n}.{rep}.log" if a.keep else None)
                runs[n].append(run_one(suite.configs[n], serve_args, trace, a.cpus, log))
                print(f"rep {rep}/{a.reps} {n}: {runs[n][-1].steps_per_s:.1f} steps/s", file=sys.stderr, flush=True)
    rows = table(suite, runs)
    print(f"{a.suite}: {suite.about}")
    print(
        f"serve.py {' '.join(serve_args)}; {a.reps} reps alternating; cpus {a.cpus or 'any'}; baseline {suite.baseline}"
    )
    print(render(rows, suite.baseline))
    result = {"suite": a.suite, "reps": a.reps, "cpus": a.cpus, "serve_args": serve_args, "rows": rows}
    if a.keep:
        result["kept"] = keep_medians(a.keep, runs)
    targets = [a.json] if a.json else []
    if os.environ.get("OUT"):
        targets.append(Path(os.environ["OUT"]) / f"run_serve-{a.suite}.json")
    for t in targets:
        t.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
