"""What the bridge emulation costs by itself (GPU machine): serve.py steps/s with a zero bridge
(toll 0, native bandwidth, no serialization, no async blocking), with and without CUPTI recording.

The emulator acts in CUPTI driver-API callbacks; any time they add beyond what they inject is not
in the manifest's ground truth, so this is the error bar on "the bridge explains the gap".

    python benchmarks/bridge_overhead.py --reps 3 --steps 2000
"""

from __future__ import annotations

import argparse

from _serve import Speed, run_serve

ZERO = "toll_us=0,bw_ratio=1,serialize=off,async_block=off"
RECORD = ["--nvtx", "--kernels", "--host-probes", "off"]
CONFIGS = {
    "plain": None,
    "zero bridge, no recording": ["--kinds", "none", "--host-probes", "off", "--emulate-bridge", ZERO],
    "recording (CUPTI)": RECORD,
    "recording + zero bridge": [*RECORD, "--emulate-bridge", ZERO],
    "recording + b300-tdx": [*RECORD, "--emulate-bridge", "b300-tdx"],
}


def run(opts: list[str] | None, steps: int, extra: list[str], cpus: str | None) -> tuple[float, float]:
    """(steps/s, median step ms) of one serve.py run."""
    s = run_serve(["--steps", str(steps), *extra], opts, cpus)
    return s["steps_per_s"], s["step_ms_median"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--cpus", help="run every configuration on these CPUs (taskset -c list, e.g. 2-5)")
    ap.add_argument("serve_args", nargs="*", help="extra arguments for serve.py (after --)")
    a = ap.parse_args()
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in CONFIGS}
    for _ in range(a.reps):
        for name, opts in CONFIGS.items():
            res[name].append(run(opts, a.steps, a.serve_args, a.cpus))
    speeds = {k: Speed([s for s, _ in runs], [t for _, t in runs]) for k, runs in res.items()}
    base, base_step = speeds["plain"].median, speeds["plain"].median_step_ms
    print(f"serve.py --steps {a.steps} {' '.join(a.serve_args)}; {a.reps} reps alternating (median, min-max)")
    for name, sp in speeds.items():
        xs, m, step = sp.steps_per_s, sp.median, sp.median_step_ms
        print(
            f"{name:28} {m:8.1f} steps/s ({min(xs):.1f}-{max(xs):.1f})  {1000 / m:7.3f} ms/step  "
            f"{(1000 / m - 1000 / base) * 1000:+8.1f} us/step vs plain; median step {step:.3f} ms "
            f"({(step - base_step) * 1000:+.1f} us)"
        )


if __name__ == "__main__":
    main()
