"""One runner for the examples/serve.py matrices (GPU machine): a SUITE's configurations run alternately
(A B C A B C ...) --reps times, each pinned to --cpus, and one table: median steps/s, min-max, median
step ms, the slowdown against the suite's baseline by median steps/s and its bootstrap 95% interval
(the runs resampled; wide when the machine was noisy), and the records/s each traced run captured.

    python benchmarks/run_serve.py record --reps 5 --cpus 2-5 [--steps N] [--only a,b] [--json F] [-- serve.py args]
    python benchmarks/run_serve.py samples --reps 3 --cpus 2-5 --keep OUTDIR   (sample_traces/record.sh)

Suites: record (cctrace record vs plain and torch.profiler), cupti (one CUPTI setting at a time),
bridge (the emulator's own cost), remedies (each remedy under an emulated bridge), probes (host
probes on serve.py; root and bcc), samples (the sample traces; --keep), overhead (what recording
costs as users see it, with the in-process figure beside it). With $OUT set, the results are also
written to $OUT/run_serve-SUITE.json, and each run's figure to $OUT/run_serve-SUITE.log as it comes.

`--workload hf` runs tests/workloads/hf_generate.py (transformers generate on a random-init Llama)
instead of serve.py: steps are its forward passes; configurations that pass serve.py arguments are
left out.

The overhead suite (>= 12 reps for its figures) also runs benchmarks/cupti_inprocess.py in one process
(--inprocess-rounds, serve.py only): the same settings switched between blocks against CUPTI detached,
printed beside the between-process slowdown with a flag where the two 95% intervals do not overlap. Its
blocks are short (20 steps), so neighbouring blocks share the machine's drifting speed:

    python benchmarks/run_serve.py overhead --reps 12 --cpus 2-5 --only default,none,interposer --inprocess-rounds 150
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from _serve import ROOT, SERVE, bootstrap_95, median_ci, pinned, recorded, serve_summary, summary_line

from cctrace.record import tracer as T
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
DEFAULT_KINDS = ",".join(T.DEFAULT_KINDS)
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
    "overhead": Suite(
        {
            "plain": Config(),
            "default": _kinds(DEFAULT_KINDS),
            "none": _kinds("none"),  # the tracer and its flusher, CUPTI never started
            "memcpy": _kinds("memcpy"),
            "runtime": _kinds("runtime"),  # only the shim's callback subscription (the kept runtime calls)
            "default-no-periodic-flush": _kinds(DEFAULT_KINDS, {H.CUPTI_FLUSH.name: "none"}),
            "default-32MB-buffers": _kinds(DEFAULT_KINDS, {H.CUPTI_BUFFER_KB.name: "32768"}),
            "default+overhead": _kinds(DEFAULT_KINDS + ",overhead"),  # the default before this session
            "default+kernels+nvtx": _kinds(DEFAULT_KINDS + ",kernel,nvtx"),
            # CUPTI never attached: the tracer waiting for a toggle that never comes (outside a window)
            "detached": Config(("--host-probes", "off", "--start-detached", "--toggle-signal", "USR2")),
            # host calls through the preloaded driver interposer instead of CUPTI
            "interposer": Config(("--kinds", "none", "--interpose", "on", "--host-probes", "off")),
            "torch.profiler": Config(serve=("--torch-profiler",)),
        },
        "plain",
        2000,
        "what `cctrace record` costs as users see it: a traced run against a plain one, per setting",
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
    step_ms_p10: float | None = None  # the run's fastest decile of steps: less of the machine's drift


def records_per_s(trace: Path) -> float | None:
    """Rows the traced processes wrote per second of their life (from their proc records)."""
    total, seconds = 0, 0.0
    for p in trace.glob("proc.*.json"):
        rec = json.loads(p.read_text())
        total += sum(rec.get("rows_written", {}).values())
        if rec.get("end_ns") and rec.get("start_ns"):
            seconds = max(seconds, (rec["end_ns"] - rec["start_ns"]) / 1e9)
    return total / seconds if seconds else None


HF_GENERATE = ROOT / "tests" / "workloads" / "hf_generate.py"
# cupti_inprocess.py's config for each overhead-suite configuration it can switch within one process
# (fresh: CUPTI attached anew with only those kinds, as a traced process starts: a kind switched off after it
# was on leaves most of its cost behind, so switching kinds within one attach is not the between-process twin)
INPROCESS = {
    "default": "fresh:default",
    "memcpy": "fresh:memcpy",
    "runtime": "fresh:runtime",
    "default+kernels+nvtx": "fresh:default+kernel+nvtx",
    "interposer": "interposer",  # CUPTI detached, the interposer recording
}
ATTACHED_OFF = "off"  # in one process: CUPTI attached (subscription included) with every kind off
# short blocks paired round by round: the lent H200 drifts between speeds over spans longer than 300 steps
INPROCESS_BLOCK, INPROCESS_SETTLE = 20, 5


def _hf_summary(stdout: str) -> dict | None:
    """hf_generate.py's summary as serve.py's: forward passes are the steps."""
    s = summary_line(stdout, "WORKLOAD_SUMMARY")
    if s is None or not s.get("seconds"):
        return None
    return {"steps_per_s": s["iterations"] / s["seconds"], "step_ms_median": s["step_ms_median"]}


def run_one(
    cfg: Config, serve_args: list[str], trace: Path, cpus: str | None, log: Path | None, workload: str = "serve"
) -> Run:
    if workload == "hf":
        cmd = [sys.executable, str(HF_GENERATE), "--json", *serve_args]
    else:
        cmd = [sys.executable, SERVE, *cfg.serve, *serve_args]
    if cfg.record is not None:
        cmd = recorded(cmd, trace, list(cfg.record))
    r = subprocess.run(pinned(cmd, cpus), capture_output=True, text=True, cwd=ROOT, env={**os.environ, **cfg.env})
    if log is not None:
        log.write_text(r.stdout + r.stderr)
    s = _hf_summary(r.stdout) if workload == "hf" else serve_summary(r.stdout)
    if r.returncode != 0 or s is None:
        raise SystemExit(f"run failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    if trace.is_dir():
        (trace / "serve_summary.json").write_text(json.dumps(s, indent=2) + "\n")
    return Run(
        s["steps_per_s"], s["step_ms_median"], records_per_s(trace) if trace.is_dir() else None, s.get("step_ms_p10")
    )


def slowdown(base: list[float], xs: list[float]) -> float:
    """% slower than the baseline, by median steps/s."""
    b = statistics.median(base)
    return 100 * (b - statistics.median(xs)) / b


def longer(base: list[float], xs: list[float]) -> float:
    """% longer than the baseline, by median time."""
    b = statistics.median(base)
    return 100 * (statistics.median(xs) - b) / b


def bootstrap_ci(
    base: list[float], xs: list[float], n: int = 2000, seed: int = 0, stat=slowdown
) -> tuple[float, float]:
    """95% interval of `stat` (slowdown()): both sets of runs resampled with replacement."""
    return bootstrap_95(lambda rng: stat(rng.choices(base, k=len(base)), rng.choices(xs, k=len(xs))), n, seed)


def table(suite: Suite, runs: dict[str, list[Run]]) -> list[dict]:
    base = [r.steps_per_s for r in runs[suite.baseline]]
    base_p10 = [r.step_ms_p10 for r in runs[suite.baseline] if r.step_ms_p10 is not None]
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
        p10 = [r.step_ms_p10 for r in rs if r.step_ms_p10 is not None]
        if p10 and base_p10:
            rows[-1]["step_ms_p10"] = p10
            rows[-1]["p10_longer_pct"] = longer(base_p10, p10)
            rows[-1]["p10_longer_ci95_pct"] = list(bootstrap_ci(base_p10, p10, stat=longer))
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
    if all("step_ms_p10" in r for r in rows):
        out += ["fastest decile of steps (each run's p10 step time; the machine's drift lengthens the others):"]
        for r in rows:
            lo, hi = r["p10_longer_ci95_pct"]
            ci = "(baseline)" if r["config"] == baseline else f"[{lo:+.1f}, {hi:+.1f}]%"
            p = r["step_ms_p10"]
            out.append(
                f"{r['config']:28} {statistics.median(p):8.4f} ms {min(p):.4f}-{max(p):.4f} "
                f"{r['p10_longer_pct']:+8.1f}% {ci:>17}"
            )
    return "\n".join(out)


def _progress_log(suite: str):
    """With $OUT: each line appended to $OUT/run_serve-SUITE.log as it comes (a run cut short keeps them)."""
    out = os.environ.get("OUT")
    path = Path(out) / f"run_serve-{suite}.log" if out else None

    def write(text: str) -> None:
        if path is not None:
            with open(path, "a") as f:
                f.write(text + "\n")

    return write


def inprocess_beside(rows: list[dict], rounds: int, cpus: str | None, serve_args: list[str]) -> list[dict]:
    """cupti_inprocess.py on serve.py with the overhead suite's settings against CUPTI detached; per
    setting the slowdown by steps/s (as the between-process table gives it), its 95% interval over the
    rounds, and whether the two methods disagree (intervals apart)."""
    wanted = [r["config"] for r in rows if r["config"] in INPROCESS]
    if not wanted:
        return []
    configs = ["detached", ATTACHED_OFF, *dict.fromkeys(INPROCESS[c] for c in wanted)]
    cmd = [sys.executable, str(Path(__file__).with_name("cupti_inprocess.py")), "--workload", "serve"]
    cmd += ["--rounds", str(rounds), "--block", str(INPROCESS_BLOCK), "--settle", str(INPROCESS_SETTLE)]
    cmd += ["--configs", ",".join(configs), "--json"]
    cmd += [*(["--cpus", cpus] if cpus else []), "--", *serve_args]
    env = {k: v for k, v in os.environ.items() if k != "OUT"}  # its JSON comes back on stdout
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if r.returncode != 0:
        return [{"error": f"cupti_inprocess.py failed ({r.returncode}): {r.stderr.strip()[-500:]}"}]
    blocks = json.loads(r.stdout.strip().splitlines()[-1])["block_ms"]

    def against_detached(c: str) -> dict:
        # slowdown by rate per round: 1 - (detached step time / this setting's step time)
        per_round = [100 * (1 - d / m) for m, d in zip(blocks[c], blocks["detached"], strict=True)]
        return {
            "inprocess_config": c,
            "inprocess_pct": statistics.median(per_round),
            "inprocess_ci95_pct": list(median_ci(per_round)),
        }

    out = []
    for row in rows:
        c = INPROCESS.get(row["config"])
        if c is None:
            continue
        inside = against_detached(c)
        (blo, bhi), (lo, hi) = row["slowdown_ci95_pct"], inside["inprocess_ci95_pct"]
        out.append(
            {
                "config": row["config"],
                "between_pct": row["slowdown_pct"],
                "between_ci95_pct": [blo, bhi],
                **inside,
                "disagree": hi < blo or bhi < lo,
            }
        )
    # what staying attached costs (no between-process twin: `none` never starts CUPTI)
    out.append({"config": "(attached, every kind off)", **against_detached(ATTACHED_OFF)})
    return out


def render_beside(beside: list[dict]) -> str:
    if beside and "error" in beside[0]:
        return beside[0]["error"]
    out = ["between processes vs in one process (CUPTI detached between blocks), slowdown by steps/s:"]
    out.append(f"{'configuration':28} {'between':>8} {'95% CI':>17} {'in-process':>11} {'95% CI':>17}")
    for b in beside:
        ilo, ihi = b["inprocess_ci95_pct"]
        if "between_pct" in b:
            blo, bhi = b["between_ci95_pct"]
            between = f"{b['between_pct']:+7.1f}% {f'[{blo:+.1f}, {bhi:+.1f}]%':>17}"
        else:
            between = f"{'-':>8} {'':>17}"
        flag = "  DISAGREE" if b.get("disagree") else ""
        out.append(f"{b['config']:28} {between} {b['inprocess_pct']:+10.1f}% {f'[{ilo:+.1f}, {ihi:+.1f}]%':>17}{flag}")
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
    ap.add_argument("--workload", choices=("serve", "hf"), default="serve", help="serve.py, or hf_generate.py")
    ap.add_argument(
        "--inprocess-rounds",
        type=int,
        default=150,
        help="overhead suite: rounds of cupti_inprocess.py printed beside the table (0: none)",
    )
    ap.add_argument("serve_args", nargs="*", help="extra arguments for serve.py (after --)")
    a = ap.parse_args(argv)
    suite = SUITES[a.suite]
    names = [n for n in suite.configs if a.workload == "serve" or not suite.configs[n].serve]
    if a.only:
        wanted = set(a.only.split(","))
        if unknown := wanted - set(names):
            raise SystemExit(f"unknown configuration(s) {sorted(unknown)}; {a.suite} has: {', '.join(names)}")
        names = [n for n in names if n in wanted or n == suite.baseline]
    serve_args = ["--steps", str(a.steps or suite.steps), *a.serve_args] if a.workload == "serve" else a.serve_args
    runs: dict[str, list[Run]] = {n: [] for n in names}
    progress = _progress_log(a.suite)
    with tempfile.TemporaryDirectory() as tmp:
        where = a.keep / "runs" if a.keep else Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        for rep in range(1, a.reps + 1):
            for n in names:
                trace, log = where / f"{n}.{rep}", (where / f"{n}.{rep}.log" if a.keep else None)
                runs[n].append(run_one(suite.configs[n], serve_args, trace, a.cpus, log, a.workload))
                line = f"rep {rep}/{a.reps} {n}: {runs[n][-1].steps_per_s:.1f} steps/s"
                print(line, file=sys.stderr, flush=True)
                progress(line)
    rows = table(suite, runs)
    print(f"{a.suite}: {suite.about}")
    print(
        f"serve.py {' '.join(serve_args)}; {a.reps} reps alternating; cpus {a.cpus or 'any'}; baseline {suite.baseline}"
    )
    print(render(rows, suite.baseline), flush=True)
    progress(render(rows, suite.baseline))
    result = {"suite": a.suite, "reps": a.reps, "cpus": a.cpus, "serve_args": serve_args, "rows": rows}
    result["workload"] = a.workload
    if a.suite == "overhead" and a.workload == "serve" and a.inprocess_rounds > 0:
        beside = inprocess_beside(rows, a.inprocess_rounds, a.cpus, a.serve_args)
        result["inprocess"] = beside
        text = render_beside(beside)
        print(text, flush=True)
        progress(text)
    if a.keep:
        result["kept"] = keep_medians(a.keep, runs)
    targets = [a.json] if a.json else []
    if os.environ.get("OUT"):
        targets.append(Path(os.environ["OUT"]) / f"run_serve-{a.suite}.json")
    for t in targets:
        t.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
