"""What the driver interposer (cctrace/record/native/interpose.c) costs, and whether it misses anything.

1. Added cost per interposed call, in one process, interleaved: a C program runs under
   `cctrace record --kinds none --interpose on` (the real recording path: rings, flusher, file) and
   calls the same driver entry points through the interposer's wrapper and through the real function
   behind it (cct_ip_real), in alternating blocks of --calls calls, --rounds times in a shuffled order;
   it prints each entry point's median added ns per call and the 25th-75th percentiles over the rounds.
   Entry points: cuEventSynchronize on a completed event (a sync), cuMemcpyHtoDAsync_v2 of 4 bytes from
   pinned memory (a copy: direction, pointer kinds from the cache), cuMemsetD8Async of 1 byte (a memset).
   Target: <= 0.3 us.
2. examples/serve.py steps/s: plain and with the interposer alone (--kinds none --interpose on),
   alternating, --reps each. Target: <= 2% slower.
3. Agreement: serve.py recorded by CUPTI (--interpose off) and by the interposer alone: H2D/D2H copy
   counts and bytes must be equal (tests/test_gpu_interpose.py asserts the same; here they are printed).
4. Python stacks: what capturing the calling thread's stack (call sites) adds per interposed call. A
   Python process with the interposer preloaded and recording, capture switched on by InterposerSource
   as the tracer does, calls a C loop through ctypes (which lets go of the GIL, as torch does) from a
   Python function --depths frames deep; the loop calls the wrapped cuEventSynchronize and
   cuMemcpyHtoDAsync_v2. Blocks with capture on and off alternate, --rounds times; the figure is the
   median (p25..p75) of the per-call difference in the calling thread's CPU time (a busy machine's
   preemptions do not count). The stack is interned already after the first call: a serving loop's
   steady state.

Needs a GPU; `--stand-in` runs parts 1 and 4 against tests/native/fake_libcuda.c instead (any Linux
machine with cc): the wrapper's own cost around calls that do nothing. Results (JSON) go to
$OUT/interpose_cost.json when OUT is set; traces under $OUT too.

    python benchmarks/interpose_cost.py --rounds 30 --calls 20000 --reps 5 --steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _serve import SERVE, Speed, recorded, run_serve

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
INTERPOSE_ONLY = ["--kinds", "none", "--interpose", "on"]

BENCH = r"""
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
typedef int (*fn_t)();
static uint64_t now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000ull + t.tv_nsec; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }
int main(int argc, char **argv) {
    int rounds = atoi(argv[1]); long calls = atol(argv[2]);
    void *cuda = dlopen(argc > 3 ? argv[3] : "libcuda.so.1", RTLD_NOW);
    void *(*real)(const char *) = (void *(*)(const char *))dlsym(RTLD_DEFAULT, "cct_ip_real");
    if (!cuda || !real) { fprintf(stderr, "needs libcuda and the preloaded interposer\n"); return 2; }
#define SYM(n) dlsym(cuda, n)
    int (*init)(unsigned) = SYM("cuInit");
    int (*devget)(int *, int) = SYM("cuDeviceGet");
    int (*retain)(void **, int) = SYM("cuDevicePrimaryCtxRetain");
    int (*setcur)(void *) = SYM("cuCtxSetCurrent");
    int (*evcreate)(void **, unsigned) = SYM("cuEventCreate");
    int (*evrecord)(void *, void *) = SYM("cuEventRecord");
    int (*streamcreate)(void **, unsigned) = SYM("cuStreamCreate");
    int (*alloc)(uint64_t *, size_t) = SYM("cuMemAlloc_v2");
    int (*halloc)(void **, size_t, unsigned) = SYM("cuMemHostAlloc");
    int (*ssync)(void *) = SYM("cuStreamSynchronize");
    int dev; void *ctx, *ev, *st; uint64_t d; void *h;
    if (init(0) || devget(&dev, 0) || retain(&ctx, dev) || setcur(ctx) || evcreate(&ev, 0) || streamcreate(&st, 1)
        || alloc(&d, 1 << 20) || halloc(&h, 4096, 0)) { fprintf(stderr, "CUDA setup failed\n"); return 3; }
    evrecord(ev, st); ssync(st);
    const char *names[3] = {"cuEventSynchronize", "cuMemcpyHtoDAsync_v2", "cuMemsetD8Async"};
    double *added[3];
    printf("{");
    for (int f = 0; f < 3; f++) {
        void *wrapped = SYM(names[f]), *direct = real(names[f]);
        added[f] = calloc(rounds, sizeof(double));
        for (int r = 0; r < rounds; r++) {
            double ns[2];
            for (int k = 0; k < 2; k++) {
                int which = (r + k) % 2; /* alternate which goes first */
                void *p = which ? wrapped : direct;
                uint64_t t0 = now();
                for (long i = 0; i < calls; i++) {
                    if (f == 0) ((int (*)(void *))p)(ev);
                    else if (f == 1) ((int (*)(uint64_t, const void *, size_t, void *))p)(d, h, 4, st);
                    else ((int (*)(uint64_t, unsigned char, size_t, void *))p)(d, 0, 1, st);
                    if (f && (i & 1023) == 1023) ssync(st);
                }
                ssync(st);
                ns[which] = (double)(now() - t0) / calls;
            }
            added[f][r] = ns[1] - ns[0];
        }
        qsort(added[f], rounds, sizeof(double), cmp);
        printf("%s\"%s\": {\"median_ns\": %.1f, \"p25_ns\": %.1f, \"p75_ns\": %.1f}", f ? ", " : "", names[f],
               added[f][rounds / 2], added[f][rounds / 4], added[f][3 * rounds / 4]);
    }
    printf("}\n");
    return 0;
}
"""


def per_call(rounds: int, calls: int, out_dir: Path, stand_in: bool = False) -> dict:
    """Added ns per interposed call (median and quartiles over rounds), and the recording's health."""
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "bench.c", Path(tmp) / "bench"
        src.write_text(BENCH)
        subprocess.run(["cc", "-O2", "-o", str(exe), str(src), "-ldl"], check=True)
        args = [str(exe), str(rounds), str(calls)]
        if stand_in:
            lib = Path(tmp) / "libcuda.so.1"
            fake = ROOT / "tests" / "native" / "fake_libcuda.c"
            subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-Wl,-Bsymbolic", "-o", str(lib), str(fake)], check=True)
            args.append(str(lib))
        trace = out_dir / "trace-percall"
        r = subprocess.run(recorded(args, trace, INTERPOSE_ONLY), capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"the per-call bench failed:\n{r.stderr[-2000:]}")
    return {"added": json.loads(r.stdout.strip().splitlines()[-1]), "trace": str(trace)}


