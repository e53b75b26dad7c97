"""What each CUPTI activity kind costs, measured inside one traced process.

Between processes, plain serve.py itself moved from 958 to 1,870 steps/s on the lent machines, which
hides a few-percent cost. Here one process runs under `cctrace record` with every kind switched on at
start (the real tracer: C buffer shim, flusher thread, runtime filter), and this script switches kinds
off and on between blocks of steps (cuptiActivityDisable/Enable), in a shuffled order each round. Each
block's median step time is divided by the all-off block of the same round; the table gives the median
and the 25th-75th percentiles of those ratios over the rounds, and the median's bootstrap 95% interval.
Short blocks and many rounds (`--block 20 --rounds 300`) pair each block with its neighbours closely
where the machine drifts between speeds; then leave out `off` (its CUPTI attach and detach each round
are slow) and compare against `detached`.

Config `off` switches every kind off but leaves CUPTI attached (its hooks, worker thread and callback
subscription); config `detached` takes CUPTI out of the process as `record --duration` does outside its
window (kinds off, buffers handed over, cuptiFinalize at the next CUDA call's exit, the tracer's flusher
asleep) and attaches it again for the next block. When `detached` is among the configs, a second table
gives every config against it: what recording costs with nothing left on in the "off" blocks.

    python benchmarks/cupti_inprocess.py --workload serve --rounds 12 --configs detached,off,default --cpus 2-5

Workloads: `serve` (examples/serve.py's decode step; its arguments after `--`), `launch` (100 tiny
kernel launches and a sync per step: the per-launch price of a kind), `copy` (10 small pinned async
H2D copies and a sync per step: the per-copy price) and `driver` (the same through the driver API,
cuMemcpyHtoDAsync_v2 and cuStreamSynchronize, as JAX/XLA makes them), `hf` (one transformers `generate`
request of tests/workloads/hf_generate.py per step, its arguments after `--`, e.g. `-- --new-tokens 8`).
Needs a GPU.

Configs named `NAME-driver` record runtime calls only, without the kept driver calls (the default
records both, a driver call inside a recorded runtime call once): `--workload copy --configs
off,default,default-driver` is what driver coverage adds to a runtime copy (its nested driver call's
callback), `--workload driver` the same configs what recording a driver call costs.

    python benchmarks/cupti_inprocess.py --workload serve --rounds 30 --cpus 2-5

With `--bridge SPEC` the run is recorded with `--emulate-bridge SPEC`, and configs named `NAME+bridge`
have the emulator acting (stopped in the others): `--bridge toll_us=0,bw_ratio=1,serialize=off,async_block=off
--configs off,off+bridge,default,default+bridge` is the emulator's own cost, in one process.

Config `interposer` detaches CUPTI for the block and has the preloaded driver interposer record the host calls
instead (the run is recorded with `--interpose on`; the other blocks have it switched off): against `detached`,
what the CUPTI-free mode costs, and `interposer+stacks` with call sites.

Configs named `NAME+stacks` capture the calling thread's Python stack with each recorded call (off in
the others): `--configs off,default,default+stacks,default+kernel,default+kernel+stacks` is what call
sites cost (with `--workload copy`, per call).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _serve import median_ci, pinned, recorded

from cctrace.record import tracer as T
from cctrace.record.sources.interposer import RECORDING_MODES

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = T.DEFAULT_KINDS
ALL = (*DEFAULT, "overhead", "sync", "kernel", "nvtx")  # every kind a config below switches
# "interposer": CUPTI detached (as `detached`) and the preloaded driver interposer recording the host calls
# (run with `record --interpose on`; every other block has it switched off): what the interposer costs
INTERPOSER = "interposer"
CONFIGS: dict[str, tuple[str, ...]] = {
    "off": (),
    "memcpy": ("memcpy",),
    "memset+memcpy2": ("memset", "memcpy2"),
    "memory": ("memory",),
    "runtime": ("runtime",),
    "overhead": ("overhead",),
    "sync": ("sync",),
    "kernel": ("kernel",),
    "nvtx": ("nvtx",),
    "default": DEFAULT,
    "default-memory": tuple(k for k in DEFAULT if k != "memory"),
    "default-runtime": tuple(k for k in DEFAULT if k != "runtime"),
    "default+kernel": (*DEFAULT, "kernel"),
    "default+kernel+nvtx": (*DEFAULT, "kernel", "nvtx"),
    "default-driver": DEFAULT,  # runtime calls without the kept driver calls (NO_DRIVER)
    "runtime-driver": ("runtime",),
    "detached": (),  # CUPTI finalized for the block (Switch.set_detached), not just every kind off
    "none": (),  # with fresh: CUPTI attached (buffer callbacks registered), no kind, no subscription
    "activity": tuple(k for k in DEFAULT if k != "runtime"),  # the default's GPU records, no subscription
    INTERPOSER: (),
}
DETACHED = "detached"
# "fresh:NAME" finalizes CUPTI and attaches it again with only NAME's kinds, so nothing a kind once
# switched on stays behind: the callback subscription exists only when NAME has "runtime". Against
# `detached`, `fresh:none` is what attaching alone costs, `fresh:activity` the GPU records without
# any API callback, `fresh:runtime` the callback subscription alone.
FRESH = "fresh:"
NO_DRIVER = "-driver"
# with --bridge SPEC, "NAME+bridge" runs config NAME with the bridge emulator acting (else it is off)
BRIDGED = "+bridge"
# "NAME+stacks" runs config NAME with Python stacks captured for each recorded call (else they are off)
STACKS = "+stacks"


def parse_config(c: str) -> tuple[str, bool, bool]:
    """(kinds config, bridge acting, stacks on) of a config name such as default+kernel+stacks."""
    bridge = stacks = False
    while c.endswith((BRIDGED, STACKS)):
        bridge |= c.endswith(BRIDGED)
        stacks |= c.endswith(STACKS)
        c = c.removesuffix(BRIDGED).removesuffix(STACKS)
    return c, bridge, stacks


CALLS_PER_STEP = {"launch": 100, "copy": 10, "driver": 10}
# runtime calls recorded per step (each with a stack when stacks are on): the copies or launches and
# the step's torch.cuda.synchronize() (launches are recorded with the kernel kind only)
RECORDED_PER_STEP = {"launch": 101, "copy": 11}


# ---- inside the traced process ------------------------------------------------------------
def _workload(name: str, serve_args: list[str]):
    import torch

    if name == "serve":
        sys.path.insert(0, str(ROOT / "examples"))
        import serve

        srv = serve.Server(serve.parse_args(serve_args))
        return srv.step
    if name == "hf":
        sys.path.insert(0, str(ROOT / "tests" / "workloads"))
        import hf_generate

        request = hf_generate.make_request(hf_generate.parse_args(serve_args))

        def hf_step(_i: int) -> None:
            with torch.inference_mode():
                request()

        return hf_step
    x = torch.zeros(1, device="cuda")
    if name == "launch":

        def step(_i: int) -> None:
            for _ in range(100):
                x.add_(1)
            torch.cuda.synchronize()

        return step
    host = [torch.arange(8, dtype=torch.int64).pin_memory() for _ in range(10)]
    dev = [torch.empty(8, dtype=torch.int64, device="cuda") for _ in range(10)]
    if name == "driver":
        import ctypes

        cu = ctypes.CDLL("libcuda.so.1")
        cu.cuMemcpyHtoDAsync_v2.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        cu.cuStreamSynchronize.argtypes = [ctypes.c_void_p]
        stream = torch.cuda.current_stream().cuda_stream
        pairs = [(d.data_ptr(), h.data_ptr()) for h, d in zip(host, dev, strict=True)]

        def driver_step(_i: int) -> None:
            for d, h in pairs:
                if cu.cuMemcpyHtoDAsync_v2(d, h, 64, stream) != 0:
                    raise SystemExit("cuMemcpyHtoDAsync_v2 failed")
            cu.cuStreamSynchronize(stream)

        return driver_step

    def copy_step(_i: int) -> None:
        for h, d in zip(host, dev, strict=True):
            d.copy_(h, non_blocking=True)
        torch.cuda.synchronize()

    return copy_step


class Switch:
    """Puts the live tracer's CUPTI source into one configuration of kinds."""

    def __init__(self) -> None:
        from cctrace.record import tracer
        from cctrace.record.sources.cupti_source import activity_kinds

        t = tracer._active
        src = t.sources.get("cupti") if t else None
        if src is None or t.cupti_status != "active":
            raise SystemExit(f"CUPTI is not active in this process ({t.cupti_status if t else 'no tracer'})")
        self.src = src
        self.cupti = src._cupti
        self.kind = activity_kinds(self.cupti)
        self.on = set(src.enabled)
        self.launches = True  # started with every kind, kernel included
        self.driver = True
        missing = set(ALL) - self.on
        if missing:
            raise SystemExit(f"kinds not enabled at start: {sorted(missing)}")
        self.tracer = t
        self.detached = False
        self.fresh: tuple[str, ...] | None = None  # the kinds of a fresh attach now in place
        self.bridge = t.sources.get("bridge")
        self.bridge_on = self.bridge is not None
        self.stacks_state = src.stacks.get("state")
        ip = t.sources.get("interposer")  # recording with `record --interpose on` (an interposer config asked)
        self.ip = ip if ip is not None and ip.mode in RECORDING_MODES else None  # standby (auto) never records

    def set_interposer(self, on: bool, stacks: bool = False) -> None:
        """The interposer recording (and capturing stacks) or calling straight through."""
        if self.ip is None:
            if on:
                raise SystemExit("the interposer is not recording in this process")
            return
        self.ip.window(on)
        if self.ip.lib.cct_ip_active() != int(on):
            raise SystemExit(f"the interposer did not switch {'on' if on else 'off'}")
        if self.ip.stacks.get("state") == "on":
            self.ip.lib.cct_stacks_enable(1 if on and stacks else 0)
        elif on and stacks:
            raise SystemExit(f"interposer stacks cannot be switched on here: {self.ip.stacks.get('state')}")

    def restore(self, poke) -> None:
        """Leave the process as it started: every kind on, the bridge acting, stacks and the interposer as
        the run asked."""
        if self.fresh is not None:  # set() below needs the attach the run started with (its callback hub)
            self.set_fresh(None, poke)
        self.set_detached(False)
        self.set(tuple(ALL))
        self.set_bridge(True)
        self.set_stacks(self.stacks_state == "on")
        self.set_interposer(self.ip is not None, self.ip is not None and self.ip.stacks.get("state") == "on")

    def set_detached(self, detached: bool) -> None:
        """CUPTI out of the process (the tracer's own detach, flusher asleep), or back with every kind."""
        if detached == self.detached:
            return
        if detached:
            # no CUDA call returns while this thread waits: the settle steps' first call finalizes
            self.tracer.set_attached(False, wait_s=0.001)
        else:
            errors = len(self.src.errors)
            self.tracer.set_attached(True)
            if len(self.src.errors) > errors:
                raise SystemExit(f"attaching CUPTI again failed: {self.src.errors[errors:]}")
            self.on = set(self.src.enabled)  # attach() turned the kinds the run started with back on
            self.launches = self.driver = True
            self.fresh = None
        self.detached = detached

    def set_fresh(self, kinds: tuple[str, ...] | None, poke) -> None:
        """CUPTI finalized, then attached again with only `kinds` (None: every kind the run started
        with). `poke` makes a CUDA call, whose exit finalizes CUPTI."""
        if kinds == self.fresh and not self.detached:
            return
        if not self.detached:
            self.set_detached(True)
            poke()
            self.check_detached()
        saved = self.src.kinds
        self.src.kinds = list(kinds) if kinds is not None else saved
        try:
            self.set_detached(False)
        finally:
            self.src.kinds = saved
        self.fresh = kinds

    def check_detached(self) -> None:
        """After the settle steps: CUPTI was really finalized (else the figure would not be 'detached')."""
        health = self.src.detach_health()
        if health.get("finalized", 0) < health["detaches"]:
            raise SystemExit(f"CUPTI was not finalized in a detached block: {health}")

    def set_stacks(self, on: bool) -> None:
        if on and self.stacks_state != "on":
            raise SystemExit(f"stacks cannot be switched on here: {self.stacks_state}")
        self.src.stacks_on(on)

    def set_bridge(self, on: bool) -> None:
        if self.bridge is None or on == self.bridge_on:
            return
        if on:
            self.bridge.start()
        else:
            self.bridge.stop()
        self.bridge_on = on

    def set(self, kinds: tuple[str, ...], driver: bool = True) -> None:
        """These kinds on, the others off; `driver`: the kept driver calls recorded with the runtime ones."""
        want = set(kinds)
        for name in ALL:
            if name == "runtime":
                continue
            if name in want and name not in self.on:
                self.cupti.activity_enable(self.kind[name])
            elif name not in want and name in self.on:
                self.cupti.activity_disable(self.kind[name])
        launches = "kernel" in want
        if "runtime" in want and ("runtime" not in self.on or (launches, driver) != (self.launches, self.driver)):
            self.src.runtime_on(launches, driver)  # launch calls kept with kernels, as `record --kinds ...,kernel`
            self.launches, self.driver = launches, driver
        elif "runtime" not in want and "runtime" in self.on:
            self.src.runtime_off()
        self.on = want


