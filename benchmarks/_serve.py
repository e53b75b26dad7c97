"""What the benchmarks that time examples/serve.py share: running it, plain or under
`cctrace record`, and reading the SERVE_SUMMARY line it prints at the end."""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVE = str(ROOT / "examples" / "serve.py")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the benchmarks import cctrace from this checkout


def bootstrap_95(draw: Callable[[random.Random], float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of a statistic over `n` draws, each computed by `draw` from resamples it takes."""
    rng = random.Random(seed)
    draws = sorted(draw(rng) for _ in range(n))
    return draws[int(0.025 * n)], draws[int(0.975 * n) - 1]


def median_ci(xs: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the median of xs."""
    return bootstrap_95(lambda rng: statistics.median(rng.choices(xs, k=len(xs))), n, seed)


@dataclass
class Speed:
    """One mode's runs: steps/s of each run and each run's median step time (ms)."""

    steps_per_s: list[float]
    step_ms: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.steps_per_s)

    @property
    def best(self) -> float:
        return max(self.steps_per_s)

    @property
    def median_step_ms(self) -> float:
        return statistics.median(self.step_ms)

    def slowdowns(self, plain: Speed) -> tuple[float, float, float]:
        """% slower than plain by median steps/s, by best run (noise only slows a run down) and by
        median step time (the steps another tenant slowed do not move it)."""
        return (
            100 * (plain.median - self.median) / plain.median,
            100 * (plain.best - self.best) / plain.best,
            100 * (self.median_step_ms - plain.median_step_ms) / plain.median_step_ms,
        )


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    """cmd on a fixed CPU set (taskset -c CPUS): the same cores for every mode, so that where the
    scheduler happens to place a run does not decide its speed (seen: plain runs 958-1754 steps/s)."""
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


def summary_line(stdout: str, tag: str) -> dict | None:
    """The JSON after the last line starting with TAG (e.g. SERVE_SUMMARY), or None without one."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(tag + " ")]
    return json.loads(lines[-1].split(" ", 1)[1]) if lines else None


def serve_summary(stdout: str) -> dict | None:
    """serve.py's own account of the run (last SERVE_SUMMARY line), or None when it printed none."""
    return summary_line(stdout, "SERVE_SUMMARY")


def recorded(cmd: list[str], out: str | Path, opts: list[str]) -> list[str]:
    """cmd run under `cctrace record OPTS` into OUT (replaced if there), not loaded into DuckDB:
    the benchmarks time the traced program, not the analysis."""
    return [sys.executable, "-m", "cctrace", "record", "-q", "--no-load", "--force", "-o", str(out), *opts, "--", *cmd]


def run_serve(serve_args: list[str], record_opts: list[str] | None = None, cpus: str | None = None) -> dict:
    """Run serve.py (under `cctrace record RECORD_OPTS` into a fresh directory when given, on CPUS
    when given); its summary."""
    cmd = [sys.executable, SERVE, *serve_args]
    if record_opts is not None:
        cmd = recorded(cmd, tempfile.mkdtemp(prefix="cct-bench-"), record_opts)
    r = subprocess.run(pinned(cmd, cpus), capture_output=True, text=True, cwd=ROOT)
    s = serve_summary(r.stdout)
    if s is None:
        raise SystemExit(f"no SERVE_SUMMARY from {' '.join(cmd)}:\n{r.stderr[-2000:]}")
    return s