LOOP = r"""
#include <stddef.h>
#include <stdint.h>
typedef int (*sync_t)(void *);
typedef int (*copy_t)(uint64_t, const void *, size_t, void *);
/* n calls of one entry point: 0 cuEventSynchronize(ev), 1 cuMemcpyHtoDAsync_v2(d, h, 4, st) (with a
 * stream sync every 1024, as part 1's loop) */
void loop(void *fn, int which, long n, void *ev, uint64_t d, void *h, void *st, void *ssync) {
    for (long i = 0; i < n; i++) {
        if (which == 0) ((sync_t)fn)(ev);
        else ((copy_t)fn)(d, h, 4, st);
        if (which && (i & 1023) == 1023) ((sync_t)ssync)(st);
    }
    if (which) ((sync_t)ssync)(st);
}
"""
STACK_FNS = ("cuEventSynchronize", "cuMemcpyHtoDAsync_v2")


def stacks_child(spec: dict) -> dict:
    """In the child (interposer preloaded and recording): stacks on minus off per call, per entry point
    and depth."""
    import ctypes
    import statistics
    import time

    from stack_cost import _at_depth, _pct  # the CUPTI path's stack benchmark: the same method

    from cctrace.record.sources import py_stacks
    from cctrace.record.sources.interposer import InterposerSource

    src = InterposerSource(spec["interposer"], "on")
    src.start(cupti_running=False)
    if src.stacks["state"] != "on":
        raise SystemExit(f"stacks did not switch on: {src.stacks['state']}")
    ip, lp = src.lib, ctypes.c_void_p
    cuda = ctypes.CDLL(spec["libcuda"])
    looper = ctypes.CDLL(spec["loop"])
    looper.loop.argtypes = [lp, ctypes.c_int, ctypes.c_long, lp, ctypes.c_uint64, lp, lp, lp]
    dev, ctx, ev, st, d, h = ctypes.c_int(), lp(), lp(), lp(), ctypes.c_uint64(), lp()
    setup = (
        cuda.cuInit(0), cuda.cuDeviceGet(ctypes.byref(dev), 0), cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev),
        cuda.cuCtxSetCurrent(ctx), cuda.cuEventCreate(ctypes.byref(ev), 0), cuda.cuStreamCreate(ctypes.byref(st), 1),
        cuda.cuMemAlloc_v2(ctypes.byref(d), ctypes.c_size_t(1 << 20)),
        cuda.cuMemHostAlloc(ctypes.byref(h), ctypes.c_size_t(4096), 0),
    )  # fmt: skip
    if any(setup):
        raise SystemExit(f"CUDA setup failed: {setup}")
    cuda.cuEventRecord(ev, st)
    ssync = ctypes.cast(cuda.cuStreamSynchronize, lp).value  # wrapped: recorded, as part 1's loop
    rows = []
    for depth in spec["depths"]:
        for which, name in enumerate(STACK_FNS):
            fn = ctypes.cast(getattr(cuda, name), lp).value  # dlsym on the driver: the interposer's wrapper
            diffs, off_ns = [], []
            for r in range(spec["rounds"]):
                per = {}
                for on in ((0, 1) if r % 2 == 0 else (1, 0)):
                    ip.cct_stacks_enable(on)
                    t0 = time.thread_time_ns()
                    _at_depth(depth, looper.loop, fn, which, spec["calls"], ev, d, h, st, ssync)
                    per[on] = (time.thread_time_ns() - t0) / spec["calls"]
                diffs.append(per[1] - per[0])
                off_ns.append(per[0])
            rows.append({
                "function": name, "depth": depth, "ns_per_call_stacks_off": statistics.median(off_ns),
                "added_ns": statistics.median(diffs), "p25_ns": _pct(diffs, 0.25), "p75_ns": _pct(diffs, 0.75),
            })  # fmt: skip
    ip.cct_stacks_enable(1)
    stats = py_stacks.stats(ip)
    src.stop()
    return {"python": sys.version.split()[0], "rows": rows, "stats": stats, "health": src.health()}


