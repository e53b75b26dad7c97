"""Host probes for real: bcc as root, against a small C library exporting CUDA driver symbol names.

The library's functions behave in known ways (sleep = off-CPU, spin = on-CPU, an NVIDIA-type ioctl on
/dev/null, write an allocated pointer, take the stream as the 9th, stack-passed argument), and a
real process calls them with known arguments. In CI (root, bcc installed by scripts/setup.sh) these
tests must run; elsewhere they skip with the reason.
"""

import json
import os
import subprocess
import textwrap

import duckdb
import pytest

from cctrace.analyze.store import load
from cctrace.record.sources.host_probes import HostProbes, ProbesUnavailable, check_ready
from tests.conftest import cctrace

# An off-CPU interval is two sched_switch events; now and then one is not seen (on this 2-core machine about
# one full run of this file in five lost one of its twenty 5 ms sleeps: that call showed all its time on-CPU,
# with no host wait). The kernel does not run a tracepoint's BPF program while another BPF program runs on
# that CPU, which is the likely cause; it is not confirmed. The assertions below allow one such call, no more:
# a broken split loses all twenty.
MISSED_SWITCHES = 1

LIB = r"""
#include <stdint.h>
#include <stddef.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/ioctl.h>
static void sleep_us(long us) { struct timespec ts = {us / 1000000, (us % 1000000) * 1000}; nanosleep(&ts, 0); }
/* spins for `us` of this thread's CPU time: on-CPU work that a loaded machine stretches but never shortens */
static void spin_us(long us) {
    struct timespec a, b; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    do { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b); } while ((b.tv_sec - a.tv_sec) * 1000000L + (b.tv_nsec - a.tv_nsec) / 1000 < us);
}
/* H2D: blocks off-CPU for bytes/1000 us; D2H: spins for bytes/1000 us of CPU time */
int cuMemcpyHtoDAsync_v2(uint64_t dst, const void *src, size_t n, void *stream) { sleep_us((long)(n / 1000)); return 0; }
int cuMemcpyDtoHAsync_v2(void *dst, uint64_t src, size_t n, void *stream) { spin_us((long)(n / 1000)); return 0; }
int cuStreamSynchronize(void *stream) {
    int fd = open("/dev/null", O_RDONLY);
    ioctl(fd, _IOWR('F', 42, uint64_t), 0);
    close(fd); sleep_us(1000); return 0;
}
int cuMemAlloc_v2(uint64_t *dptr, size_t bytes) { *dptr = 0x7f0000000000ULL + bytes; return 0; }
int cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned shmem, void *stream, void **params, void **extra) { return 7; }
"""

APP = r"""
#include <stdio.h>
#include <stdint.h>
#include <stddef.h>
int cuMemcpyHtoDAsync_v2(uint64_t, const void *, size_t, void *);
int cuMemcpyDtoHAsync_v2(void *, uint64_t, size_t, void *);
int cuStreamSynchronize(void *);
int cuMemAlloc_v2(uint64_t *, size_t);
int cuLaunchKernel(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **, void **);
int main(void) {
    char line[8]; if (!fgets(line, sizeof line, stdin)) return 1;  /* wait until traced */
    char buf[16]; uint64_t p;
    for (int i = 0; i < 20; i++) cuMemcpyHtoDAsync_v2(0x1000 + i, buf, 5000000, (void *)0xAB);  /* 5 ms off-CPU */
    for (int i = 0; i < 10; i++) cuMemcpyDtoHAsync_v2(buf, 0x2000, 3000000, (void *)0xCD);      /* 3 ms on-CPU */
    for (int i = 0; i < 5; i++) cuStreamSynchronize((void *)0xEF);
    cuMemAlloc_v2(&p, 4096);
    cuLaunchKernel(0, 1, 1, 1, 1, 1, 1, 0, (void *)0x5151, 0, 0);
    return 0;
}
"""


def _require_probes():
    try:
        check_ready()
    except ProbesUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"host probes must run in CI: {e}")
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def fake_cuda(tmp_path_factory):
    d = tmp_path_factory.mktemp("fakecuda")
    (d / "lib.c").write_text(LIB)
    (d / "app.c").write_text(APP)
    subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", str(d / "libcuda.so.1"), str(d / "lib.c")], check=True)
    subprocess.run(
        ["cc", "-O1", "-o", str(d / "app"), str(d / "app.c"), str(d / "libcuda.so.1"), f"-Wl,-rpath,{d}"], check=True
    )
    return d


