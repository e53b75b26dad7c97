"""The driver interposer for real, without a GPU: compiled with `cc`, preloaded into a C program that calls a
stand-in libcuda (tests/native/fake_libcuda.c) three ways (linked directly, through dlsym, through
cuGetProcAddress_v2 as the CUDA 12+ runtime does), then decoded into the trace tables and checked
row by row: counts, bytes, directions, memory kinds (from cuPointerGetAttributes), syncs, the
per-thread-stream entry point, captured copies (no copies row) and graph replays (one row per crossing
per launch, sharing the launch's correlation id). Also: fork, threads past a full ring, standby switched
on from Python, pass-through when not tracing, and `cctrace record --interpose on` end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import ROOT, project_env, run_answering, toggle_when_asked

from cctrace.analyze.categories import CATEGORIES
from cctrace.record import native as N
from cctrace.record.sources import interposer as I
from cctrace.trace import handoff as H
from cctrace.trace.shards import read_shard

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")
NATIVE = Path(__file__).parent / "native"
MODES = ("direct", "dlsym", "gpa")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fakecuda")
    lib = d / "libcuda.so.1"
    # -Bsymbolic: like the real driver, the library's own answers point at its own functions
    subprocess.run(
        ["cc", "-O1", "-shared", "-fPIC", "-Wl,-Bsymbolic", "-o", str(lib), str(NATIVE / "fake_libcuda.c")], check=True
    )
    app = NATIVE / "fake_app.c"
    subprocess.run(["cc", "-O1", "-o", str(d / "app"), str(app), "-ldl", "-lpthread"], check=True)
    subprocess.run(
        [
            "cc",
            "-O1",
            "-DDIRECT",
            "-o",
            str(d / "app_direct"),
            str(app),
            str(lib),
            f"-Wl,-rpath,{d}",
            "-ldl",
            "-lpthread",
        ],
        check=True,
    )
    native_thread = d / "libnative_thread.so"
    subprocess.run(
        ["cc", "-O1", "-shared", "-fPIC", "-o", str(native_thread), str(NATIVE / "native_thread.c"), "-ldl", "-lpthread"],
        check=True,
    )
    interposer = N.build_native(N.INTERPOSE_SOURCE)
    return {"dir": d, "lib": lib, "interposer": interposer, "native_thread": native_thread}


def _run(built: dict, trace: Path, mode: str, *extra: str, interpose: str = "on") -> subprocess.CompletedProcess:
    trace.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(H.PREFIX)}
    env |= {"LD_PRELOAD": str(built["interposer"]), H.DIR.name: str(trace), H.FLUSH_S.name: "0.05"}
    if interpose:
        env[H.INTERPOSE.name] = interpose
    exe = built["dir"] / ("app_direct" if mode == "direct" else "app")
    return subprocess.run(
        [str(exe), mode, str(built["lib"]), *extra], env=env, capture_output=True, text=True, check=True, timeout=60
    )


def _tables(trace: Path) -> dict[str, pa.Table]:
    out: dict[str, list[pa.Table]] = {}
    for p in sorted(trace.glob("*.arrows")):
        r = read_shard(p)
        out.setdefault(r.table, []).append(r.data)
    return {t: pa.concat_tables(v) for t, v in out.items()}


def _rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


@pytest.mark.parametrize("mode", MODES)
def test_every_way_to_the_driver_is_recorded(built, tmp_path, mode) -> None:
    trace = tmp_path / mode
    assert _run(built, trace, mode).stdout == f"done {mode}\n"
    assert len(I.raw_files(trace)) == 1
    assert I.decode_trace(trace) == []
    assert I.raw_files(trace) == []  # decoded files are removed
    t = _tables(trace)

    calls = _rows(t["api_calls"])
    assert len(calls) == 26
    assert {c["source"] for c in calls} == {"interposer"} and {c["domain"] for c in calls} == {"driver"}
    names = [c["name"] for c in calls]
    assert names.count("cuMemcpyHtoDAsync_v2") == 3  # two direct, one captured
    assert names.count("cuMemcpyHtoDAsync_v2_ptsz") == 1  # the per-thread-stream entry point kept its own
    assert names.count("cuGraphLaunch") == 5 and names.count("cuGraphInstantiateWithFlags") == 1
    # CUDA 13: the runtime asks cuGetProcAddress for cuCtxSynchronize at 13000 and gets the versioned entry
    assert names.count("cuCtxSynchronize") == 1 and names.count("cuCtxSynchronize_v2") == 1
    assert all(c["return_value"] == 0 and c["end_ns"] >= c["start_ns"] for c in calls)
    assert all(c["bytes"] is None for c in calls if c["name"] in ("cuStreamSynchronize", "cuCtxSynchronize"))

    copies = _rows(t["copies"])
    h2d = [c for c in copies if c["copy_kind"] == "HtoD"]
    assert sorted((c["bytes"], c["src_kind"], c["dst_kind"]) for c in h2d) == sorted(
        [(4096, "pinned", "device")] * 3
        + [(8192, "pageable", "device")] * 2
        + [(512, "pageable", "device")]  # cuMemcpyAsync: direction from the pointers' kinds
        + [(2048, "pinned", "device")] * 5  # replayed by the 5 graph launches
    )
    assert [(c["bytes"], c["src_kind"], c["dst_kind"]) for c in copies if c["copy_kind"] == "DtoH"] == [
        (1000, "device", "pinned")
    ]
    sets = [c for c in copies if c["op"] == "memset"]
    assert sorted(c["bytes"] for c in sets) == [256] * 5 + [1024]
    assert {c["copy_kind"] for c in sets} == {"memset"}
    assert len(copies) == 11 + 1 + 6  # the captured copy and memset moved nothing: no rows
    # each launch's replayed crossings carry its correlation id
    launches = {c["correlation_id"] for c in calls if c["name"] == "cuGraphLaunch"}
    replayed = [c for c in copies if c["correlation_id"] in launches]
    assert len(replayed) == 10 and len(launches) == 5
    assert {c["stream_id"] for c in replayed} == {0xCD}

    allocs = _rows(t["allocs"])
    assert sorted((a["op"], a["memory_kind"], a["bytes"]) for a in allocs) == [
        ("alloc", "device", 1 << 20),
        ("alloc", "pinned", 4096),
        ("free", "device", None),
        ("free", "pinned", None),
    ]
    syncs = _rows(t["syncs"])
    assert sorted((s["sync_type"], s["stream_id"], s["event_id"]) for s in syncs) == [
        ("context", 0, None),
        ("context", 0, None),  # cuCtxSynchronize and CUDA 13's cuCtxSynchronize_v2 (its context is no event)
        ("event", 0, 0xE1),
        ("stream", 0xAB, None),
    ]
    stream_sync = next(s for s in syncs if s["sync_type"] == "stream")
    assert stream_sync["end_ns"] - stream_sync["start_ns"] >= 1_000_000  # the stand-in sleeps 1 ms inside

    assert {c["stack_id"] for c in calls} == {None}  # a C program: no stacks

    proc = json.loads((trace / next(p.name for p in trace.glob("proc.*.json"))).read_text())
    health = proc["sources"]["interposer"]
    assert health["records"] == {"calls": 36} and health["decoded_records"] == 36 and health["dropped"] == 0
    assert health["unmatched_symbols"] == 0 and health["graph_crossings"] == 2


def test_not_tracing_passes_calls_through(built, tmp_path) -> None:
    trace = tmp_path / "t"
    assert _run(built, trace, "gpa", interpose="").stdout == "done gpa\n"
    assert list(trace.iterdir()) == []


def test_a_forked_child_writes_its_own_file(built, tmp_path) -> None:
    trace = tmp_path / "t"
    _run(built, trace, "dlsym", "fork")
    files = I.raw_files(trace)
    assert len(files) == 2
    counts = {}
    for f in files:
        _header, rec, stats, _problems, _stacks = I.read_raw(f)
        counts[len(rec)] = stats["records"]
    assert counts == {36: 36, 2: 2}  # the child's alloc and sync only, none of its parent's


def test_threads_past_a_full_ring_lose_nothing(built, tmp_path) -> None:
    trace = tmp_path / "t"
    _run(built, trace, "gpa", "threads")
    _header, rec, stats, problems, _stacks = I.read_raw(I.raw_files(trace)[0])
    assert problems == [] and stats["lost"] == 0
    assert len(rec) == 36 + 4 * 10000
    assert len(set(rec["tid"].tolist())) == 5


def test_standby_records_only_once_switched_on(built, tmp_path) -> None:
    """Python reaches the driver through dlsym (ctypes); the tracer's InterposerSource switches it on."""
    trace = tmp_path / "t"
    trace.mkdir()
    code = f"""
import ctypes
from cctrace.record.sources.interposer import InterposerSource
lib = ctypes.CDLL({str(built["lib"])!r})
lib.cuCtxSynchronize()
src = InterposerSource({str(built["interposer"])!r}, "standby")
src.start(cupti_running=False)
for _ in range(3):
    lib.cuCtxSynchronize()
src.stop()
print(src.health()["state"], src.health()["records"]["calls"])
"""
    env = project_env() | {
        "LD_PRELOAD": str(built["interposer"]),
        H.DIR.name: str(trace),
        H.INTERPOSE.name: "standby",
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["active:", "CUPTI", "is", "off", "in", "this", "process", "3"]
    rec = I.read_raw(I.raw_files(trace)[0]).records
    assert len(rec) == 3


def test_record_interpose_on_end_to_end(built, tmp_path) -> None:
    """`cctrace record --kinds none --interpose on`: the CUPTI-free mode, on a program that is not Python."""
    out = tmp_path / "rec"
    r = subprocess.run(
        [sys.executable, "-m", "cctrace", "record", "-o", str(out), "--kinds", "none", "--interpose", "on",
         "--host-probes", "off", "--no-load", "--json", "--", str(built["dir"] / "app"), "gpa", str(built["lib"])],
        env=project_env(), capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["interpose"]["mode"] == "on"
    assert manifest["options"]["interpose"]["decode"]["raw_files"] == 1
    t = _tables(out)
    assert t["api_calls"].num_rows == 26 and t["copies"].num_rows == 18
    assert set(t["copies"].column("source").to_pylist()) == {"interposer"}
    # no Python in it, so no tracer switched stacks on: every call recorded, none with a stack
    assert set(t["api_calls"].column("stack_id").to_pylist()) == {None} and "stacks" not in t


def test_interpose_off_preloads_nothing(tmp_path) -> None:
    from cctrace.record.launcher import RecordOptions, child_environment, plan_interposer

    plan = plan_interposer(RecordOptions(interpose="off"))
    env = child_environment(tmp_path, RecordOptions(interpose="off"), base={}, interposer=plan)
    assert "LD_PRELOAD" not in env and H.INTERPOSE.name not in env
    plan = plan_interposer(RecordOptions(kinds=(), interpose="auto"))
    assert plan["mode"] == "on" and "--kinds none" in plan["why"]
    env = child_environment(tmp_path, RecordOptions(kinds=()), base={"LD_PRELOAD": "/x.so"}, interposer=plan)
    assert env["LD_PRELOAD"] == f"{plan['lib']} /x.so" and env[H.INTERPOSE.name] == "on"


def test_libcuda_found_as_the_loader_finds_it(built, tmp_path, monkeypatch) -> None:
    from cctrace.record.sources.host_probes import find_libcuda, from_loader_cache

    monkeypatch.delenv(H.LIBCUDA.name, raising=False)
    compat = tmp_path / "compat"
    compat.mkdir()
    shutil.copy(built["lib"], compat / "libcuda.so.1")
    # a forward-compatible driver on LD_LIBRARY_PATH wins over the loader cache
    got = find_libcuda(env={"LD_LIBRARY_PATH": f"/nonexistent::{compat}"})
    assert got == str((compat / "libcuda.so.1").resolve())
    listing = (
        "3 libs found in cache `/etc/ld.so.cache'\n"
        "\tlibcudart.so.12 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcudart.so.12\n"
        "\tlibcuda.so.1 (libc6,AArch64) => /usr/lib/aarch64-linux-gnu/libcuda.so.1\n"
        "\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1\n"
    )
    assert from_loader_cache(listing, "x86_64") == "/usr/lib/x86_64-linux-gnu/libcuda.so.1"
    assert from_loader_cache(listing, "aarch64") == "/usr/lib/aarch64-linux-gnu/libcuda.so.1"
    assert from_loader_cache("\tlibcudart.so.12 (libc6,x86-64) => /x\n", "x86_64") is None
    # attach: the library the process mapped, whatever the loader would pick now
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import ctypes, sys; ctypes.CDLL({str(compat / 'libcuda.so.1')!r}); print(1, flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "1"
        assert find_libcuda(holder.pid, env={}) == str((compat / "libcuda.so.1").resolve())
    finally:
        holder.communicate("")


def test_doctor_says_whether_interposition_works_here(built) -> None:
    env = project_env() | {H.LIBCUDA.name: str(built["lib"])}
    r = subprocess.run(
        [sys.executable, "-m", "cctrace", "doctor", "--json"], env=env, capture_output=True, text=True, timeout=300
    )
    checks = {c["check"]: c for c in json.loads(r.stdout)}
    got = checks["driver interposer (record without CUPTI)"]
    assert got["status"] == "ok" and str(built["lib"]) in got["detail"]
    trap = checks["uprobe trap cost (attach)"]
    if os.geteuid() == 0 and trap["status"] == "ok":
        assert float(trap["detail"].split()[0]) > 0


def test_rtld_next_keeps_meaning_after_the_caller(built, tmp_path) -> None:
    """A library loaded after the interposer that wraps a libc function finds libc's through
    dlsym(RTLD_NEXT), not itself (which recursed until the stack ran out)."""
    (tmp_path / "libx.c").write_text(
        "#define _GNU_SOURCE\n#include <dlfcn.h>\n#include <stdio.h>\n"
        "int puts(const char *s) { static int (*real)(const char *);\n"
        '  if (!real) real = (int (*)(const char *))dlsym(RTLD_NEXT, "puts");\n'
        '  fputs("[x] ", stdout); return real(s); }\n'
    )
    (tmp_path / "app.c").write_text('#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n')
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-o", str(tmp_path / "libx.so"), str(tmp_path / "libx.c"), "-ldl"], check=True
    )
    subprocess.run(
        ["cc", "-o", str(tmp_path / "app"), str(tmp_path / "app.c"), f"-L{tmp_path}", "-lx", f"-Wl,-rpath,{tmp_path}"],
        check=True,
    )
    env = dict(os.environ, LD_PRELOAD=str(built["interposer"]))
    r = subprocess.run([str(tmp_path / "app")], env=env, capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout) == (0, "[x] hi\n")


@pytest.mark.root
def test_kernel_view_joined_to_interposed_calls(tmp_path) -> None:
    """--interpose on with host probes: no uprobes (no trap per call), and the off-CPU time the kernel
    saw lands on the interposed calls it fell in (the stand-in's H2D call sleeps 5 ms)."""
    from tests.test_host_probes import APP, LIB, MISSED_SWITCHES, _require_probes

    _require_probes()
    (tmp_path / "lib.c").write_text(LIB)
    (tmp_path / "app.c").write_text(APP)
    lib = tmp_path / "libcuda.so.1"
    subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "lib.c")], check=True)
    subprocess.run(
        ["cc", "-O1", "-o", str(tmp_path / "app"), str(tmp_path / "app.c"), str(lib), f"-Wl,-rpath,{tmp_path}"],
        check=True,
    )
    wrapper = f"import subprocess; subprocess.run([{str(tmp_path / 'app')!r}], input='go\\n', text=True, check=True)"
    out = tmp_path / "rec"
    r = subprocess.run(
        [sys.executable, "-m", "cctrace", "record", "-o", str(out), "--no-load", "--kinds", "none", "--interpose", "on",
         "--host-probes", "on", "--", sys.executable, "-c", wrapper],
        env=project_env(), capture_output=True, text=True, timeout=180, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    hp = json.loads((out / "manifest.json").read_text())["options"]["host_probes"]
    assert hp["state"] == "active" and hp["uprobes"] is False and hp["attached"] == 0
    t = _tables(out)
    calls = _rows(t["api_calls"])
    assert {c["source"] for c in calls} == {"interposer"}  # the probes recorded no calls themselves
    h2d = [c for c in calls if c["name"] == "cuMemcpyHtoDAsync_v2"]
    assert len(h2d) == 20
    assert all(c["on_cpu_ns"] == c["end_ns"] - c["start_ns"] - c["off_cpu_ns"] for c in h2d)
    # every 5 ms sleep off-CPU, but for at most one whose sched_switch was missed (tests/test_host_probes.py)
    assert sum(c["off_cpu_ns"] == 0 for c in h2d) <= MISSED_SWITCHES
    assert sum(c["off_cpu_ns"] for c in h2d) >= (20 - MISSED_SWITCHES) * 4_000_000
    assert t["host_waits"].num_rows >= 20 - MISSED_SWITCHES
    sync = [c for c in calls if c["name"] == "cuStreamSynchronize"]
    assert len(sync) == 5 and all(c["ioctl_ns"] > 0 for c in sync)  # each makes one NVIDIA-type ioctl


def test_bridge_emulator_on_the_interposer_without_cupti(built, tmp_path) -> None:
    """--emulate-bridge with --kinds none --interpose on: the emulator acts through the interposer's
    CUPTI-shaped callbacks, its tolls land inside the interposed calls, and its ground truth is kept."""
    code = """
import ctypes
cuda = ctypes.CDLL("libcuda.so.1")
buf = ctypes.create_string_buffer(4096)
for _ in range(5):
    cuda.cuMemcpyHtoDAsync_v2(ctypes.c_uint64(0x7f0000001000), buf, ctypes.c_size_t(4096), ctypes.c_void_p(0xAB))
for _ in range(3):
    cuda.cuMemcpyDtoHAsync_v2(buf, ctypes.c_uint64(0x7f0000001000), ctypes.c_size_t(1000), ctypes.c_void_p(0xAB))
"""
    out = tmp_path / "rec"
    env = project_env() | {"LD_LIBRARY_PATH": str(built["dir"])}
    r = subprocess.run(
        [sys.executable, "-m", "cctrace", "record", "-o", str(out), "--no-load", "--kinds", "none", "--interpose", "on",
         "--host-probes", "off", "--emulate-bridge", "toll_us=2000,bw_ratio=1,serialize=off,async_block=off",
         "--", sys.executable, "-c", code],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    inj = m["bridge_emulation"]["injected"]
    assert (inj["h2d_toll_count"], inj["d2h_toll_count"], inj["errors"]) == (5, 3, 0), inj
    t = _tables(out)
    rows = _rows(t["bridge_injections"])
    assert sorted((x["call"], x["direction"], x["ns"]) for x in rows if x["kind"] == "toll") == sorted(
        [("cuMemcpyHtoDAsync_v2", "h2d", 2_000_000)] * 5 + [("cuMemcpyDtoHAsync_v2", "d2h", 2_000_000)] * 3
    )
    calls = [c for c in _rows(t["api_calls"]) if c["name"].startswith("cuMemcpy")]
    assert len(calls) == 8 and all(c["end_ns"] - c["start_ns"] >= 2_000_000 for c in calls)  # the toll is inside
    for x in rows:  # each injection lies inside an interposed call of its thread
        assert any(c["tid"] == x["tid"] and c["start_ns"] <= x["ts_ns"] <= c["end_ns"] for c in calls), x


# ---- Python call sites of interposed calls (issue 17: the CUPTI-free path) --------------------------------
APP = NATIVE / "callsites_app.py"
OPS = NATIVE / "fakeframework" / "ops.py"


def _site(path: Path, marker: str) -> tuple[str, int]:
    """(file, line) of the line of `path` marked `# SITE-marker` (no test hard-codes a line number)."""
    (line,) = [i for i, t in enumerate(path.read_text().splitlines(), 1) if t.rstrip().endswith(f"# SITE-{marker}")]
    return str(path), line


def _record_app(built, out: Path, *opts: str, steps: int = 4, native: bool = True, fork: bool = True):
    """`cctrace record --kinds none --interpose on` of callsites_app.py against the stand-in libcuda."""
    args = [str(APP), str(steps), str(built["native_thread"]) if native else "-", *(["fork"] if fork else [])]
    env = project_env() | {"LD_LIBRARY_PATH": str(built["dir"])}
    r = subprocess.run(
        [sys.executable, "-m", "cctrace", "record", "-o", str(out), "--kinds", "none", "--interpose", "on",
         "--host-probes", "off", *opts, "--", sys.executable, *args],
        env=env, capture_output=True, text=True, timeout=180, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r


def _callsites(t: dict[str, pa.Table]) -> dict[tuple[int, int], tuple[str, int, str]]:
    """(pid, stack_id) -> the call site (file, line, function) of each recorded stack."""
    return {
        (s["pid"], s["stack_id"]): (s["file"], s["line"], s["function"])
        for s in _rows(t["stacks"])
        if s["is_callsite"]
    }


@pytest.fixture(scope="module")
def app_trace(built, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("callsites") / "rec"
    _record_app(built, out)
    return out


def test_interposed_calls_name_the_python_lines_that_made_them(app_trace) -> None:
    """Each call names exactly the line it was made from: main thread, a worker thread, a framework's
    frame (the innermost outside the default skip list), a forked child (its own stacks); a thread with
    no Python records its calls with no stack, and the stacks never share ids with CUPTI's."""
    t = _tables(app_trace)
    sites = _callsites(t)
    assert {s["source"] for s in _rows(t["stacks"])} == {"interposer"}
    assert min(sid for _pid, sid in sites) > I.STACK_ID_BASE  # above every CUPTI shim id (u32)
    calls = _rows(t["api_calls"])
    by_name: dict[str, list[tuple]] = {}
    for c in calls:
        site = sites.get((c["pid"], c["stack_id"])) if c["stack_id"] is not None else None
        by_name.setdefault(c["name"], []).append((c["pid"], c["tid"], site))

    def only(name: str) -> set:
        return {site for _pid, _tid, site in by_name[name]}

    assert len(by_name["cuMemcpyHtoDAsync_v2"]) == 4 and only("cuMemcpyHtoDAsync_v2") == {(*_site(OPS, "OPS"), "copy_in")}
    assert only("cuMemcpyDtoHAsync_v2") == {(*_site(APP, "D2H"), "read_token")}
    assert only("cuStreamSynchronize") == {(*_site(APP, "SYNC"), "read_token")}
    assert len(by_name["cuCtxSynchronize"]) == 5 and only("cuCtxSynchronize") == {(*_site(APP, "THREAD"), "worker")}
    main_tid = by_name["cuStreamSynchronize"][0][1]
    assert {tid for _p, tid, _s in by_name["cuCtxSynchronize"]} - {main_tid}  # the worker's own thread
    # the whole stack is kept: the input copy's next frame is the application's line that called the framework
    h2d = next(c for c in calls if c["name"] == "cuMemcpyHtoDAsync_v2")
    frames = sorted((s["depth"], s["file"], s["line"]) for s in _rows(t["stacks"])
                    if (s["pid"], s["stack_id"]) == (h2d["pid"], h2d["stack_id"]))  # fmt: skip
    assert [f[1:] for f in frames[:2]] == [_site(OPS, "OPS"), _site(APP, "H2D")]

    events = by_name["cuEventSynchronize"]
    parent = h2d["pid"]
    native = [e for e in events if e[0] == parent]
    assert len(native) == 3 and {e[2] for e in native} == {None}  # a thread that never ran Python: stack 0
    (child,) = [e for e in events if e[0] != parent]
    assert child[2] == (*_site(APP, "CHILD"), "main")
    child_ids = {sid for pid, sid in sites if pid == child[0]}
    assert min(child_ids) == I.STACK_ID_BASE + 1  # the child's table started again after fork

    m = json.loads((app_trace / "manifest.json").read_text())
    assert m["stacks"]["captured"] is True and set(m["stacks"]["processes"].values()) == {"on"}
    assert m["stacks"]["calls_without_python"] == 3  # the native thread's calls


def test_report_and_callsites_query_name_the_line(app_trace) -> None:
    from tests.conftest import cctrace

    r = cctrace("query", "callsites", str(app_trace), "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    rows = rows["rows"] if isinstance(rows, dict) else rows
    file, line = _site(APP, "SYNC")
    waits = [x for x in rows if x["callsite"] == f"{file}:{line}" and x["category"] == "sync_waits"]
    assert len(waits) == 1 and waits[0]["function"] == "read_token" and waits[0]["calls"] >= 3
    report = cctrace("report", str(app_trace))
    assert report.returncode == 0, report.stderr
    assert f"{Path(file).relative_to(ROOT)}:{line} read_token" in report.stdout  # named from the recording's cwd


def test_what_needs_gpu_side_times_is_not_measured_rather_than_zero(app_trace) -> None:
    """The interposer's copies carry the calls' host times: lost stream concurrency (and GPU idle) cannot
    be measured from them, and every view says so instead of showing 0."""
    from tests.conftest import cctrace

    r = cctrace("report", str(app_trace), "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["gpu_times"] is False and rep["host_only"] is False  # copies, but none with GPU times
    assert {c["category"]: c["measured"] for c in rep["categories"]} == {
        c.name: not c.gpu_timed for c in CATEGORIES
    }
    assert [c.name for c in CATEGORIES if c.gpu_timed] == ["stream_concurrency"]
    text = cctrace("report", str(app_trace))
    words = " ".join(text.stdout.split())
    assert "lost stream concurrency and GPU idle not measured; record with CUPTI (`--interpose off`, the default kinds)" in words
    assert rep["gpu_idle_ms"] is None and {c["gpu_idle_overlap_ms"] for c in rep["categories"]} == {None}
    md = cctrace("report", str(app_trace), "--markdown")
    assert "| lost stream concurrency | 0 | not measured | - | - | - |" in md.stdout, md.stdout
    d = cctrace("diff", str(app_trace), str(app_trace), "--json")
    assert d.returncode == 0, d.stderr
    assert [c["category"] for c in json.loads(d.stdout)["categories"] if not c["measured"]] == ["stream_concurrency"]
    lines = cctrace("diff", str(app_trace), str(app_trace)).stdout.splitlines()
    row = next(line for line in lines if "lost stream concurrency" in line)
    assert [cell.strip() for cell in row.strip("│ ").split("│")][:2] == ["lost stream concurrency", "not measured"]


def test_callsite_skip_reaches_the_interposer_decoder(built, tmp_path) -> None:
    """--callsite-skip fakeframework: the input copy's call site is the application's line that called
    the framework (the patterns travel in the process record to the decoder)."""
    out = tmp_path / "rec"
    _record_app(built, out, "--callsite-skip", "fakeframework", "--no-load", native=False, fork=False)
    t = _tables(out)
    sites = _callsites(t)
    h2d = {sites[(c["pid"], c["stack_id"])] for c in _rows(t["api_calls"]) if c["name"] == "cuMemcpyHtoDAsync_v2"}
    assert h2d == {(*_site(APP, "H2D"), "prepare_inputs")}


def test_no_stacks_records_calls_without_stacks(built, tmp_path) -> None:
    out = tmp_path / "rec"
    _record_app(built, out, "--no-stacks", "--no-load", native=False, fork=False)
    t = _tables(out)
    assert "stacks" not in t and t["api_calls"].num_rows == 1 + 4 * 3 + 5  # alloc, 4 steps, the worker
    assert set(t["api_calls"].column("stack_id").to_pylist()) == {None}
    m = json.loads((out / "manifest.json").read_text())
    assert m["stacks"]["captured"] is False and set(m["stacks"]["processes"].values()) == {"off (--no-stacks)"}


def test_the_header_names_every_record_member(built, tmp_path) -> None:
    """The decoder's dtype comes from the file's header (LAYOUT): it must list struct ip_rec's members
    in order, or a member (stack_id) would be written and never read."""
    from tests.test_structs import _struct

    trace = tmp_path / "t"
    _run(built, trace, "gpa")
    raw = I.read_raw(I.raw_files(trace)[0])
    _decl, members = _struct(N.INTERPOSE_SOURCE, "ip_rec")
    assert [f[0] for f in raw.header["layout"]] == members
    assert raw.header["record_size"] == raw.records.dtype.itemsize


def test_a_damaged_stacks_block_is_a_problem_not_a_crash(built, tmp_path) -> None:
    import struct

    from cctrace.record.sources import py_stacks

    trace = tmp_path / "t"
    _run(built, trace, "gpa")
    (path,) = I.raw_files(trace)
    with open(path, "ab") as f:  # a stack that says it has 3 frames and holds none
        f.write(struct.pack("<QQII", py_stacks.STK_MAGIC, 8, 1, 3))
    raw = I.read_raw(path)
    assert len(raw.records) == 36 and raw.stacks == []
    assert raw.problems == [f"{path.name}: a damaged stacks block; the stacks before it are kept"]


def test_an_execd_image_keeps_its_own_stack_ids(built, tmp_path) -> None:
    """A process that exec()s after recording appends a new image's blocks to the same file, its stack
    ids starting again at 1: each record still names its own image's stack."""
    import struct

    from cctrace.record.sources import py_stacks

    trace = tmp_path / "t"
    _run(built, trace, "gpa")
    header = I.read_raw(I.raw_files(trace)[0]).header
    dt = I.dtype_of(header)

    def block(magic: int, payload: bytes) -> bytes:
        return struct.pack("<QQ", magic, len(payload)) + payload

    def counters(records: int, lost: int, names: str) -> bytes:
        return block(I.STAT_MAGIC, json.dumps({"records": records, "lost": lost, "unmatched_names": names}).encode())

    def image(line: int, calls: int) -> bytes:
        """One process image: its header, stack 1 (one frame at `line`), `calls` records naming it, and its
        counters (written at each flush that ends one: an exec, a failed exec, exit)."""
        frame = struct.pack("<iHH", line, 6, 4) + b"app.pymain"
        rec = np.zeros(calls, dtype=dt)
        rec["stack_id"] = 1
        return (
            block(I.HEAD_MAGIC, json.dumps(header).encode())
            + block(py_stacks.STK_MAGIC, struct.pack("<II", 1, 1) + frame)
            + block(I.REC_MAGIC, rec.tobytes())
            + counters(calls - 1, 1, "cuA")  # a failed exec: the image goes on, and writes them again
            + counters(calls, 2, "cuA cuB")
        )

    path = trace / "interpose.4242.ipraw"
    path.write_bytes(image(10, 3) + image(20, 2))  # before and after an exec
    raw = I.read_raw(path)
    assert raw.problems == [] and raw.stacks == [(1, [("app.py", 10, "main")]), (2, [("app.py", 20, "main")])]
    assert raw.records["stack_id"].tolist() == [1, 1, 1, 2, 2]
    # each image's last counters, added: the new image's own start again at 0
    assert raw.stats == {"records": 5, "lost": 4, "unmatched_names": "cuA cuB"}


def _exec_app(built: dict, trace: Path, how: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """fake_app's calls, then an exec through `how` (tests/native/fake_app.c), with an hour's flush interval."""
    trace.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(H.PREFIX)}
    env |= {"LD_PRELOAD": str(built["interposer"]), H.DIR.name: str(trace), H.FLUSH_S.name: "3600",
            H.INTERPOSE.name: "on"}  # fmt: skip
    return subprocess.run([str(built["dir"] / "app"), "gpa", str(built["lib"]), f"exec:{how}"], env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.mark.parametrize("how", ["execl", "execle", "execlp"])
def test_the_list_forms_of_exec_keep_what_was_recorded(built, tmp_path, how) -> None:
    """glibc's execl/execle/execlp reach its internal execve, past the wrapper of execve: they need their own."""
    r = _exec_app(built, tmp_path / "t", how)
    assert r.returncode == 0 and "done" not in r.stdout, r.stderr  # /bin/true ran, not the rest of the app
    raw = I.read_raw(I.raw_files(tmp_path / "t")[0])
    assert len(raw.records) == raw.stats["records"] == 36  # every call of fake_app's work()


def test_exec_from_a_signal_handler_never_waits_on_itself(built, tmp_path) -> None:
    """exec is async-signal-safe: a handler may call it while the interrupted thread drains its full ring
    under a lock. The wrapper's flush must not wait on that lock (it did: 1 run in 3 hung); every run
    ends, with the records appended before the interrupted one's drain."""
    for i in range(30):  # the signal lands 2-31 ms into the loop: in a drain about one time in six
        trace = tmp_path / f"t{i}"
        r = _exec_app(built, trace, f"signal:{2000 + 1000 * i}", timeout=20)  # TimeoutExpired: it hung
        assert r.returncode == 0, r.stderr
        raw = I.read_raw(I.raw_files(trace)[0])
        assert len(raw.records) >= 36 and raw.problems == []


@pytest.mark.parametrize("how", ["execv", "execve", "execvp"])
def test_what_a_process_recorded_before_exec_is_kept(built, tmp_path, how) -> None:
    """exec() runs no destructor of the old image, and the flusher would not run for an hour: the exec
    wrapper appends the rings first, so every copy made before it is in the file."""
    trace = tmp_path / "t"
    trace.mkdir()
    program = (
        "import ctypes, os, sys\n"
        "cuda = ctypes.CDLL('libcuda.so.1')\n"
        "dev = ctypes.c_uint64()\n"
        "cuda.cuMemAlloc_v2(ctypes.byref(dev), ctypes.c_size_t(1 << 20))\n"
        "host = ctypes.create_string_buffer(4096)\n"
        "for n in range(1, 8):\n"
        "    cuda.cuMemcpyHtoD_v2(dev, host, ctypes.c_size_t(n))\n"
        f"getattr(os, '{how}')('/bin/true', ['true'], *([dict(os.environ)] if '{how}' == 'execve' else []))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(H.PREFIX)}
    env |= {"LD_PRELOAD": str(built["interposer"]), "LD_LIBRARY_PATH": str(built["dir"]), H.DIR.name: str(trace),
            H.FLUSH_S.name: "3600", H.INTERPOSE.name: "on"}  # fmt: skip
    subprocess.run([sys.executable, "-c", program], env=env, check=True, timeout=60)
    (path,) = I.raw_files(trace)
    raw = I.read_raw(path)
    copies = raw.records[raw.records["bytes"] > 0]
    assert sorted(copies["bytes"].tolist()) == [*range(1, 8), 1 << 20]  # the copies and the allocation
    assert raw.stats["records"] == len(raw.records)  # the counters block, written before the exec


def test_manifest_and_record_summary_read_the_interposers_stacks(tmp_path, capsys) -> None:
    """A process recorded by the interposer alone (CUPTI off) has its stacks state from the interposer:
    the manifest's summary says so, and the record summary says why there were none."""
    from cctrace.cli import _print_record_summary
    from cctrace.trace.manifest import stacks_summary

    def proc(pid: int, cupti: str, interposer: str, state: str, n: int = 0) -> dict:
        sources = {"interposer": {"state": interposer, "stacks": {"state": state, "calls_with_stack": n}}}
        if cupti == "active":
            sources["cupti"] = {"stacks": {"state": "off: runtime calls not recorded by the shim"}}
        return {"pid": pid, "cupti": cupti, "sources": sources}

    off = "off: no CUPTI activity kinds asked for"
    procs = [
        proc(1, off, "active", "on", 7),
        proc(2, off, "active", "off: CPython 3.13's frame layout is not known to cctrace (3.11 and 3.12 are)"),
        proc(3, off, "active", "off (--no-stacks)"),
        proc(4, "active", "standby: CUPTI records this process", "off: the interposer does not record in this process"),
    ]
    got = stacks_summary(procs)
    assert got["captured"] is True and got["calls_with_stack"] == 7
    assert got["processes"] == {
        "1": "on",
        "2": "off: CPython 3.13's frame layout is not known to cctrace (3.11 and 3.12 are)",
        "3": "off (--no-stacks)",
        "4": "off: runtime calls not recorded by the shim",  # CUPTI recorded it: CUPTI's account speaks
    }
    (tmp_path / "manifest.json").write_text(json.dumps({"processes": procs}))
    _print_record_summary(tmp_path, {})
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "stacks" in ln]
    assert lines == [
        "cctrace:   pid 2: no Python stacks (call sites): CPython 3.13's frame layout is not known to cctrace (3.11 and 3.12 are)",
        "cctrace:   pid 4: no Python stacks (call sites): runtime calls not recorded by the shim",
    ]


def test_stack_ids_have_their_blocks_under_threads_flusher_and_fork(built, tmp_path) -> None:
    """Threads intern stacks while the flusher drains their rings (every 0.05 s) and another thread
    forks: every recorded stack id has its block in its own process's file, written once, holding the
    frames of the call that named it (stacks_race_app.py spells each call's stream handle in its stack)."""
    threads, calls, forks, bits, tag = 6, 3000, 10, 12, 1 << 16
    app = NATIVE / "stacks_race_app.py"
    out = tmp_path / "rec"
    env = project_env() | {"LD_LIBRARY_PATH": str(built["dir"])}
    r = subprocess.run(
        [sys.executable, "-m", "cctrace", "record", "-o", str(out), "--kinds", "none", "--interpose", "on",
         "--host-probes", "off", "--flush-interval", "0.05", "--no-load", "-q", "--",
         sys.executable, str(app), str(threads), str(calls), str(forks)],
        env=env, capture_output=True, text=True, timeout=180, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    t = _tables(out)
    frames: dict[tuple[int, int], list[tuple[int, str, int]]] = {}
    for s in _rows(t["stacks"]):
        frames.setdefault((s["pid"], s["stack_id"]), []).append((s["depth"], s["file"], s["line"]))
    assert all(len({f[0] for f in fs}) == len(fs) for fs in frames.values())  # each stack written once
    rows = [c for c in _rows(t["api_calls"]) if c["name"] == "cuStreamSynchronize"]
    pids = [c["pid"] for c in rows]
    parent = max(set(pids), key=pids.count)  # the threads' process; the others are forked children
    assert pids.count(parent) == threads * calls and len(set(pids)) == 1 + forks
    lines = {_site(app, "ONE")[1]: 1, _site(app, "ZERO")[1]: 0}
    for c in rows:
        assert c["stack_id"] is not None and (c["pid"], c["stack_id"]) in frames  # its block is there
        stack = [f for f in sorted(frames[(c["pid"], c["stack_id"])]) if f[1] == str(app)]
        spelled = [lines[line] for _d, _f, line in stack[1 : bits + 1]]  # the innermost dive() made the call
        assert sum(b << j for j, b in enumerate(spelled)) == c["stream"] - tag, (c, stack)
    assert len({(c["pid"], c["stack_id"]) for c in rows if c["pid"] == parent}) == 1 << bits


def test_the_interposer_follows_tracing_windows(built, tmp_path) -> None:
    """--interpose on with --toggle-signal: the interposer records the copies made inside the windows
    and none of those made outside (the tracer switches it off and on at the window's edges)."""
    out = tmp_path / "w"
    env = project_env() | {"LD_LIBRARY_PATH": str(built["dir"])}
    cmd = [sys.executable, "-m", "cctrace", "record", "-o", str(out), "--kinds", "none", "--interpose", "on",
           "--host-probes", "off", "--flush-interval", "0.05", "-q", "--toggle-signal", "USR2",
           "--", sys.executable, str(NATIVE / "windowed_ip_app.py")]  # fmt: skip
    run_answering(cmd, env, toggle_when_asked, cwd=ROOT)
    m = json.loads((out / "manifest.json").read_text())
    (p,) = m["processes"]
    assert p["sources"]["interposer"]["mode"] == "windowed" and p["sources"]["interposer"]["state"] == "active"
    copies = sorted((c for c in _rows(_tables(out)["copies"]) if c["bytes"] > 1), key=lambda c: c["bytes"])
    assert [c["bytes"] for c in copies] == list(range(100, 150)) + list(range(2000, 2050))
    (w1, w2) = p["windows"]
    assert all(any(a <= c["start_ns"] and c["end_ns"] <= b for a, b in (w1, w2)) for c in copies)


def test_a_child_forked_outside_a_window_is_recorded_by_the_interposer(built, tmp_path) -> None:
    """--start-detached: the parent is never traced, and a child it forks is traced throughout (its tracer
    says so), so the interposer it inherited switched off must record the child's copies."""
    out = tmp_path / "f"
    env = project_env() | {"LD_LIBRARY_PATH": str(built["dir"])}
    r = subprocess.run(
        [sys.executable, "-m", "cctrace", "record", "-o", str(out), "--kinds", "none", "--interpose", "on",
         "--host-probes", "off", "-q", "--start-detached", "--toggle-signal", "USR2", "--",
         sys.executable, str(NATIVE / "windowed_ip_app.py"), "fork"],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    child = next(p for p in m["processes"] if p.get("forked_from"))
    copies = _rows(_tables(out)["copies"])
    assert sorted(c["bytes"] for c in copies) == list(range(3000, 3050))
    assert {c["pid"] for c in copies} == {child["pid"]}
    assert child["sources"]["interposer"]["state"].startswith("active")
