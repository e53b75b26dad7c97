"""A JAX `jit` decode-like loop: each iteration puts host activations on the GPU (`jax.device_put`),
runs one jitted step and reads the sampled ids back (`np.asarray`, blocking).

Expected, inside the fence window (see _common.py), exactly, from the parameters:
  iterations  = --steps (default 200)
  H2D copies  = --steps, each --batch * --hidden * 4 bytes (float32, pageable numpy)
  D2H copies  = --steps, each --batch * 4 bytes (int32 ids)
  blocking waits = --steps (one per np.asarray; XLA waits with a driver-API stream/event sync)
JAX's own transfers before the window (weights, the first call's compilation and constants) are not
counted. XLA calls the CUDA driver API directly (cuMemcpyHtoDAsync_v2, cuMemcpyDtoHAsync_v2,
cuStreamSynchronize, cuEventSynchronize): this is the workload for driver-API coverage.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU: allocate as needed

import numpy as np
from _common import FENCE_BYTES, Timer, parser, report


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations before the window (the first compiles)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--vocab", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    import jax
    import jax.numpy as jnp

    if not [d for d in jax.devices() if d.platform == "gpu"]:
        raise SystemExit("jax_loop.py needs a CUDA GPU visible to JAX (jax.devices() has none)")
    rng = np.random.default_rng(a.seed)
    w1 = jax.device_put(rng.standard_normal((a.hidden, a.hidden), np.float32) * 0.05)
    w2 = jax.device_put(rng.standard_normal((a.hidden, a.vocab), np.float32) * 0.05)
    state = jax.device_put(np.zeros((a.batch, a.hidden), np.float32))
    xs = [rng.standard_normal((a.batch, a.hidden), np.float32) for _ in range(8)]

    @jax.jit
    def step(x, state, w1, w2):
        h = jnp.tanh(x @ w1 + state)
        return jnp.argmax(h @ w2, axis=-1).astype(jnp.int32), h

    def iteration(i: int):
        nonlocal state
        x = jax.device_put(xs[i % len(xs)])  # 1 H2D
        ids, state = step(x, state, w1, w2)
        return np.asarray(ids)  # 1 blocking D2H

    for i in range(a.warmup):
        iteration(i)
    state.block_until_ready()
    jax.device_put(np.zeros(FENCE_BYTES, np.uint8)).block_until_ready()  # fence: the window starts
    t = Timer()
    for i in range(a.steps):
        ids = iteration(a.warmup + i)
        assert ids.shape == (a.batch,)
        t.tick()
    state.block_until_ready()
    jax.device_put(np.zeros(FENCE_BYTES, np.uint8)).block_until_ready()  # fence: the window ends
    per = [
        {"direction": "h2d", "bytes": a.batch * a.hidden * 4, "memory": "pageable"},
        {"direction": "d2h", "bytes": a.batch * 4, "memory": "pageable"},
    ]
    return report(a, "jax_loop", per, a.steps, a.warmup + a.steps, t, {"blocking_waits": 1})


if __name__ == "__main__":
    main()
