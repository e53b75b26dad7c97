"""Load memory on a hostile shard, and what fingerprinting trace.duckdb costs.

A markers shard of N names of 1 MB each in one zstd batch is a few tens of KB on disk and N MB once
decompressed; `load` reads the batch's decompressed size from its metadata first and skips a batch over
a quarter of CCTRACE_MEMORY_LIMIT. Prints the shard size and the loader's peak RSS (in a fresh process)
at the default limit and at one that lets the batch through; then the HMAC time of a file of --mib MiB
(paid once per command on an existing trace.duckdb).

    python benchmarks/hostile_memory.py --names 2000 --mib 512
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LOAD = """
import json, resource, sys
from pathlib import Path
from cctrace.analyze.store import load
r = load(Path(sys.argv[1]))
print(json.dumps({"rows": r.rows["markers"], "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                  "problems": r.problems[:1]}))
"""


def hostile_shard(d: Path, names: int) -> Path:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from cctrace.trace import schema as S

    col = pa.array(["n" * (1 << 20)] * names)
    cols = {f.name: col if f.name == "name" else pa.nulls(names, f.type) for f in S.schema("markers")}
    table = pa.table(cols, schema=S.schema("markers"))
    path = d / "markers.1.arrows"
    with pa.OSFile(str(path), "wb") as f, ipc.new_stream(f, table.schema, options=ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(table)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--names", type=int, default=2000)
    ap.add_argument("--mib", type=int, default=512)
    args = ap.parse_args()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        # made in its own process: a child's peak RSS starts from its parent's (kept across fork and exec)
        make = f"from benchmarks.hostile_memory import hostile_shard; from pathlib import Path; hostile_shard(Path({tmp!r}), {args.names})"
        subprocess.run([sys.executable, "-c", make], env=env, check=True, cwd=ROOT)
        out["shard_bytes"] = (d / "markers.1.arrows").stat().st_size
        for limit in ("3GB", f"{args.names * 5}MB"):
            r = subprocess.run([sys.executable, "-c", LOAD, str(d)], env={**env, "CCTRACE_MEMORY_LIMIT": limit},
                               capture_output=True, text=True, check=True, cwd=ROOT)  # fmt: skip
            out[f"load_at_{limit}"] = json.loads(r.stdout)
        big = d / "trace.duckdb"
        with open(big, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        from cctrace.analyze.store import _digest

        t = time.perf_counter()
        _digest(big)
        out[f"hmac_{args.mib}_mib_s"] = round(time.perf_counter() - t, 2)
    print(json.dumps(out, indent=1))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "hostile_memory.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
