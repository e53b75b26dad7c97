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
    for step in range(spec.steps):
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
        for _ in range(spec.stalls_per_step):
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
    (out / "manifest.json").write_text(
        json.dumps(
            {
                "command": ["synthetic"],
                "processes": [
                    {"pid": PID, "ppid": 1, "argv": ["synthetic"], "start_ns": 0, "end_ns": t, "cupti": "synthetic"}
                ],
            }
        )
    )
    load(out)
    step_ns = [m[5] - m[4] for m in markers]
    truth["step_ns"] = sum(step_ns) / len(step_ns)
    spec.truth = truth
    return spec