def enter_block(switch: Switch, c: str, poke) -> str:
    """Put the process into config `c` for a block; its kinds config. `poke` makes a CUDA call."""
    kinds, bridged, stacks = parse_config(c)
    if kinds in (DETACHED, INTERPOSER):
        switch.set_detached(True)
    elif kinds.startswith(FRESH):
        switch.set_fresh(CONFIGS[kinds.removeprefix(FRESH)], poke)
        switch.set_stacks(stacks)  # else capture stays as the block before left it
    else:
        if switch.fresh is not None:
            switch.set_fresh(None, poke)
        switch.set_detached(False)
        switch.set(CONFIGS[kinds], driver=not kinds.endswith(NO_DRIVER))
        switch.set_bridge(bridged)
        switch.set_stacks(stacks)
    # last: attaching or detaching CUPTI switches the interposer with it (a tracing window's edge)
    switch.set_interposer(kinds == INTERPOSER, stacks)
    return kinds


def inner(a: argparse.Namespace) -> None:
    import torch

    step = _workload(a.workload, a.serve_args)
    switch = Switch()
    configs = a.configs.split(",")
    i = 0
    for _ in range(a.warmup):
        step(i)
        i += 1
    torch.cuda.synchronize()
    rng = random.Random(a.seed)
    blocks: dict[str, list[float]] = {c: [] for c in configs}
    t_start = time.perf_counter()
    for r in range(a.rounds):
        order = configs[:]
        rng.shuffle(order)
        for c in order:
            kinds = enter_block(switch, c, torch.cuda.synchronize)
            for _ in range(a.settle):
                step(i)
                i += 1
            torch.cuda.synchronize()
            if kinds in (DETACHED, INTERPOSER):
                switch.check_detached()
            durations = []
            for _ in range(a.block):
                t0 = time.perf_counter()
                torch.cuda.nvtx.range_push(f"step {i}")
                step(i)
                torch.cuda.nvtx.range_pop()
                durations.append(time.perf_counter() - t0)
                i += 1
            torch.cuda.synchronize()
            blocks[c].append(1e3 * statistics.median(durations))
        print(f"round {r + 1}/{a.rounds} done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
    switch.restore(torch.cuda.synchronize)
    print("INPROCESS_SUMMARY " + json.dumps({"workload": a.workload, "block_ms": blocks}), flush=True)


# ---- the driver ---------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _against(ms: list[float], ref: list[float], per_call: int | None) -> dict:
    """Per-round ratios of block medians `ms` to the same round's `ref`: median and spread."""
    ratios = [100 * (m / o - 1) for m, o in zip(ms, ref, strict=True)]
    added_us = [1e3 * (m - o) for m, o in zip(ms, ref, strict=True)]
    row = {
        "median_step_ms": statistics.median(ms),
        "slowdown_pct": statistics.median(ratios),
        "p25_pct": _pct(ratios, 0.25),
        "p75_pct": _pct(ratios, 0.75),
        "ci95_pct": list(median_ci(ratios)),
        "added_us_per_step": statistics.median(added_us),
    }
    if per_call:
        row["added_us_per_call"] = row["added_us_per_step"] / per_call
    return row


def table(summary: dict, base: str = "off") -> list[dict]:
    """Every config against `base`, round by round ('off': kinds off, CUPTI attached; 'detached')."""
    blocks = summary["block_ms"]
    per_call = CALLS_PER_STEP.get(summary["workload"])
    return [{"config": c, **_against(ms, blocks[base], per_call)} for c, ms in blocks.items()]


def stacks_table(summary: dict) -> list[dict]:
    """What Python stacks add: each NAME+stacks config against NAME, round by round (per call: per
    recorded runtime call)."""
    blocks = summary["block_ms"]
    per_call = RECORDED_PER_STEP.get(summary["workload"])
    return [
        {"config": c, "against": c.removesuffix(STACKS), **_against(ms, blocks[c.removesuffix(STACKS)], per_call)}
        for c, ms in blocks.items()
        if c.endswith(STACKS) and c.removesuffix(STACKS) in blocks
    ]


def _summary_line(cmd: list[str], env: dict | None) -> tuple[str | None, int | None, str]:
    """Run the traced process until it prints its summary, then kill it: decoding the millions of
    records a launch-heavy run leaves is not what is being measured (and takes minutes)."""
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    tail: list[str] = []
    try:
        for line in p.stdout:  # type: ignore[union-attr]
            if line.startswith("INPROCESS_SUMMARY "):
                return line.strip(), None, ""
            tail = [*tail[-40:], line]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return None, p.returncode, "".join(tail)


def outer(a: argparse.Namespace) -> int:
    configs = a.configs.split(",")
    unknown = [c for c in configs if parse_config(c)[0].removeprefix(FRESH) not in CONFIGS]
    if not a.bridge and any(parse_config(c)[1] for c in configs):
        sys.exit(f"configs ending in {BRIDGED} need --bridge SPEC")
    if a.bridge and any(parse_config(c)[0] in (DETACHED, INTERPOSER) or c.startswith(FRESH) for c in configs):
        sys.exit(
            f"configs {DETACHED} and {FRESH}NAME cannot run with --bridge (the emulator acts through CUPTI's subscription)"
        )
    if unknown or not {"off", DETACHED} & set(configs):
        sys.exit(
            f"--configs must name 'off' or '{DETACHED}' (a baseline) and only known configs ({', '.join(CONFIGS)}); "
            f"unknown: {unknown}"
        )
    with tempfile.TemporaryDirectory(prefix="cct-inproc-") as tmp:
        inner_cmd = [
            sys.executable, __file__, "--inner", "--workload", a.workload, "--rounds", str(a.rounds),
            "--block", str(a.block), "--settle", str(a.settle), "--warmup", str(a.warmup),
            "--configs", a.configs, "--seed", str(a.seed), "--", *a.serve_args,
        ]  # fmt: skip
        opts = ["--kinds", ",".join(ALL), *(["--emulate-bridge", a.bridge] if a.bridge else [])]
        if any(parse_config(c)[0] == INTERPOSER for c in configs):
            opts += ["--interpose", "on"]
        cmd = recorded(inner_cmd, f"{tmp}/t", opts)
        env = dict(os.environ, CCTRACE_RUNTIME_ACTIVITY="1") if a.runtime_activity else None
        line, rc, tail = _summary_line(pinned(cmd, a.cpus), env)
    if line is None:
        sys.stderr.write(tail)
        sys.exit(f"the traced run failed (exit {rc})")
    summary = json.loads(line.split(" ", 1)[1])
    rows = table(summary) if "off" in summary["block_ms"] else []
    stacks = stacks_table(summary)
    vs_detached = table(summary, DETACHED) if DETACHED in summary["block_ms"] else []
    result = {"workload": a.workload, "rounds": a.rounds, "block": a.block, "rows": rows, "stacks": stacks, **summary}
    result["vs_detached"] = vs_detached
    if os.environ.get("OUT"):  # the GPU machine's results folder
        Path(os.environ["OUT"], f"cupti_inprocess-{a.workload}.json").write_text(json.dumps(result, indent=1))
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"workload {a.workload}: {a.rounds} rounds x {a.block}-step blocks per config, one process")
    if rows:
        _print_rows(rows, a.workload, "against 'off' (every kind off, CUPTI attached)")
    if vs_detached:
        _print_rows(vs_detached, a.workload, "against 'detached' (CUPTI finalized, flusher asleep)")
    for r in stacks:
        per_call = f", {r['added_us_per_call']:+.3f} us per recorded call" if "added_us_per_call" in r else ""
        print(
            f"stacks on {r['against']}: {r['slowdown_pct']:+.2f}% (p25..p75 {r['p25_pct']:+.2f}..{r['p75_pct']:+.2f}%, "
            f"median's 95% CI {r['ci95_pct'][0]:+.2f}..{r['ci95_pct'][1]:+.2f}%), "
            f"{r['added_us_per_step']:+.1f} us per step{per_call}"
        )
    return 0


