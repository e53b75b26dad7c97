"""Recording examples/serve.py on a real GPU: the trace must hold exactly what the script issued."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, cctrace, project_env

pytestmark = pytest.mark.gpu
SERVE = [
    sys.executable,
    str(ROOT / "examples" / "serve.py"),
    "--hidden",
    "512",
    "--layers",
    "2",
    "--vocab",
    "4096",
    "--batch",
    "8",
    "--max-blocks",
    "16",
    "--kv-blocks",
    "256",
    "--swap-blocks",
    "8",
]


def _summary(stdout: str) -> dict:
    line = [ln for ln in stdout.splitlines() if ln.startswith("SERVE_SUMMARY ")][-1]
    return json.loads(line.split(" ", 1)[1])


@pytest.fixture(scope="module")
def serve_trace(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "serve"
    r = cctrace(
        "record",
        "-o",
        str(out),
        "--nvtx",
        "--kernels",
        "--",
        *SERVE,
        "--steps",
        "40",
        "--swap-every",
        "10",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    return out, _summary(r.stdout), r


def _con(out):
    import duckdb

    return duckdb.connect(str(out / "trace.duckdb"), read_only=True)


def test_cupti_was_active_and_nothing_dropped(serve_trace):
    out, _, r = serve_trace
    m = json.loads((out / "manifest.json").read_text())
    main = [p for p in m["processes"] if p["cupti"] == "active"]
    assert main, r.stderr
    cupti = main[0]["sources"]["cupti"]
    assert cupti["dropped"] == 0
    assert not [e for e in cupti["errors"] if "buffer callback" in e], cupti["errors"]
    assert m["gpu"]["available"] and m["gpu"]["gpus"]


def test_one_nvtx_range_per_timed_step(serve_trace):
    out, s, _ = serve_trace
    n = _con(out).execute("SELECT count(*) FROM markers WHERE name LIKE 'step %'").fetchone()[0]
    assert n == s["steps"]


def test_h2d_and_d2h_counts_and_bytes_match_what_serve_issued(serve_trace):
    out, s, _ = serve_trace
    con = _con(out)
    window = con.execute("SELECT min(start_ns), max(end_ns) FROM markers WHERE name LIKE 'step %'").fetchone()
    q = """SELECT count(*), sum(bytes), count(*) FILTER (src_kind = 'pinned'), count(*) FILTER (src_kind = 'pageable')
           FROM copies_with_api WHERE copy_kind = ? AND api_start_ns BETWEEN ? AND ?"""
    h2d = con.execute(q, ["HtoD", *window]).fetchone()
    d2h = con.execute(q.replace("src_kind", "dst_kind"), ["DtoH", *window]).fetchone()
    t = s["issued_timed"]
    assert h2d[0] == t["h2d"] and h2d[1] == t["h2d_bytes"]
    assert h2d[2] == t["h2d_pinned"] and h2d[3] == t["h2d_pageable"]
    assert d2h[0] == t["d2h"] and d2h[1] == t["d2h_bytes"]
    # every copy was matched to the runtime call that issued it
    assert con.execute("SELECT count(*) FROM copies_with_api WHERE api_name IS NULL AND op='memcpy'").fetchone()[0] == 0


def test_clock_is_monotonic_and_copies_sit_inside_their_steps(serve_trace):
    out, _, _ = serve_trace
    con = _con(out)
    m = json.loads((out / "manifest.json").read_text())
    assert m["start_ns"] < con.execute("SELECT min(start_ns) FROM copies").fetchone()[0] < m["end_ns"]
    # the GPU never starts a copy before the host asked for it
    early = con.execute("SELECT count(*) FROM copies_with_api WHERE start_ns < api_start_ns").fetchone()[0]
    assert early == 0


def test_sigkilled_serve_leaves_loadable_shards(tmp_path):
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "cctrace",
        "record",
        "-o",
        str(out),
        "--flush-interval",
        "0.2",
        "--",
        *SERVE,
        "--steps",
        "1000000",
    ]
    errf = (tmp_path / "stderr.txt").open("w+")  # a file, not a pipe nobody reads while it runs
    p = subprocess.Popen(cmd, env=project_env(), stdout=subprocess.DEVNULL, stderr=errf, text=True)

    def written() -> int:  # shards, or the raw CUPTI buffers the C shim appends (decoded after the run)
        return sum(f.stat().st_size for f in [*out.glob("copies.*.arrows"), *out.glob("cupti.*.cuptiraw")])

    deadline = time.time() + 60
    while time.time() < deadline and not written() and p.poll() is None:
        time.sleep(0.2)
    time.sleep(2)

    def err() -> str:
        return (tmp_path / "stderr.txt").read_text()[-3000:]

    assert p.poll() is None, err()
    assert written() > 0, ({f.name: f.stat().st_size for f in out.iterdir()}, err())
    pids = [json.loads(f.read_text())["pid"] for f in out.glob("proc.*.json")]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert p.wait(timeout=120) == 128 + 9, err()
    r = cctrace("load", str(out), "--json")
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout)[0]
    sizes = {f.name: f.stat().st_size for f in out.iterdir()}
    assert loaded["rows"]["copies"] > 100, (loaded, sizes)


CHILDREN = """
import multiprocessing as mp, sys, torch
def work(n):
    x = torch.arange(n, dtype=torch.int64)
    for _ in range(n):
        x.to("cuda")
    torch.cuda.synchronize()
