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

import pyarrow as pa
import pytest
from conftest import ROOT, project_env

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
    return {"dir": d, "lib": lib, "interposer": N.build_native(N.INTERPOSE_SOURCE)}


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
        ("context", 0, None),  # cuCtxSynchronize and CUDA 13's cuCtxSynchronize_v2
        ("event", 0, 0xE1),
        ("stream", 0xAB, None),
    ]
    stream_sync = next(s for s in syncs if s["sync_type"] == "stream")
    assert stream_sync["end_ns"] - stream_sync["start_ns"] >= 1_000_000  # the stand-in sleeps 1 ms inside

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
        _header, rec, stats, _problems = I.read_raw(f)
        counts[len(rec)] = stats["records"]
    assert counts == {36: 36, 2: 2}  # the child's alloc and sync only, none of its parent's


def test_threads_past_a_full_ring_lose_nothing(built, tmp_path) -> None:
    trace = tmp_path / "t"
    _run(built, trace, "gpa", "threads")
    _header, rec, stats, problems = I.read_raw(I.raw_files(trace)[0])
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
    _h, rec, _s, _p = I.read_raw(I.raw_files(trace)[0])
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
    from tests.test_host_probes import APP, LIB, _require_probes

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
    assert all(c["off_cpu_ns"] > 0 and c["on_cpu_ns"] == c["end_ns"] - c["start_ns"] - c["off_cpu_ns"] for c in h2d)
    assert sum(c["off_cpu_ns"] for c in h2d) >= 20 * 4_000_000
    assert t["host_waits"].num_rows >= 20
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
