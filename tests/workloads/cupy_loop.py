"""A CuPy loop on one stream: per iteration a pageable H2D (`ndarray.set`), a pinned async H2D, two
kernels, a pinned async D2H drained by a stream sync, and a blocking scalar readback (`int(...)`).

Expected, inside the fence window (see _common.py), exactly, from the parameters:
  iterations  = --steps (default 300)
  H2D copies  = 2 * --steps: --n * 4 bytes pageable and --m * 4 bytes pinned, each iteration
  D2H copies  = 2 * --steps: --m * 4 bytes pinned (async + stream sync) and 8 bytes (int64 argmax, blocking)
  blocking waits = 2 * --steps (the stream sync and the scalar readback)
"""

from __future__ import annotations

import numpy as np
from _common import FENCE_BYTES, Timer, parser, report


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations before the window (kernels compile)")
    p.add_argument("--n", type=int, default=4096, help="float32 elements of the pageable H2D")
    p.add_argument("--m", type=int, default=1000, help="float32 elements of the pinned H2D and D2H (<= --n)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.m > a.n:
        raise SystemExit("--m must be <= --n")
    import cupy as cp
    import cupyx

    if cp.cuda.runtime.getDeviceCount() < 1:
        raise SystemExit("cupy_loop.py needs a CUDA GPU")
    rng = np.random.default_rng(a.seed)
    host = [rng.standard_normal(a.n, np.float32) for _ in range(8)]
    pin_in = cupyx.empty_pinned((a.m,), np.float32)
    pin_out = cupyx.empty_pinned((a.m,), np.float32)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        d_a = cp.empty(a.n, np.float32)
        d_b = cp.empty(a.m, np.float32)

    def get_async(y) -> None:
        try:
            y.get(stream=s, out=pin_out, blocking=False)  # D2H pinned, async (CuPy >= 13)
        except TypeError:
            y.get(stream=s, out=pin_out)  # older CuPy: asynchronous when a stream is given

    def iteration(i: int) -> int:
        with s:
            d_a.set(host[i % len(host)], stream=s)  # H2D pageable
            pin_in[...] = host[(i + 1) % len(host)][: a.m]  # host-side write into pinned memory, no copy
            d_b.set(pin_in, stream=s)  # H2D pinned, async
            y = cp.tanh(d_a[: a.m] + d_b)
            get_async(y)
            s.synchronize()  # wait 1
            return int(cp.argmax(y))  # D2H 8 bytes, blocking: wait 2

    for i in range(a.warmup):
        iteration(i)
    s.synchronize()

    def fence() -> None:
        with s:
            cp.asarray(np.zeros(FENCE_BYTES, np.uint8))
        s.synchronize()

    fence()
    t = Timer()
    for i in range(a.steps):
        iteration(a.warmup + i)
        t.tick()
    fence()
    per = [
        {"direction": "h2d", "bytes": a.n * 4, "memory": "pageable"},
        {"direction": "h2d", "bytes": a.m * 4, "memory": "pinned"},
        {"direction": "d2h", "bytes": a.m * 4, "memory": "pinned"},
        {"direction": "d2h", "bytes": 8, "memory": "pageable"},
    ]
    return report(a, "cupy_loop", per, a.steps, a.warmup + a.steps, t, {"blocking_waits": 2})


if __name__ == "__main__":
    main()