def stack_cost(rounds: int, calls: int, depths: list[int], out_dir: Path, stand_in: bool = False) -> dict:
    """Part 4 in a child process with the interposer preloaded (its trace under out_dir, raw files
    removed afterwards: they are large and nothing reads them)."""
    from cctrace.record import native
    from cctrace.trace import handoff as H

    with tempfile.TemporaryDirectory() as tmp:
        loop_src, loop = Path(tmp) / "loop.c", Path(tmp) / "libloop.so"
        loop_src.write_text(LOOP)
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(loop), str(loop_src)], check=True)
        libcuda = "libcuda.so.1"
        if stand_in:
            libcuda = str(Path(tmp) / "libcuda.so.1")
            fake = ROOT / "tests" / "native" / "fake_libcuda.c"
            subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-Wl,-Bsymbolic", "-o", libcuda, str(fake)], check=True)
        interposer = str(native.build_native(native.INTERPOSE_SOURCE))
        trace = out_dir / "trace-stacks"
        trace.mkdir(parents=True, exist_ok=True)
        spec = {"interposer": interposer, "libcuda": libcuda, "loop": str(loop), "rounds": rounds, "calls": calls,
                "depths": depths}  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(H.PREFIX)}
        env |= {"LD_PRELOAD": interposer, H.DIR.name: str(trace), H.INTERPOSE.name: "on",
                "PYTHONPATH": str(ROOT)}  # fmt: skip
        r = subprocess.run(
            [sys.executable, __file__, "--stacks-child", json.dumps(spec)], env=env, capture_output=True, text=True
        )
        for f in trace.glob("interpose.*.ipraw"):
            f.unlink()
    if r.returncode != 0:
        raise SystemExit(f"the stacks bench failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def serve(reps: int, steps: int) -> dict:
    args = ["--steps", str(steps)]
    plain, inter = Speed([], []), Speed([], [])
    for _ in range(reps):
        for speed, opts in ((plain, None), (inter, INTERPOSE_ONLY)):
            s = run_serve(args, opts)
            speed.steps_per_s.append(s["steps_per_s"])
            speed.step_ms.append(s["step_ms_median"])
    by_median, by_best, by_step = inter.slowdowns(plain)
    return {
        "plain_steps_per_s": plain.steps_per_s,
        "interposer_steps_per_s": inter.steps_per_s,
        "slowdown_pct_median": by_median,
        "slowdown_pct_best": by_best,
        "slowdown_pct_step_time": by_step,
    }


def copy_totals(trace: Path, source: str) -> dict:
    """{direction: [count, bytes]} of the memcpy rows `source` recorded (pyarrow only)."""
    from cctrace.trace.shards import read_shard

    out: dict[str, list[int]] = {}
    for f in sorted(trace.glob("copies.*.arrows")):
        for r in read_shard(f).data.to_pylist():
            if r["source"] == source and r["op"] == "memcpy" and r["copy_kind"] in ("HtoD", "DtoH"):
                c = out.setdefault(r["copy_kind"], [0, 0])
                c[0] += 1
                c[1] += r["bytes"]
    return out


def agreement(steps: int, out_dir: Path) -> dict:
    cmd = [sys.executable, SERVE, "--steps", str(steps)]
    got = {}
    for name, opts, source in (
        ("cupti", ["--interpose", "off"], "cupti"),
        ("interposer", INTERPOSE_ONLY, "interposer"),
    ):
        trace = out_dir / f"trace-serve-{name}"
        r = subprocess.run(recorded(cmd, trace, opts), capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            raise SystemExit(f"serve.py under {opts} failed:\n{r.stderr[-2000:]}")
        got[name] = copy_totals(trace, source)
    got["equal"] = got["cupti"] == got["interposer"]
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: percall,stacks,serve,agreement")
    ap.add_argument("--depths", default="10,40", help="part 4: Python frames above the calls, comma-separated")
    ap.add_argument(
        "--stand-in", action="store_true", help="parts 1 and 4 only, against the stand-in libcuda (no GPU)"
    )
    ap.add_argument("--stacks-child", help=argparse.SUPPRESS)  # part 4's child process
    a = ap.parse_args()
    if a.stacks_child:
        print(json.dumps(stacks_child(json.loads(a.stacks_child))))
        return
    out_dir = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="cct-interpose-"))
    skip = set(a.skip.split(",")) | ({"serve", "agreement"} if a.stand_in else set())
    result: dict = {}
    if "percall" not in skip:
        result["per_call"] = per_call(a.rounds, a.calls, out_dir, a.stand_in)
        for name, v in result["per_call"]["added"].items():
            print(f"{name}: +{v['median_ns']:.0f} ns per call (p25 {v['p25_ns']:.0f}, p75 {v['p75_ns']:.0f})")
    if "stacks" not in skip:
        depths = [int(x) for x in a.depths.split(",")]
        result["stacks"] = st = stack_cost(a.rounds, a.calls, depths, out_dir, a.stand_in)
        print(f"Python stacks on vs off (Python {st['python']}, {st['stats']['stacks']} distinct stacks):")
        for row in st["rows"]:
            print(
                f"  {row['function']} at depth {row['depth']}: +{row['added_ns']:.0f} ns per call "
                f"(p25 {row['p25_ns']:.0f}, p75 {row['p75_ns']:.0f}; {row['ns_per_call_stacks_off']:.0f} ns with stacks off)"
            )
    if "agreement" not in skip:
        result["agreement"] = agreement(min(a.steps, 100), out_dir)
        print(f"copies, CUPTI vs interposer: {result['agreement']}")
    if "serve" not in skip:
        result["serve"] = serve(a.reps, a.steps)
        s = result["serve"]
        print(
            f"serve.py with the interposer alone: {s['slowdown_pct_median']:+.2f}% steps/s (median), "
            f"{s['slowdown_pct_best']:+.2f}% (best), {s['slowdown_pct_step_time']:+.2f}% (median step time)"
        )
    (out_dir / "interpose_cost.json").write_text(json.dumps(result, indent=2))
    print(f"results in {out_dir / 'interpose_cost.json'}")


if __name__ == "__main__":
    main()