def _print_rows(rows: list[dict], workload: str, title: str) -> None:
    print(title)
    head = f"{'config':<22}{'median step ms':>15}{'slowdown':>10}{'p25..p75':>18}{'95% CI':>18}{'added us/step':>15}"
    print(head + (f"{'us/call':>9}" if workload in CALLS_PER_STEP else ""))
    for r in rows:
        line = (
            f"{r['config']:<22}{r['median_step_ms']:>15.4f}{r['slowdown_pct']:>9.1f}%"
            f"{r['p25_pct']:>8.1f}..{r['p75_pct']:>5.1f}%{r['ci95_pct'][0]:>10.1f}..{r['ci95_pct'][1]:>5.1f}%"
            f"{r['added_us_per_step']:>15.1f}"
        )
        if "added_us_per_call" in r:
            line += f"{r['added_us_per_call']:>9.3f}"
        print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workload", choices=("serve", "hf", "launch", "copy", "driver"), default="serve")
    p.add_argument("--rounds", type=int, default=20, help="rounds; each runs every config once")
    p.add_argument("--block", type=int, default=300, help="timed steps per config per round")
    p.add_argument("--settle", type=int, default=20, help="untimed steps after each switch")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from: {', '.join(CONFIGS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", help="pin the run to these CPUs (taskset -c)")
    p.add_argument(
        "--runtime-activity",
        action="store_true",
        help="record runtime calls with CUPTI's RUNTIME activity kind instead of the shim's callbacks",
    )
    p.add_argument(
        "--bridge",
        metavar="SPEC",
        help=f"record with --emulate-bridge SPEC; the emulator acts only in configs named NAME{BRIDGED}",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("serve_args", nargs="*", help="serve.py arguments (after --)")
    a = p.parse_args(argv)
    if a.inner:
        inner(a)
        return 0
    return outer(a)


if __name__ == "__main__":
    sys.exit(main())