@pytest.mark.root
def test_probes_see_each_call_with_arguments_and_split(tmp_path, fake_cuda):
    _require_probes()
    probes = HostProbes(tmp_path, libcuda=str(fake_cuda / "libcuda.so.1"), flush_s=0.2, launches=True)
    probes.start()
    app = subprocess.Popen([str(fake_cuda / "app")], stdin=subprocess.PIPE, text=True)
    probes.trace_pid(app.pid)
    app.communicate("go\n", timeout=60)
    health = probes.stop()
    assert app.returncode == 0
    assert health["lost"] == 0 and health["attached"] == 5, health
    load(tmp_path)
    con = duckdb.connect(str(tmp_path / "trace.duckdb"), read_only=True)
    rows = con.execute("""SELECT name, count(*), min(bytes), max(bytes), min(copy_kind), min(stream), min(pid),
                                 median(end_ns - start_ns), median(off_cpu_ns), median(on_cpu_ns), min(return_value)
                          FROM api_calls WHERE source = 'ebpf' GROUP BY name""").fetchall()
    got = {r[0]: r[1:] for r in rows}
    h2d, d2h, sync = got["cuMemcpyHtoDAsync_v2"], got["cuMemcpyDtoHAsync_v2"], got["cuStreamSynchronize"]
    assert h2d[:6] == (20, 5_000_000, 5_000_000, "HtoD", 0xAB, app.pid)
    assert d2h[:5] == (10, 3_000_000, 3_000_000, "DtoH", 0xCD)
    assert sync[0] == 5 and sync[4] == 0xEF
    # the on/off-CPU split: sleeping is off-CPU, spinning is on-CPU (no upper bound: load stretches both)
    assert h2d[6] >= 5.0e6 and h2d[7] >= 0.95 * 5.0e6 and h2d[8] < h2d[7]
    assert d2h[6] >= 3.0e6 and d2h[8] >= 0.95 * 3.0e6
    alloc = con.execute("SELECT bytes, ptr FROM api_calls WHERE name = 'cuMemAlloc_v2'").fetchone()
    assert alloc == (4096, 0x7F0000000000 + 4096)  # the pointer the call wrote, read on return
    launch = con.execute("SELECT stream, return_value FROM api_calls WHERE name = 'cuLaunchKernel'").fetchone()
    assert launch == (0x5151, 7)  # 9th argument, from the stack
    ioc = con.execute("SELECT count(*), min(request), min(in_call) FROM ioctls").fetchone()
    assert ioc[0] == 5 and (ioc[1] >> 8) & 0xFF == ord("F") and ioc[2] == "cuStreamSynchronize"
    waits = con.execute(
        "SELECT count(*), sum(end_ns - start_ns) FROM host_waits WHERE in_call = 'cuMemcpyHtoDAsync_v2'"
    ).fetchone()
    assert waits[0] >= 20 - MISSED_SWITCHES and waits[1] >= 0.8 * (20 - MISSED_SWITCHES) * 5e6


@pytest.mark.root
def test_untraced_processes_are_ignored_and_children_followed(tmp_path, fake_cuda):
    _require_probes()
    probes = HostProbes(tmp_path, libcuda=str(fake_cuda / "libcuda.so.1"), flush_s=0.2)
    probes.start()
    other = subprocess.Popen([str(fake_cuda / "app")], stdin=subprocess.PIPE, text=True)  # never traced
    script = textwrap.dedent(f"""
        import subprocess, sys
        sys.stdin.readline()
        subprocess.run([{str(fake_cuda / "app")!r}], input="go\\n", text=True, check=True)
    """)
    import sys

    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, text=True)
    probes.trace_pid(parent.pid)
    parent.communicate("go\n", timeout=60)
    other.communicate("go\n", timeout=60)
    probes.stop()
    load(tmp_path)
    con = duckdb.connect(str(tmp_path / "trace.duckdb"), read_only=True)
    pids = {r[0] for r in con.execute("SELECT DISTINCT pid FROM api_calls").fetchall()}
    assert other.pid not in pids
    assert len(pids) == 1 and pids != {parent.pid}  # the child the traced parent started
    assert con.execute("SELECT count(*) FROM api_calls WHERE name = 'cuMemcpyHtoDAsync_v2'").fetchone()[0] == 20
    # launches are probed only when asked (--probe-launches): by default the app's launch is not seen
    assert con.execute("SELECT count(*) FROM api_calls WHERE name LIKE 'cuLaunch%'").fetchone()[0] == 0