if __name__ == "__main__":
    for i, method in enumerate(("spawn", "fork")):  # the parent never touches CUDA, as vLLM's engine
        p = mp.get_context(method).Process(target=work, args=(10 + i,))
        p.start(); p.join(); assert p.exitcode == 0
"""


def test_spawn_workers_are_traced_and_fork_workers_exit_cleanly(tmp_path):
    """Spawned workers are traced by CUPTI; a forked one cannot be (CUPTI does not survive fork),
    and must say so and still run and exit normally (it used to hang at exit in CUPTI's flush)."""
    prog = tmp_path / "children.py"
    prog.write_text(CHILDREN)
    out = tmp_path / "children"
    r = cctrace("record", "-o", str(out), "--", sys.executable, str(prog), timeout=300)
    assert r.returncode == 0, r.stderr
    import duckdb

    con = duckdb.connect(str(out / "trace.duckdb"), read_only=True)
    per_pid = dict(con.execute("SELECT pid, count(*) FROM copies WHERE copy_kind='HtoD' GROUP BY pid").fetchall())
    assert sorted(per_pid.values()) == [10], (per_pid, r.stderr)  # the spawned worker
    procs = json.loads((out / "manifest.json").read_text())["processes"]
    forked = [p for p in procs if p.get("forked_from")]
    assert len(forked) == 1 and "fork" in forked[0]["cupti"] and forked[0]["exit_reason"] == "os._exit"


def test_emulated_bridge_puts_its_toll_inside_the_copy_calls(tmp_path):
    """--emulate-bridge: one toll per H2D/D2H crossing, counted in the manifest, and inside the
    CUPTI record of the call that issued the copy (where a real bridge puts it)."""
    out = tmp_path / "bridge"
    r = cctrace(
        "record",
        "-o",
        str(out),
        "--host-probes",
        "off",
        "--emulate-bridge",
        "toll-only,toll_us=200",
        "--",
        *SERVE,
        "--steps",
        "20",
        "--swap-every",
        "10",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    s = _summary(r.stdout)
    m = json.loads((out / "manifest.json").read_text())
    inj = m["bridge_emulation"]["injected"]
    issued = s["issued_total"]
    assert inj["h2d_toll_count"] == issued["h2d"] and inj["d2h_toll_count"] == issued["d2h"]
    assert inj["toll_ns"] == 200_000 * (issued["h2d"] + issued["d2h"])
    with _con(out) as con:
        durs = con.execute(
            "SELECT api_end_ns - api_start_ns FROM copies_with_api WHERE copy_kind IN ('HtoD', 'DtoH')"
        ).fetchall()
    assert len(durs) == issued["h2d"] + issued["d2h"]
    assert all(d >= 200_000 for (d,) in durs)


def test_host_probes_see_every_copy_cupti_sees(tmp_path):
    """CUPTI and the eBPF probes, recorded together on serve.py: one probed driver copy call per
    CUPTI H2D/D2H copy, with the same bytes (read from the shards: no duckdb needed)."""
    from cctrace.record.sources.host_probes import ProbesUnavailable, check_ready
    from cctrace.trace.shards import read_shard

    try:
        check_ready()
    except ProbesUnavailable as e:
        pytest.skip(f"host probes cannot run here: {e}")
    out = tmp_path / "merged"
    r = cctrace(
        "record", "-o", str(out), "--no-load", "--host-probes", "on", "--", *SERVE, "--steps", "20", timeout=600
    )
    assert r.returncode == 0, r.stderr

    def rows(table: str) -> list[dict]:
        return [row for f in out.glob(f"{table}.*.arrows") for row in read_shard(f).data.to_pylist()]

    cupti = sorted((c["copy_kind"], c["bytes"]) for c in rows("copies") if c["copy_kind"] in ("HtoD", "DtoH"))
    ebpf = sorted(
        (a["copy_kind"], a["bytes"])
        for a in rows("api_calls")
        if a["source"] == "ebpf" and a["copy_kind"] in ("HtoD", "DtoH")
    )
    assert cupti and ebpf == cupti
