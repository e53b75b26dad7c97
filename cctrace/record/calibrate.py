"""`cctrace calibrate`: measure this machine's CPU<->GPU bridge into a bridge profile (JSON).

The profile is the reference the report and diff compare a trace against (`--profile`): what a
crossing, an async call and an allocation normally cost here. Measured with torch (the copies a
server makes) plus the CUDA driver through ctypes for raw allocations.
"""

from __future__ import annotations

import ctypes
import functools
import statistics
import threading
import time
from collections.abc import Callable

from cctrace.trace.profile import FORMAT, ProfileError, params_from_profile

KiB, MiB = 1024, 1024 * 1024
SIZES = [4 * 4**i for i in range(14)]  # 4 B .. 256 MiB
SMALL_FIT, LARGE_FIT = 64 * KiB, 16 * MiB


class CalibrateError(ProfileError):
    pass


def _q(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def summarize(xs_ns: list[int]) -> dict:
    us = [x / 1000 for x in xs_ns]
    return {"p50_us": round(statistics.median(us), 3), "p10_us": round(_q(us, 0.1), 3), "p90_us": round(_q(us, 0.9), 3)}


def fit_model(points: list[tuple[int, float]]) -> dict:
    """Fixed toll and bandwidth from (bytes, µs) points, robustly, the way queries/_cost_model.sql fits a
    trace: bandwidth from large copies, toll from small ones (medians), then the bandwidth again
    net of the toll."""
    large = [(b, t) for b, t in points if b >= LARGE_FIT and t > 0]
    small = [(b, t) for b, t in points if b <= SMALL_FIT]
    bpus = statistics.median(b / t for b, t in large) if large else None  # bytes per µs
    toll = statistics.median(t - (b / bpus if bpus else 0.0) for b, t in small) if small else 0.0
    toll = max(toll, 0.0)
    if large:
        bpus = statistics.median(b / max(t - toll, 1e-3) for b, t in large)
    return {
        "toll_us": round(toll, 3),
        "gbps": round(bpus / 1000, 3) if bpus else None,  # bytes/µs / 1000 = GB/s
    }


def _torch():
    try:
        import torch
    except ImportError as e:
        raise CalibrateError(f"calibrate needs torch with CUDA ({e})") from None
    if not torch.cuda.is_available():
        raise CalibrateError("no CUDA GPU is available (torch.cuda.is_available() is False)")
    return torch


class _Driver:
    """Raw driver allocations (no caching allocator in between), in torch's current context."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libcuda.so.1")
        for n in ("cuMemAlloc_v2", "cuMemFree_v2", "cuMemAllocHost_v2", "cuMemFreeHost"):
            if not hasattr(self.lib, n):
                raise CalibrateError(f"libcuda has no {n}")

    def timed(self, kind: str, nbytes: int) -> tuple[int, int]:
        if kind == "device":
            p = ctypes.c_uint64()
            t0 = time.perf_counter_ns()
            rc = self.lib.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(nbytes))
            t1 = time.perf_counter_ns()
            rc2 = self.lib.cuMemFree_v2(p)
        else:
            p = ctypes.c_void_p()
            t0 = time.perf_counter_ns()
            rc = self.lib.cuMemAllocHost_v2(ctypes.byref(p), ctypes.c_size_t(nbytes))
            t1 = time.perf_counter_ns()
            rc2 = self.lib.cuMemFreeHost(p)
        t2 = time.perf_counter_ns()
        if rc or rc2:
            raise CalibrateError(f"{kind} allocation of {nbytes} bytes failed (CUDA error {rc or rc2})")
        return t1 - t0, t2 - t1


def calibrate(quick: bool = False, progress: Callable[[str], None] | None = None) -> dict:
    """Measure; returns the profile."""
    torch = _torch()
    say = progress or (lambda _m: None)
    dev = torch.device("cuda")
    torch.zeros(1, device=dev)  # context
    sizes = SIZES[:-2] if quick else SIZES
    top = sizes[-1]
    say(f"buffers: {top / MiB:.0f} MiB pinned, pageable and device")
    bufs = {
        "pinned": torch.empty(top, dtype=torch.uint8).pin_memory(),
        "pageable": torch.empty(top, dtype=torch.uint8),
        "device": torch.empty(top, dtype=torch.uint8, device=dev),
        "device2": torch.empty(top, dtype=torch.uint8, device=dev),
    }
    bufs["pageable"].fill_(1)  # touch the pages
    profile: dict = {"format": FORMAT, "quick": quick, "machine": _machine(torch)}
    rows, fits = [], {}
    for direction, kinds in (("h2d", ("pageable", "pinned")), ("d2h", ("pageable", "pinned")), ("d2d", ("device",))):
        for kind in kinds:
            pts_host, pts_gpu = [], []
            for n in sizes:
                reps = max(3, min(100 if not quick else 20, int(2e9 / max(n, 1) / 50)))
                host, gpu = _time_copies(torch, bufs, direction, kind, n, reps)
                h, g = summarize(host), summarize(gpu)
                rows.append({"direction": direction, "host_kind": kind, "bytes": n, "reps": reps, "host": h, "gpu": g})
                pts_host.append((n, h["p50_us"]))
                pts_gpu.append((n, g["p50_us"]))
            fits[f"{direction}/{kind}"] = {"host": fit_model(pts_host), "gpu": fit_model(pts_gpu)}
            f = fits[f"{direction}/{kind}"]["host"]
            say(f"latency {direction} {kind}: toll {f['toll_us']} us, {f['gbps']} GB/s")
    profile["latency"] = rows
    profile["fit"] = {k: v["host"] | {"gpu": v["gpu"]} for k, v in fits.items()}
    say("concurrency: 1, 2, 4 streams and 2 threads")
    profile["concurrency"] = _concurrency(torch, bufs, quick)
    say("blocking: async copy calls alone and behind queued GPU work")
    profile["blocking"] = _blocking(torch, bufs)
    say("allocation: device, pinned host, caching allocator")
    profile["allocation"] = _allocation(torch, quick)
    profile["reference_params"] = params_from_profile(profile)
    return profile


def _time_copies(torch, bufs: dict, direction: str, kind: str, n: int, reps: int) -> tuple[list[int], list[int]]:
    if direction == "h2d":
        src, dst = bufs[kind][:n], bufs["device"][:n]
    elif direction == "d2h":
        src, dst = bufs["device"][:n], bufs[kind][:n]
    else:
        src, dst = bufs["device"][:n], bufs["device2"][:n]
    nb = kind == "pinned" or direction == "d2d"
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    host, gpu = [], []
    for i in range(reps + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter_ns()
        start.record()
        dst.copy_(src, non_blocking=nb)
        end.record()
        end.synchronize()
        t1 = time.perf_counter_ns()
        if i:  # the first is warm-up
            host.append(t1 - t0)
            gpu.append(round(start.elapsed_time(end) * 1e6))
    return host, gpu


def _concurrency(torch, bufs: dict, quick: bool) -> dict:
    out: dict = {"streams": [], "threads": []}
    streams = [torch.cuda.Stream() for _ in range(4)]
    reps = 5 if quick else 15
    for n in (4 * KiB, 4 * MiB):
        for k in (1, 2, 4):
            t_one, t_many = [], []
            for _ in range(reps):
                for many in (False, True):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter_ns()
                    for j in range(k):
                        s = streams[j] if many else streams[0]
                        with torch.cuda.stream(s):
                            bufs["device"][j * n : (j + 1) * n].copy_(
                                bufs["pinned"][j * n : (j + 1) * n], non_blocking=True
                            )
                    torch.cuda.synchronize()
                    (t_many if many else t_one).append(time.perf_counter_ns() - t0)
            one, many = statistics.median(t_one), statistics.median(t_many)
            out["streams"].append(
                {
                    "bytes": n,
                    "streams": k,
                    "one_stream_us": round(one / 1000, 2),
                    "k_streams_us": round(many / 1000, 2),
                    "speedup": round(one / many, 3),
                }
            )
    # two threads, each copying on its own stream
    n, m = 4 * MiB, 8 if quick else 20

    def worker(idx: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        with torch.cuda.stream(streams[idx]):
            for _ in range(m):
                bufs["device"][idx * n : (idx + 1) * n].copy_(
                    bufs["pinned"][idx * n : (idx + 1) * n], non_blocking=True
                )
        streams[idx].synchronize()

    for threads in (1, 2):
        times = []
        for _ in range(3):
            torch.cuda.synchronize()
            barrier = threading.Barrier(threads + 1)
            ts = [threading.Thread(target=worker, args=(i, barrier)) for i in range(threads)]
            for t in ts:
                t.start()
            t0 = time.perf_counter_ns()
            barrier.wait()
            for t in ts:
                t.join()
            times.append(time.perf_counter_ns() - t0)
        med = statistics.median(times)
        out["threads"].append(
            {
                "threads": threads,
                "bytes": n,
                "copies_per_thread": m,
                "us": round(med / 1000, 1),
                "gbps": round(threads * m * n / med, 2),
            }
        )
    one, two = out["threads"][0]["gbps"], out["threads"][1]["gbps"]
    out["threads_overlap"] = round(two / one, 3) if one else None
    return out


def _blocking(torch, bufs: dict) -> dict:
    n, reps = 4 * KiB, 50
    src, dst = bufs["pinned"][:n], bufs["device"][:n]

    def call_times(queued_ms: float) -> tuple[list[int], list[int]]:
        calls, waits = [], []
        for _ in range(reps):
            torch.cuda.synchronize()
            if queued_ms:
                torch.cuda._sleep(int(queued_ms * 1e6 * _cycles_per_ns(torch)))
            t0 = time.perf_counter_ns()
            dst.copy_(src, non_blocking=True)
            t1 = time.perf_counter_ns()
            torch.cuda.synchronize()
            calls.append(t1 - t0)
            waits.append(time.perf_counter_ns() - t1)
        return calls, waits

    alone, _ = call_times(0)
    queued, waits = call_times(2.0)
    a, q = summarize(alone), summarize(queued)
    return {
        "bytes": n,
        "alone": {"call": a},
        "behind_queued_work": {"queued_ms": 2.0, "call": q, "then_wait": summarize(waits)},
        "async_returns_at_once": q["p50_us"] < 0.1 * 2000,
    }


@functools.cache
def _cycles_per_ns(torch) -> float:
    """GPU clock cycles per ns for torch.cuda._sleep, measured once."""
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    cycles = 10_000_000
    torch.cuda._sleep(1000)
    s.record()
    torch.cuda._sleep(cycles)
    e.record()
    e.synchronize()
    return cycles / (s.elapsed_time(e) * 1e6)


def _allocation(torch, quick: bool) -> list[dict]:
    drv = _Driver()
    out = []
    reps = 5 if quick else 20
    for n in (4 * KiB, 1 * MiB, 64 * MiB):
        for kind in ("device", "pinned"):
            allocs, frees = [], []
            for _ in range(reps):
                a, f = drv.timed(kind, n)
                allocs.append(a)
                frees.append(f)
            out.append({"kind": f"{kind} (driver)", "bytes": n, "alloc": summarize(allocs), "free": summarize(frees)})
        for kind in ("device (caching allocator)", "pinned (caching host allocator)"):
            times = []
            for _ in range(reps):
                t0 = time.perf_counter_ns()
                if kind.startswith("device"):
                    x = torch.empty(n, dtype=torch.uint8, device="cuda")
                else:
                    x = torch.empty(n, dtype=torch.uint8, pin_memory=True)
                times.append(time.perf_counter_ns() - t0)
                del x
            out.append({"kind": kind, "bytes": n, "alloc": summarize(times[1:])})
    return out


def _machine(torch) -> dict:
    from cctrace.trace.manifest import gpu_facts

    facts = gpu_facts()
    facts["device_name"] = torch.cuda.get_device_name()
    facts["torch"] = torch.__version__
    facts["torch_cuda"] = torch.version.cuda
    facts["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return facts