@pytest.mark.root
def test_record_with_host_probes_and_report_on_it(tmp_path, fake_cuda):
    _require_probes()
    import json
    import sys

    from tests.conftest import cctrace

    wrapper = f"import subprocess, time; time.sleep(0.5); subprocess.run([{str(fake_cuda / 'app')!r}], input='go\\n', text=True, check=True)"
    out = tmp_path / "rec"
    r = cctrace(
        "record",
        "-o",
        str(out),
        "--host-probes",
        "on",
        "--interpose",
        "off",  # the uprobe path: with the interposer on, the probes leave the calls to it
        "--",
        sys.executable,
        "-c",
        wrapper,
        env={"CCTRACE_LIBCUDA": str(fake_cuda / "libcuda.so.1")},
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    hp = m["options"]["host_probes"]
    # 20 H2D, 10 D2H, 5 syncs, 1 alloc; the launch is not probed without --probe-launches
    assert hp["state"] == "active" and hp["events"]["calls"] == 20 + 10 + 5 + 1 and hp["lost"] == 0
    assert hp["launches"] is False
    # the fake app has no steps: the whole recording is the window (a detector's pick would vary with load)
    rep = cctrace("report", str(out), "--json", "--param", "normal_call_us=100", "--param", "steps_from=none")
    assert rep.returncode == 0, rep.stderr
    j = json.loads(rep.stdout)
    cats = {c["category"]: c for c in j["categories"]}
    # host-only copies: bytes and direction from the probed arguments. The H2D calls sleep 5 ms
    # (off-CPU: waiting, an async stall); the D2H calls spin in proportion to their bytes (on-CPU:
    # the crossing's own work, which the fitted model explains)
    stalls = {r["name"]: r for r in j["top"]["async_stalls"]}
    assert stalls["cuMemcpyHtoDAsync_v2"]["stalled_calls"] == 20
    # each sleeps >= 5 ms
    assert stalls["cuMemcpyHtoDAsync_v2"]["stall_ms"] >= (20 - MISSED_SWITCHES) * (5.0 - 0.1) * 0.99
    # the D2H spin is the crossing's own work: beyond the time it was preempted (off-CPU), only what
    # stretches on-CPU work without a switch (interrupts, the probes' own traps, the model's fit over
    # ten calls, a preemption whose switch was missed) may be a stall: under 10% of the 10 x 3 ms spun,
    # an order below the H2D calls' 100 ms (the runs seen here: 0.3-2.6 ms)
    d2h = stalls.get("cuMemcpyDtoHAsync_v2", {"stall_ms": 0, "off_cpu_ms": 0})
    assert d2h["stall_ms"] - d2h["off_cpu_ms"] <= 0.10 * 10 * 3.0
    assert cats["sync_waits"]["events"] == 5


@pytest.mark.root
def test_attach_to_a_running_process(tmp_path, fake_cuda):
    _require_probes()
    import sys

    from tests.conftest import project_env

    # the app waits for a line on stdin: it starts its calls once attach says it is attached, however
    # long attaching takes on a loaded machine
    app = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; sys.stdin.readline(); "
            f"subprocess.run([{str(fake_cuda / 'app')!r}], input='go\\n', text=True)",
        ],
        stdin=subprocess.PIPE,
        text=True,
    )
    out = tmp_path / "att"
    lib = str(fake_cuda / "libcuda.so.1")
    cmd = [sys.executable, "-m", "cctrace", "attach", "--pid", str(app.pid), "-o", str(out), "--libcuda", lib]
    att = subprocess.Popen([*cmd, "--probe-launches"], stderr=subprocess.PIPE, text=True, env=project_env())
    first = ""
    for line in att.stderr:  # until attached, or attach gave up (its stderr closes)
        first += line
        if "attached to pid" in line:
            break
    app.communicate("go\n", timeout=120)
    rest = att.stderr.read()  # the same buffered reader: nothing read ahead is lost
    r = subprocess.CompletedProcess(att.args, att.wait(timeout=120), "", first + rest)
    assert r.returncode == 0, r.stderr
    assert "(5 entry points" in r.stderr and "37 calls" in r.stderr  # the launch too, as asked
    con = duckdb.connect(str(out / "trace.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM api_calls WHERE source = 'ebpf'").fetchone()[0] == 37
    # attach traced one window (its record's life): every probed call inside it, so all analysed
    ((start, end),) = con.execute("SELECT start_ns, end_ns FROM traced_windows").fetchall()
    inside = "SELECT count(*) FROM api_calls WHERE start_ns >= ? AND end_ns <= ?"
    assert con.execute(inside, [start, end]).fetchone()[0] == 37
    con.close()
    rep = json.loads(cctrace("report", "--json", str(out)).stdout)
    assert rep["traced"]["windows"] == 1 and rep["traced"]["traced_ms"] <= rep["traced"]["run_ms"]


def test_host_probes_on_without_root_or_bcc_is_a_clear_error(tmp_path, monkeypatch):
    from cctrace.record.launcher import RecordError, start_probes

    monkeypatch.setenv("CCTRACE_LIBCUDA", str(tmp_path / "missing.so"))
    with pytest.raises(RecordError, match="host probes cannot run"):
        start_probes(tmp_path, "on", 1.0)
    probes, health = start_probes(tmp_path, "auto", 1.0)
    assert probes is None and health["state"].startswith("off: ")


def test_doctor_explains_each_piece():
    import json

    from tests.conftest import cctrace

    r = cctrace("doctor", "--json")
    checks = {c["check"]: c for c in json.loads(r.stdout)}
    assert {"GPU and driver", "cupti-python", "bcc", "kernel headers", "tracefs", "privileges"} <= set(checks)
    failed = [c for c in checks.values() if c["status"] != "ok"]
    assert r.returncode == (1 if failed else 0)
    assert all(c["fix"] for c in failed)
    text = cctrace("doctor")
    assert "kernel headers" in text.stdout and "Traceback" not in text.stderr
