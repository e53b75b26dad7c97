"""Synthetic traces with known, injected amounts per category, written through the real shard
writer and loaded by the real loader. Every number a test checks is computed here from the spec.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cctrace.analyze.store import load
from cctrace.trace.shards import ShardWriter

US = 1000
PID, TID = 4242, 4243
COPY = (
    "pid",
    "op",
    "copy_kind",
    "src_kind",
    "dst_kind",
    "bytes",
    "start_ns",
    "end_ns",
    "device_id",
    "context_id",
    "stream_id",
    "correlation_id",
    "is_async",
    "source",
)
API = ("pid", "tid", "name", "domain", "start_ns", "end_ns", "correlation_id", "return_value", "source")
KERNEL = ("pid", "name", "start_ns", "end_ns", "device_id", "context_id", "stream_id", "correlation_id", "source")
MARKER = ("pid", "tid", "name", "domain", "start_ns", "end_ns", "source")
ALLOC = (
    "pid",
    "op",
    "memory_kind",
    "bytes",
    "address",
    "ts_ns",
    "device_id",
    "context_id",
    "stream_id",
    "correlation_id",
    "is_async",
    "source",
)
SYNC = ("pid", "sync_type", "start_ns", "end_ns", "context_id", "stream_id", "correlation_id", "event_id", "source")
STACK = ("pid", "stack_id", "depth", "file", "line", "function", "is_callsite", "source")
# The Python line behind each kind of call: stack id = the app's line number in APP; inside each stack
# a framework frame (depth 0) sits below the call site (depth 1) and the script's main (depth 2).
APP, FRAMEWORK = "/srv/app/serve.py", "/venv/site-packages/torch/_tensor.py"
SITES = {"small": 101, "large": 102, "streams": 103, "stall": 104, "alloc": 105, "alloc_copy": 106, "readback": 107,
         "sync": 108}  # fmt: skip


@dataclass
class Spec:
    steps: int = 50
    toll_ns: int = 40 * US  # fixed cost of every crossing
    bytes_per_ns: float = 20.0  # 20 GB/s
    small_per_step: int = 6
    small_bytes: int = 256
    streams: int = 3  # copies issued together on this many streams, serialized by the bridge
    stream_copy_bytes: int = 2 << 20
    stalls_per_step: int = 2
    stall_ns: int = 300 * US  # how long each async launch blocks beyond its normal cost
    normal_call_ns: int = 5 * US
    allocs_per_step: int = 1
    alloc_call_ns: int = 100 * US
    alloc_copy_call_ns: int = 30 * US
    readback_ns: int = 50 * US
    sync_ns: int = 20 * US
    kernels: bool = True
    # tracing windows: after step `detach_after` (0-based) tracing stops for `untraced_ns` (the steps
    # go on meanwhile, unrecorded); each window opens `margin_ns` before its first event and closes
    # that long after its last (the GPU is idle there)
    detach_after: int | None = None
    untraced_ns: int = 0
    margin_ns: int = 0
    # step index -> host time in that step with nothing recorded (the host or another tenant held it up)
    pause_ns: dict[int, int] = field(default_factory=dict)
    # step index -> blocking launches in that step beyond stalls_per_step (a step slowed by crossings)
    extra_stalls: dict[int, int] = field(default_factory=dict)
    truth: dict = field(default_factory=dict)

    def dur(self, nbytes: int) -> int:
        return round(self.toll_ns + nbytes / self.bytes_per_ns)


def _stacks() -> list[tuple]:
    rows = []
    for line in SITES.values():
        rows.append((PID, line, 0, FRAMEWORK, 77, "Tensor.to", False, "synthetic"))
        rows.append((PID, line, 1, APP, line, f"Server.line{line}", True, "synthetic"))
        rows.append((PID, line, 2, APP, 300, "main", False, "synthetic"))
    return rows


def generate(out: Path, spec: Spec) -> Spec:
    """Write a trace into `out` and load it; returns the spec with `truth` filled in."""
    out = Path(out)
    w = ShardWriter(out, PID)
    copies, apis, kernels, markers, allocs, syncs = [], [], [], [], [], []
    cid = [1000]
    truth = {
        "small_count": 0,
        "small_excess_ns": 0,
        "stream_wait_ns": 0,
        "stall_count": 0,
        "stall_ns": 0,
        "alloc_pairs": 0,
        "alloc_copy_ns": 0,
        "sync_ns": 0,
        "idle_stall_ns": 0,
    }

    def api(name, start, dur, site=None):
        cid[0] += 1
        apis.append((PID, TID, name, "runtime", start, start + dur, cid[0], 0, "synthetic", SITES.get(site)))
        return cid[0]

    def copy(kind, src, dst, nbytes, start, stream, corr, dur=None):
        d = spec.dur(nbytes) if dur is None else dur
        copies.append((PID, "memcpy", kind, src, dst, nbytes, start, start + d, 0, 1, stream, corr, True, "synthetic"))
        return start + d

    t = 1_000_000_000
    windows = [[t - spec.margin_ns, None]]
    for step in range(spec.steps):
        if step and step - 1 == spec.detach_after:
            windows[-1][1] = t + spec.margin_ns
            t += spec.untraced_ns
            windows.append([t - spec.margin_ns, None])
        s0 = t
        busy_until, idle = t, []  # GPU idle windows: only while the host is stuck in a stall
        # 1. small H2D crossings, 5 us calls, 100 us apart
        for i in range(spec.small_per_step):
            a = t + i * 100 * US
            c = api("cudaMemcpyAsync", a, spec.normal_call_ns, "small")
            copy("HtoD", "pinned", "device", spec.small_bytes, a + 2 * US, 7, c)
            truth["small_count"] += 1
            truth["small_excess_ns"] += spec.dur(spec.small_bytes) - spec.small_bytes / spec.bytes_per_ns
        t += spec.small_per_step * 100 * US
        # 2. one large copy per step: lets the model fit the bandwidth
        c = api("cudaMemcpyAsync", t, spec.normal_call_ns, "large")
        t = copy("HtoD", "pinned", "device", 8 << 20, t + 2 * US, 7, c) + 10 * US
        # 3. copies issued together on k streams, run one after another
        end = t
        for k in range(spec.streams):
            c = api(
                "cudaMemcpyAsync", t + k * 100, spec.normal_call_ns, "streams"
            )  # issued within 0.1 us of each other
            start = t + 2 * US + k * spec.dur(spec.stream_copy_bytes)
            end = copy("HtoD", "pinned", "device", spec.stream_copy_bytes, start, 20 + k, c)
            truth["stream_wait_ns"] += k * spec.dur(spec.stream_copy_bytes) - 0  # covered by earlier streams
        # the k-th copy was ready at its issue time t + k*100 ns; the wait beyond 2 us launch delay
        # is covered by the other streams' copies: sum of the earlier copies' durations
        t = end + 10 * US
        # 4. async launches that block: GPU idle meanwhile
        for _ in range(spec.stalls_per_step + spec.extra_stalls.get(step, 0)):
            dur = spec.normal_call_ns + spec.stall_ns
            api("cudaLaunchKernel", t, dur, "stall")
            if spec.stall_ns:
                truth["stall_count"] += 1
                truth["stall_ns"] += spec.stall_ns
                idle.append((t + spec.normal_call_ns, t + dur))
                truth["idle_stall_ns"] += spec.stall_ns
            t += dur + 5 * US
        # 5. alloc then copy into it
        for _ in range(spec.allocs_per_step):
            c = api("cudaMalloc", t, spec.alloc_call_ns, "alloc")
            allocs.append(
                (PID, "alloc", "device", 4096, 0x7F0000000000 + t, t + 10 * US, 0, 1, 0, c, False, "synthetic")
            )
            a = t + spec.alloc_call_ns + 5 * US
            c2 = api("cudaMemcpyAsync", a, spec.alloc_copy_call_ns, "alloc_copy")
            copy("HtoD", "pageable", "device", 4096, a + 2 * US, 7, c2)
            truth["alloc_pairs"] += 1
            truth["alloc_copy_ns"] += spec.alloc_call_ns + spec.alloc_copy_call_ns
            t = a + spec.alloc_copy_call_ns + 10 * US
        t += spec.pause_ns.get(step, 0)  # nothing recorded: the host was held up
        # 6. blocking readback and a stream sync
        c = api("cudaMemcpyAsync", t, spec.readback_ns, "readback")
        copy("DtoH", "device", "pageable", 128, t + spec.readback_ns - 3 * US, 7, c, dur=3 * US)
        truth["sync_ns"] += spec.readback_ns
        t += spec.readback_ns + 5 * US
        c = api("cudaStreamSynchronize", t, spec.sync_ns, "sync")
        syncs.append((PID, "stream", t, t + spec.sync_ns, 1, 7, c, -1, "synthetic"))
        truth["sync_ns"] += spec.sync_ns
        t += spec.sync_ns + 20 * US
        # kernels cover the step except the stall windows (GPU idle only while the host is stuck)
        if spec.kernels:
            cursor = busy_until
            for a, b in [*idle, (t, t)]:
                if a > cursor:
                    kernels.append((PID, "k", cursor, a, 0, 1, 7, 0, "synthetic"))
                cursor = max(cursor, b)
        # noise: calls that belong to no category
        api("cudaGetDevice", s0 + 1 * US, 1 * US)
        markers.append((PID, TID, f"step {step}", "", s0, t, "synthetic"))
    for table, cols, rows in (
        ("copies", COPY, copies),
        ("api_calls", (*API, "stack_id"), apis),
        ("stacks", STACK, _stacks()),
        ("kernels", KERNEL, kernels),
        ("markers", MARKER, markers),
        ("allocs", ALLOC, allocs),
        ("syncs", SYNC, syncs),
    ):
        w.extend(table, cols, rows)
    w.close()
    windows[-1][1] = t + spec.margin_ns
    proc = {"pid": PID, "ppid": 1, "argv": ["synthetic"], "start_ns": 0, "end_ns": t, "cupti": "synthetic"}
    manifest: dict = {"command": ["synthetic"], "processes": [proc]}
    if spec.detach_after is not None:
        proc["windows"] = windows
        manifest |= {"start_ns": 0, "end_ns": t + 2 * spec.margin_ns, "options": {"window": {"windows": windows}}}
        truth["windows"] = windows
    (out / "manifest.json").write_text(json.dumps(manifest))
    load(out)
    step_ns = [m[5] - m[4] for m in markers]
    truth["step_ns"] = sum(step_ns) / len(step_ns)
    spec.truth = truth
    return spec


# ---- loops without NVTX: what step detection must find ------------------------------------------


class Loop:
    """A trace of one thread's calls, copies and kernels written call by call, for the step detectors:
    each helper appends one call (with its copy when it has one) at the running clock and advances it."""

    def __init__(self, pid: int = PID, tid: int = TID, domain: str = "runtime", launch_calls: bool = True) -> None:
        self.pid, self.tid, self.domain = pid, tid, domain
        self.launch_calls = launch_calls  # False: as without --kernels, launches are not recorded calls
        self.stack: int | None = None  # the Python stack of the calls made now
        self.t = 1_000_000_000
        self.cid = 0
        self.apis: list[tuple] = []
        self.copies: list[tuple] = []
        self.kernels: list[tuple] = []
        self.markers: list[tuple] = []
        self.injections: list[tuple] = []
        self.windows: list[list[int]] = [[self.t, self.t]]  # tracing windows: more than one after detach()

    def call(self, name: str, dur: int = 5 * US, tid: int | None = None, domain: str | None = None) -> int:
        self.cid += 1
        row = (self.pid, tid or self.tid, name, domain or self.domain, self.t, self.t + dur, self.cid, 0, "synthetic")
        row += (self.stack,)
        self.apis.append(row)
        self.t += dur + 2 * US
        return self.cid

    def copy(
        self, name: str, kind: str, host: str, nbytes: int, dur: int = 8 * US, corr: int | None = None, toll: int = 0
    ) -> int:
        """A copy call and its copy (the copy runs inside the call); `corr`: a copy issued by an earlier
        call; `toll`: host time the bridge emulator injected before the copy (written as an injection)."""
        start = self.t
        c = corr if corr is not None else self.call(name, dur + toll)
        src, dst = (host, "device") if kind == "HtoD" else ("device", host)
        t0 = start + US + toll
        self.copies.append((self.pid, "memcpy", kind, src, dst, nbytes, t0, t0 + 2 * US, 0, 1, 7, c, True, "synthetic"))
        if toll:
            d = "h2d" if kind == "HtoD" else "d2h"
            self.injections.append((self.pid, self.tid, start + US, toll, "toll", d, nbytes, name, c, "emulator"))
        return c

    def launches(self, n: int, kernel_ns: int = 20 * US) -> None:
        for _ in range(n):
            if self.launch_calls:
                c = self.call("cudaLaunchKernel" if self.domain == "runtime" else "cuLaunchKernel", 3 * US)
            else:
                self.cid += 1
                c = self.cid
                self.t += 5 * US
            self.kernels.append((self.pid, "k", self.t, self.t + kernel_ns, 0, 1, 7, c, "synthetic"))

    def idle(self, ns: int) -> None:
        self.t += ns

    def detach(self, ns: int) -> None:
        """Tracing stops for `ns` (a tracing window closes now and the next opens `ns` later)."""
        self.windows[-1][1] = self.t
        self.t += ns
        self.windows.append([self.t, self.t])

    def write(self, out: Path, command: str = "synthetic-loop") -> Path:
        out = Path(out)
        w = ShardWriter(out, self.pid)
        for table, cols, rows in (
            ("api_calls", (*API, "stack_id"), self.apis),
            ("copies", COPY, self.copies),
            ("kernels", KERNEL, self.kernels),
            ("markers", MARKER, self.markers),
            ("bridge_injections", INJECTION, self.injections),
        ):
            if rows:
                w.extend(table, cols, rows)
        w.close()
        manifest: dict = {"command": [command], "processes": []}
        if len(self.windows) > 1:
            self.windows[-1][1] = self.t
            manifest["processes"] = [{"pid": self.pid, "argv": [command], "start_ns": 0, "windows": self.windows}]
        (out / "manifest.json").write_text(json.dumps(manifest))
        load(out)
        return out


INJECTION = ("pid", "tid", "ts_ns", "ns", "kind", "direction", "bytes", "call", "correlation_id", "source")


def serve_loop(
    steps: int = 300, warmup: int = 1, toll: int = 0, jitter: int = 0, seed: int = 0, detach_at: tuple[int, ...] = ()
) -> Loop:
    """serve.py without NVTX: 3 small H2D, launches, a 128 B pageable readback (.tolist()) per step;
    every 25th step a 4 MiB pinned D2H swap completed by a stream sync. Steps: the readbacks' intervals.
    `toll`: injected before each small H2D copy; `jitter`: up to this much idle time added per step;
    `detach_at`: iterations before which tracing stops for 50 ms (a detach: those iterations' steps,
    between the last readback before it and the first after, span untraced time)."""
    import random

    rng = random.Random(seed)
    lp = Loop()
    for i in range(warmup + steps):
        if i in detach_at:
            lp.detach(50_000 * US)
        for n in (128, 64, 4096):
            lp.copy("cudaMemcpyAsync", "HtoD", "pageable", n, toll=toll)
        lp.launches(6)
        if i % 25 == 0:
            lp.copy("cudaMemcpyAsync", "DtoH", "pinned", 4 << 20)
            lp.call("cudaStreamSynchronize", 40 * US)
        lp.copy("cudaMemcpyAsync", "DtoH", "pageable", 128, dur=60 * US)
        lp.idle(100 * US + (rng.randrange(jitter) if jitter else 0))
    return lp


def hf_generate_loop(requests: int = 6, tokens: int = 64, mask_every: int = 3, launch_calls: bool = True) -> Loop:
    """HF generate: each forward ends in the stopping check, a 1-byte pinned D2H + cudaStreamSynchronize
    (.item()); all forwards but every `mask_every`-th (1: every forward, as transformers 4.5x does) also
    read back a mask check early on (the same 1-byte signature);
    each request starts with an eos check readback. Steps: the stopping checks' intervals (their Python
    stack, or without launch calls recorded their context, the calls since the previous readback, tells
    them from the mask checks). Stacks: 1 eos check, 2 mask check, 3 stopping check (with launch_calls
    off; none otherwise)."""
    lp = Loop(launch_calls=launch_calls)

    def item(wait: int, stack: int) -> None:
        lp.stack = None if launch_calls else stack
        lp.copy("cudaMemcpyAsync", "DtoH", "pinned", 1)
        lp.call("cudaStreamSynchronize", wait)
        lp.stack = None

    for _ in range(requests):
        lp.copy("cudaMemcpyAsync", "HtoD", "pageable", 8 * 32)
        item(10 * US, 1)  # eos check
        for tok in range(tokens):
            lp.launches(3)
            if mask_every == 1 or tok % mask_every:
                item(30 * US, 2)  # mask check, early in the forward
            lp.launches(24)
            item(400 * US, 3)  # stopping check: waits for the forward
            lp.idle(150 * US)
        lp.copy("cudaMemcpyAsync", "DtoH", "pageable", 8 * 96)
        lp.idle(3_000 * US)
    return lp


def jax_loop(steps: int = 200, warmup: int = 1, correlate: bool = True) -> Loop:
    """A JAX jit loop: driver calls only: H2D (pageable) then cuStreamSynchronize, launches, a pinned D2H
    completed by cuEventSynchronize. Steps: the readbacks' intervals. `correlate`=False: the copies
    were not recorded (only the driver syncs mark the loop)."""
    lp = Loop(domain="driver")
    for _ in range(warmup + steps):
        if correlate:
            lp.copy("cuMemcpyHtoDAsync_v2", "HtoD", "pageable", 8 * 512 * 4)
            lp.call("cuStreamSynchronize", 10 * US)
            lp.launches(4)
            lp.copy("cuMemcpyDtoHAsync_v2", "DtoH", "pinned", 32)
        else:
            lp.call("cuMemcpyHtoDAsync_v2")
            lp.call("cuStreamSynchronize", 10 * US)
            lp.launches(4)
            lp.call("cuMemcpyDtoHAsync_v2")
        lp.call("cuEventSynchronize", 200 * US)
        lp.idle(300 * US)
    return lp


def graph_loop(replays: int = 150, warmup: int = 3, toll: int = 0) -> Loop:
    """A CUDA-graph replay loop: eager warm-up steps (pinned H2D and D2H, no sync each) and one device
    sync, then replays: cudaGraphLaunch (its memcpy nodes are copies with the launch's correlation id)
    and a stream sync. Steps: the replays' intervals. `toll`: what the emulated bridge adds to each
    memcpy node, paid inside the launch call (written as injections)."""
    lp = Loop()
    for _ in range(warmup):
        lp.copy("cudaMemcpyAsync", "HtoD", "pinned", 4096)
        lp.launches(2)
        lp.copy("cudaMemcpyAsync", "DtoH", "pinned", 1024)
    lp.call("cudaDeviceSynchronize", 50 * US)
    for _ in range(replays):
        start = lp.t
        c = lp.call("cudaGraphLaunch", 8 * US + 2 * toll)
        lp.t = start
        lp.copy("graph_launch", "HtoD", "pinned", 4096, corr=c, toll=toll)
        lp.copy("graph_launch", "DtoH", "pinned", 1024, corr=c, toll=toll)
        lp.t = start + 10 * US + 2 * toll
        lp.kernels.append((lp.pid, "graph k", start + 4 * US, start + 200 * US, 0, 1, 7, c, "synthetic"))
        lp.call("cudaStreamSynchronize", 200 * US)
        lp.idle(80 * US)
    return lp


def periodic_loop(steps: int = 100) -> Loop:
    """A loop that never waits: two H2D copies of fixed sizes, launches and a memset per step. Steps:
    the period of its recurring calls."""
    lp = Loop()
    for _ in range(steps):
        lp.copy("cudaMemcpyAsync", "HtoD", "pageable", 4096)
        lp.launches(3)
        lp.copy("cudaMemcpyAsync", "HtoD", "pinned", 64)
        lp.call("cudaMemsetAsync")
        lp.idle(200 * US)
    return lp


def cupy_loop(steps: int = 300, warmup: int = 1) -> Loop:
    """A CuPy loop recorded without --kernels (no launch calls): two H2D, a pinned D2H completed by a
    stream sync and an 8-byte blocking (pageable) readback per iteration: two readbacks of the same
    iteration, one step. The thread issues copies: none of its syncs is a worker's."""
    lp = Loop(launch_calls=False)
    for _ in range(warmup + steps):
        lp.copy("cudaMemcpyAsync", "HtoD", "pageable", 4096)
        lp.copy("cudaMemcpyAsync", "HtoD", "pinned", 512)
        lp.launches(3)
        lp.copy("cudaMemcpyAsync", "DtoH", "pinned", 512)
        lp.call("cudaStreamSynchronize", 100 * US)
        lp.copy("cudaMemcpy", "DtoH", "pageable", 8, dur=30 * US)
        lp.idle(100 * US)
    return lp


def xla_graph_loop(steps: int = 200, warmup: int = 1) -> Loop:
    """XLA with command buffers: one cuGraphLaunch per iteration, an H2D and a D2H copy, and no recorded
    call that waits (XLA polls). Steps: the replays' starts."""
    lp = Loop(domain="driver")
    for _ in range(warmup + steps):
        lp.copy("cuMemcpyHtoDAsync_v2", "HtoD", "pageable", 16384)
        lp.call("cuGraphLaunch", 6 * US)
        lp.copy("cuMemcpyDtoHAsync_v2", "DtoH", "pinned", 32)
        lp.idle(400 * US)
    return lp


def xla_compiled_loop(steps: int = 200, warmup: int = 1, autotune: int = 300) -> Loop:
    """JAX as recorded on the H200: first two compile threads autotune (a launch and a regular
    cuStreamSynchronize each, `autotune` in all, no crossing), then the loop: one cuGraphLaunch per
    iteration on the main thread, its H2D and D2H issued by a pool of 3 XLA threads in turn, no recorded
    call that waits, and iteration times as uneven as the real loop's (every third 2.5x the others).
    Steps: the replays' starts, warmup + steps - 1."""
    lp = Loop(domain="driver")
    for i in range(autotune):
        lp.tid = TID + 10 + i % 2
        lp.call("cuLaunchKernel", 3 * US)
        lp.call("cuStreamSynchronize", 20 * US)
        lp.idle(100 * US)
    for i in range(warmup + steps):
        lp.tid = TID + 1 + i % 3
        lp.copy("cuMemcpyHtoDAsync_v2", "HtoD", "pinned", 16000)
        lp.tid = TID
        lp.call("cuGraphLaunch", 6 * US)
        lp.tid = TID + 1 + i % 3
        lp.copy("cuMemcpyDtoHAsync_v2", "DtoH", "pinned", 32)
        lp.idle(750 * US if i % 3 == 2 else 300 * US)
    lp.tid = TID
    return lp


def piecewise_graph_loop(steps: int = 100, pieces: int = 8) -> Loop:
    """vLLM-style piecewise CUDA graphs: per step two pinned H2D inputs, `pieces` cudaGraphLaunch calls
    from one place with an eager attention launch between them, and a pinned D2H of the sampled ids that
    no recorded call waits for (an event polled). Steps: one per step, steps - 1, never one per piece."""
    lp = Loop()
    for _ in range(steps):
        lp.copy("cudaMemcpyAsync", "HtoD", "pinned", 256)
        lp.copy("cudaMemcpyAsync", "HtoD", "pinned", 4096)
        for p in range(pieces):
            lp.call("cudaGraphLaunch", 6 * US)
            if p < pieces - 1:
                lp.launches(1)
        lp.copy("cudaMemcpyAsync", "DtoH", "pinned", 64)
        lp.idle(300 * US)
    return lp
