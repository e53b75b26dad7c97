"""How long each analysis module takes to build on a long serving-like trace: tests/synth.py's loop
(small H2D crossings, copies issued together on 3 streams, stalls, alloc-and-copy, readbacks, kernels)
for STEPS steps, then every module of queries/ built once, in dependency order, with its time.

    python benchmarks/modules_scale.py --steps 20000     # ~300k events; any machine
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cctrace.analyze.analysis import Analysis, module_order  # noqa: E402
from tests.synth import Spec, generate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--query", action="append", default=["slow_steps", "step_timeline"], help="canned queries to time after")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cct-modules-"))
    try:
        t = time.perf_counter()
        generate(tmp / "t", Spec(steps=a.steps))
        print(f"{a.steps} steps generated and loaded in {time.perf_counter() - t:.1f} s", flush=True)
        an = Analysis(tmp / "t")
        try:
            for name in module_order():
                t = time.perf_counter()
                an.build((name,))
                print(f"module {name:<14} {time.perf_counter() - t:7.2f} s", flush=True)
            events = an.scalar("SELECT (SELECT count(*) FROM copies) + (SELECT count(*) FROM api_calls)")
            print(f"({events} copies and calls)")
            for q in a.query:
                t = time.perf_counter()
                n = len(an.rows(q))
                print(f"query  {q:<14} {time.perf_counter() - t:7.2f} s ({n} rows)", flush=True)
        finally:
            an.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
