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

Needs a GPU; `--stand-in` runs part 1 against tests/native/fake_libcuda.c instead (any Linux machine
with cc): the wrapper's own cost around calls that do nothing. Results (JSON) go to $OUT/interpose_cost.json when OUT is set; traces under $OUT too.

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
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: percall,serve,agreement")
    ap.add_argument("--stand-in", action="store_true", help="part 1 only, against the stand-in libcuda (no GPU)")
    a = ap.parse_args()
    out_dir = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="cct-interpose-"))
    skip = set(a.skip.split(",")) | ({"serve", "agreement"} if a.stand_in else set())
    result: dict = {}
    if "percall" not in skip:
        result["per_call"] = per_call(a.rounds, a.calls, out_dir, a.stand_in)
        for name, v in result["per_call"]["added"].items():
            print(f"{name}: +{v['median_ns']:.0f} ns per call (p25 {v['p25_ns']:.0f}, p75 {v['p75_ns']:.0f})")
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
