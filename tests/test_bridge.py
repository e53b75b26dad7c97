"""Bridge emulation and calibration pieces that run without a GPU: the spec language, the emulator's
build and counters, the ground-truth sum, the profile fit, the plot and the --profile plumbing.
(On the GPU: tests/test_gpu_record.py::test_emulated_bridge_puts_its_toll_inside_the_copy_calls.)"""

import ctypes
import json
import sys
import threading
import time
from typing import NamedTuple

import pytest

from cctrace.record.bridge import CALLS as BRIDGE_CALLS
from cctrace.record.bridge import BridgeSpecError, load_lib, parse_spec, read_stats
from cctrace.record.calibrate import fit_model
from cctrace.record.native import BRIDGE_SOURCE, build_native
from cctrace.trace.injections import sum_injected
from cctrace.trace.profile import DEFAULT_PROFILE, params_from_profile
from cctrace.ui.plot import plot_profile
from tests.conftest import cctrace
from tests.synth import Spec, generate


def test_presets_and_overrides():
    s = parse_spec("b300-tdx")
    assert (s.h2d_toll_us, s.d2h_toll_us, s.bw_ratio, s.serialize, s.async_block) == (300, 300, 0.2, True, True)
    s = parse_spec("b300-tdx, d2h_toll_us=50, async_block=off")
    assert (s.h2d_toll_us, s.d2h_toll_us, s.async_block, s.name) == (300, 50, False, "b300-tdx")
    s = parse_spec("toll_us=10,bw_gbps=10,native_gbps=50")
    h2d, d2h = s.extra_ns_per_byte()
    assert h2d == d2h == pytest.approx(1 / 10 - 1 / 50)  # GB/s is bytes/ns
    assert parse_spec("toll-only").extra_ns_per_byte() == (0.0, 0.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope", "unknown bridge preset"),
        ("toll_us=abc", "bad value for toll_us"),
        ("b300-tdx,colour=blue", "unknown bridge spec key"),
        ("serialize=maybe", "not on/off"),
        ("toll_us=-1", "must not be negative"),
        ("bw_ratio=0", "bandwidth must be positive"),
        ("native_gbps=0", "bandwidth must be positive"),  # would divide by zero
        ("b300-tdx,toll_us", "expected key=value"),
    ],
)
def test_bad_specs_say_what_is_wrong(text, message):
    with pytest.raises(BridgeSpecError, match=message):
        parse_spec(text)


def test_spec_from_a_json_file(tmp_path):
    f = tmp_path / "mybridge.json"
    f.write_text(json.dumps({"toll_us": 120, "serialize": True}))
    s = parse_spec(str(f))
    assert (s.name, s.h2d_toll_us, s.serialize) == ("mybridge", 120, True)


def test_record_rejects_a_bad_spec_before_running_anything(tmp_path):
    out = tmp_path / "t"
    r = cctrace("record", "-o", str(out), "--emulate-bridge", "b300-tdx,toll_us=x", "--", sys.executable, "-c", "1")
    assert r.returncode == 2 and "--emulate-bridge: bad value for toll_us" in r.stderr
    assert not out.exists()


def test_emulator_builds_and_starts_with_zero_counters():
    lib = load_lib(build_native(BRIDGE_SOURCE))
    stats = read_stats(lib)
    assert stats["toll_count"] == stats["async_block_ns"] == 0
    assert stats["toll_by_log2_bytes"] == {"h2d": {}, "d2h": {}}


def test_ground_truth_is_summed_over_processes():
    def proc(n):
        inj = {"toll_count": n, "toll_ns": n * 300_000, "toll_by_log2_bytes": {"h2d": {"7": n}, "d2h": {}}}
        return {"sources": {"bridge": {"spec": {"name": "b300-tdx"}, "injected": inj}}}

    total = sum_injected([proc(3), proc(4), {"sources": {}}])
    assert total["spec"]["name"] == "b300-tdx"
    assert total["injected"]["toll_count"] == 7 and total["injected"]["toll_ns"] == 2_100_000
    assert total["injected"]["toll_by_log2_bytes"]["h2d"] == {"7": 7}
    assert sum_injected([{"sources": {}}]) is None


def test_fit_recovers_toll_and_bandwidth():
    # 25 us toll, 50 GB/s = 50,000 bytes/us, plus a few noisy points that the medians ignore
    pts = [(n, 25 + n / 50_000) for n in (4, 64, 1024, 16384, 65536, 1 << 24, 1 << 26, 1 << 28)]
    pts += [(16, 400.0), (1 << 25, 1e6)]
    f = fit_model(pts)
    assert f["toll_us"] == pytest.approx(25, rel=0.02) and f["gbps"] == pytest.approx(50, rel=0.02)


def test_bundled_h100_profile_sets_the_reference_parameters():
    profile = json.loads(DEFAULT_PROFILE.read_text())
    assert "H100" in profile["machine"]["device_name"]
    ref = params_from_profile(profile)
    assert ref["normal_call_us"] == round(max(2 * profile["blocking"]["alone"]["call"]["p90_us"], 5.0), 1)
    assert 20 < ref["default_gbps"] < 100
    assert ref == profile["reference_params"]


def test_plot_of_a_profile_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "p.png"
    plot_profile(json.loads(DEFAULT_PROFILE.read_text()), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    r = cctrace("calibrate", "--replot", str(DEFAULT_PROFILE), "--plot", str(tmp_path / "q.png"))
    assert r.returncode == 0 and (tmp_path / "q.png").exists()


def test_a_file_that_is_not_a_profile_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = cctrace("calibrate", "--replot", str(bad), "--plot", str(tmp_path / "p.png"))
    assert r.returncode == 1 and "cannot read the bridge profile" in r.stderr and "Traceback" not in r.stderr
    bad.write_text("[1, 2]")
    r = cctrace("report", str(tmp_path), "--profile", str(bad))
    assert r.returncode == 2 and "is not a bridge profile" in r.stderr


def test_calibrate_without_a_gpu_is_a_clear_error(tmp_path):
    r = cctrace("calibrate", "-o", str(tmp_path / "p.json"))
    assert r.returncode == 1 and ("torch" in r.stderr or "GPU" in r.stderr) and "Traceback" not in r.stderr


def test_report_uses_a_given_profile_as_reference(tmp_path):
    spec = generate(tmp_path / "t", Spec(steps=10))
    profile = json.loads(DEFAULT_PROFILE.read_text())
    profile["blocking"]["alone"]["call"]["p90_us"] = 100.0  # calls up to 200 us count as normal here
    pf = tmp_path / "slow.json"
    pf.write_text(json.dumps(profile))
    runs = {}
    for extra in ([], ["--profile", str(pf)], ["--profile", str(pf), "--param", "normal_call_us=5"]):
        r = cctrace("report", str(tmp_path / "t"), "--json", *extra)
        assert r.returncode == 0, r.stderr
        runs[len(extra)] = json.loads(r.stdout)
    assert (
        runs[0]["params"]["normal_call_us"]
        == params_from_profile(json.loads(DEFAULT_PROFILE.read_text()))["normal_call_us"]
    )
    assert runs[2]["params"]["normal_call_us"] == 200.0 and runs[4]["params"]["normal_call_us"] == 5.0

    def stall(rep):
        return next(c for c in rep["categories"] if c["category"] == "async_stalls")["lost_ms"]

    # the injected stalls are 300 us beyond a 5 us call: a 200 us "normal" leaves about 105 us of each
    assert stall(runs[4]) > stall(runs[2]) > 0
    assert stall(runs[2]) == pytest.approx(spec.truth["stall_count"] * 0.105, rel=0.05)


# ---- the emulator's logic, driven through its test entry with a stand-in driver -----------------
# (no GPU here; on the H100 the real driver is used: tests/test_gpu_record.py)
NOT_READY = 600
DEVICE, PINNED = 0x10_0000_0000, 0x20_0000_0000  # pointer ranges the stand-in driver classifies


class Memcpy3D(ctypes.Structure):
    """CUDA_MEMCPY3D of cuda.h: what cuGraphMemcpyNodeGetParams fills."""

    _fields_ = [
        *[(f, ctypes.c_size_t) for f in ("srcXInBytes", "srcY", "srcZ", "srcLOD")],
        ("srcMemoryType", ctypes.c_int),
        ("srcHost", ctypes.c_void_p),
        ("srcDevice", ctypes.c_uint64),
        ("srcArray", ctypes.c_void_p),
        ("reserved0", ctypes.c_void_p),
        ("srcPitch", ctypes.c_size_t),
        ("srcHeight", ctypes.c_size_t),
        *[(f, ctypes.c_size_t) for f in ("dstXInBytes", "dstY", "dstZ", "dstLOD")],
        ("dstMemoryType", ctypes.c_int),
        ("dstHost", ctypes.c_void_p),
        ("dstDevice", ctypes.c_uint64),
        ("dstArray", ctypes.c_void_p),
        ("reserved1", ctypes.c_void_p),
        ("dstPitch", ctypes.c_size_t),
        ("dstHeight", ctypes.c_size_t),
        ("WidthInBytes", ctypes.c_size_t),
        ("Height", ctypes.c_size_t),
        ("Depth", ctypes.c_size_t),
    ]


HOST_MEM, DEVICE_MEM, UNIFIED_MEM = 1, 2, 4


class FakeGPU:
    """Streams that stay busy for a set time after each copy is enqueued; events that complete when
    the work recorded before them does; cuPointerGetAttribute by address range; streams that are
    being captured (a stream or event call while any capture is open counts as a violation: on a
    real GPU it can invalidate the capture); graphs of memcpy, kernel and child-graph nodes."""

    def __init__(self, ctypes):
        self.busy: dict[int, int] = {}
        self.event_ready = 0
        self.copy_ns = 0
        self.capturing: set[int] = set()
        self.violations = 0
        self.stream_calls = 0
        # graph handle -> node handles; node handle -> ("memcpy", Memcpy3D) | ("kernel",) | ("graph", handle)
        self.graphs: dict[int, list[int]] = {}
        self.nodes: dict[int, tuple] = {}
        c = ctypes

        def guarded(fn):
            def call(*a):
                self.stream_calls += 1
                self.violations += bool(self.capturing)
                return fn(*a)

            return call

        self.stream_query = c.CFUNCTYPE(c.c_int, c.c_void_p)(
            guarded(lambda s: NOT_READY if time.perf_counter_ns() < self.busy.get(s or 0, 0) else 0)
        )
        self.event_query = c.CFUNCTYPE(c.c_int, c.c_void_p)(
            guarded(lambda _e: NOT_READY if time.perf_counter_ns() < self.event_ready else 0)
        )

        def record(_e, s):
            self.event_ready = self.busy.get(s or 0, 0)
            return 0

        def create(pev, _flags):
            c.cast(pev, c.POINTER(c.c_void_p))[0] = 0x5EED
            return 0

        def attr(data, _kind, ptr):
            if ptr >= PINNED:
                c.cast(data, c.POINTER(c.c_uint))[0] = 1
            elif ptr >= DEVICE:
                c.cast(data, c.POINTER(c.c_uint))[0] = 2
            else:
                return 1  # CUDA_ERROR_INVALID_VALUE: pageable host memory
            return 0

        def is_capturing(s, status):
            c.cast(status, c.POINTER(c.c_int))[0] = 1 if (s or 0) in self.capturing else 0
            return 0

        def get_nodes(g, out, count):
            nodes = self.graphs.get(g or 0, [])
            n = c.cast(count, c.POINTER(c.c_size_t))
            if out:
                arr = c.cast(out, c.POINTER(c.c_void_p))
                for i, node in enumerate(nodes[: n[0]]):
                    arr[i] = node
            n[0] = len(nodes)
            return 0

        def node_type(node, out):
            kind = self.nodes[node][0]
            c.cast(out, c.POINTER(c.c_int))[0] = {"kernel": 0, "memcpy": 1, "graph": 4}[kind]
            return 0

        def memcpy_params(node, out):
            c.memmove(out, c.byref(self.nodes[node][1]), c.sizeof(Memcpy3D))
            return 0

        def child(node, out):
            c.cast(out, c.POINTER(c.c_void_p))[0] = self.nodes[node][1]
            return 0

        self.event_record = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_void_p)(guarded(record))
        self.event_create = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_uint)(guarded(create))
        self.pointer_attr = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_int, c.c_uint64)(attr)
        self.is_capturing = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_void_p)(is_capturing)
        self.get_nodes = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_void_p, c.c_void_p)(get_nodes)
        self.node_type = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_void_p)(node_type)
        self.memcpy_params = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_void_p)(memcpy_params)
        self.child = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_void_p)(child)

    def driver(self) -> dict:
        """The stand-ins by the libcuda names the emulator resolves."""
        return {
            "cuStreamQuery": self.stream_query,
            "cuEventQuery": self.event_query,
            "cuEventRecord": self.event_record,
            "cuEventCreate": self.event_create,
            "cuPointerGetAttribute": self.pointer_attr,
            "cuStreamIsCapturing": self.is_capturing,
            "cuGraphGetNodes": self.get_nodes,
            "cuGraphNodeGetType": self.node_type,
            "cuGraphMemcpyNodeGetParams": self.memcpy_params,
            "cuGraphChildGraphNodeGetGraph": self.child,
        }

    def memcpy_node(self, handle: int, src_type: int, src: int, dst_type: int, dst: int, nbytes: int) -> int:
        m = Memcpy3D(WidthInBytes=nbytes, Height=1, Depth=1, srcMemoryType=src_type, dstMemoryType=dst_type)
        if src_type == HOST_MEM:
            m.srcHost = src
        else:
            m.srcDevice = src
        if dst_type == HOST_MEM:
            m.dstHost = dst
        else:
            m.dstDevice = dst
        self.nodes[handle] = ("memcpy", m)
        return handle


HTOD_ASYNC, DTOH_SYNC, UNRELATED = 11, 12, 99
# the stand-in's callback ids; layouts and flags come from bridge.CALLS, as the C gets them
TEST_CBIDS = {
    "cuMemcpyHtoDAsync_v2": HTOD_ASYNC,
    "cuMemcpyDtoH_v2": DTOH_SYNC,
    "cuGraphLaunch": 20,
    "cuGraphInstantiateWithFlags": 21,
    "cuGraphExecDestroy": 22,
    "cuStreamBeginCapture_v2": 23,
    "cuStreamEndCapture": 24,
}
CALLS = {name: (TEST_CBIDS[name], fl) for _dom, name, fl in BRIDGE_CALLS if name in TEST_CBIDS}


class Emu(NamedTuple):
    setup: object
    copy: object
    stats: object
    call: object
    gpu: FakeGPU
    lib: object

    def __iter__(self):  # the first three, as the older tests unpack them
        return iter((self.setup, self.copy, self.stats))


@pytest.fixture
def emu():
    lib = ctypes.CDLL(str(build_native(BRIDGE_SOURCE)))
    gpu = FakeGPU(ctypes)

    class Params(ctypes.Structure):
        _fields_ = [
            ("dst", ctypes.c_uint64),
            ("src", ctypes.c_uint64),
            ("n", ctypes.c_size_t),
            ("stream", ctypes.c_void_p),
        ]

    def setup(h2d_us=0, d2h_us=0, serialize=0, block=0, extra_ns_per_byte=0.0):
        for name, fn in gpu.driver().items():
            assert lib.cct_bridge_test_driver(name.encode(), fn) == 0, name
        calls = list(CALLS.values())
        n = len(calls)
        lib.cct_bridge_test_setup(
            (ctypes.c_int * n)(*[1] * n),
            (ctypes.c_uint32 * n)(*[c for c, _ in calls]),
            (ctypes.c_int * n)(*[f for _, f in calls]),
            n,
            (ctypes.c_int64 * 2)(h2d_us * 1000, d2h_us * 1000),
            (ctypes.c_double * 2)(extra_ns_per_byte, extra_ns_per_byte),
            serialize,
            block,
        )

    def call(name, params, corr=0, ret=0, between=None) -> float:
        """One call as CUPTI delivers it: enter callback, `between` (the call's own work), exit callback."""
        cbid = CALLS[name][0] if isinstance(name, str) else name
        t0 = time.perf_counter_ns()
        lib.cct_bridge_test_call(1, cbid, 0, ctypes.byref(params), None, corr, 0)
        if between:
            between()
        lib.cct_bridge_test_call(1, cbid, 1, ctypes.byref(params), None, corr, ret)
        return (time.perf_counter_ns() - t0) / 1e6

    def copy(name, dst, src, n, stream=0, gpu_ms=0.0, corr=0) -> float:
        """One copy call: enter callback, the copy is enqueued (busy for gpu_ms), exit callback."""

        def enqueue():
            gpu.busy[stream] = time.perf_counter_ns() + int(gpu_ms * 1e6)

        return call(name, Params(dst, src, n, stream), corr, between=enqueue)

    load_lib(build_native(BRIDGE_SOURCE))  # argtypes for the stats call
    lib.cct_bridge_stats.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_int]
    lib.cct_bridge_take.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.cct_bridge_take.restype = ctypes.c_size_t
    lib.cct_bridge_test_call.argtypes = [
        ctypes.c_int, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
    ]
    return Emu(setup, copy, lambda: read_stats(lib), call, gpu, lib)


def test_emulator_tolls_each_crossing_where_a_bridge_would(emu):
    setup, copy, stats = emu
    setup(h2d_us=2000, d2h_us=1000)
    assert copy("cuMemcpyHtoDAsync_v2", DEVICE, 0x1000, 4096) >= 2.0  # pageable H2D: toll before it is enqueued
    assert copy("cuMemcpyDtoH_v2", 0x1000, DEVICE, 100) >= 1.0  # D2H: toll after it landed
    copy(UNRELATED, DEVICE, 0x1000, 4096)  # not a copy call it acts on: no toll below
    s = stats()
    assert (s["toll_count"], s["h2d_toll_ns"], s["d2h_toll_ns"]) == (2, 2_000_000, 1_000_000)
    assert s["toll_by_log2_bytes"] == {"h2d": {"12": 1}, "d2h": {"6": 1}}
    assert s["async_block_count"] == s["serialize_count"] == 0


def test_async_copies_of_pinned_memory_block_until_their_stream_is_idle(emu):
    setup, copy, stats = emu
    setup(block=1)
    assert copy("cuMemcpyHtoDAsync_v2", DEVICE, PINNED, 64, stream=7, gpu_ms=3) >= 3.0  # pinned: waits for the stream
    copy("cuMemcpyHtoDAsync_v2", DEVICE, 0x1000, 64, stream=7, gpu_ms=3)  # pageable source: returns (one block below)
    s = stats()
    assert s["async_block_count"] == 1 and s["async_block_ns"] > 2_500_000


def test_copies_on_different_streams_are_serialized(emu):
    setup, copy, stats = emu
    setup(serialize=1)
    copy("cuMemcpyHtoDAsync_v2", DEVICE, PINNED, 64, stream=1, gpu_ms=4)  # stream 1 busy for 4 ms after this
    copy("cuMemcpyHtoDAsync_v2", DEVICE, PINNED, 64, stream=1, gpu_ms=0)  # same stream: ordered anyway (one wait below)
    copy("cuMemcpyHtoDAsync_v2", DEVICE, PINNED, 64, stream=1, gpu_ms=4)
    assert copy("cuMemcpyHtoDAsync_v2", DEVICE, PINNED, 64, stream=2) >= 3.0  # waits for stream 1's copy
    s = stats()
    assert s["serialize_count"] == 1 and s["serialize_ns"] > 2_500_000


def _rows(emu_) -> list[dict]:
    """What the tracer's drain writes: the recorded injections as bridge_injections rows."""
    from cctrace.record.bridge import injection_rows, take_records
    from cctrace.trace.schema import rows_to_batch

    names = {(1, cbid): name for name, (cbid, _) in CALLS.items()}
    return rows_to_batch("bridge_injections", injection_rows(take_records(emu_.lib), 7, names)).to_pylist()


def test_every_injection_is_a_row_and_the_rows_sum_to_the_counters(emu):
    emu.setup(h2d_us=300, d2h_us=200, serialize=1, block=1, extra_ns_per_byte=10.0)
    emu.copy("cuMemcpyHtoDAsync_v2", DEVICE, PINNED, 1000, stream=1, gpu_ms=3, corr=41)  # toll + bw, then blocks
    emu.copy("cuMemcpyHtoDAsync_v2", DEVICE, PINNED, 1000, stream=1, gpu_ms=3, corr=42)
    emu.copy("cuMemcpyHtoDAsync_v2", DEVICE, 0x1000, 64, stream=2, gpu_ms=0, corr=43)  # pageable: no block
    emu.copy("cuMemcpyDtoH_v2", 0x1000, DEVICE, 8, corr=44)
    s, rows = emu.stats(), _rows(emu)
    assert s["records_lost"] == 0 and len(rows) > 0
    for kind in ("toll", "bandwidth", "serialize", "async_block"):
        mine = [r for r in rows if r["kind"] == kind]
        assert (len(mine), sum(r["ns"] for r in mine)) == (s[f"{kind}_count"], s[f"{kind}_ns"]), kind
    tolls = [(r["correlation_id"], r["direction"], r["bytes"], r["ns"], r["call"]) for r in rows if r["kind"] == "toll"]
    assert tolls == [
        (41, "h2d", 1000, 300_000, "cuMemcpyHtoDAsync_v2"),
        (42, "h2d", 1000, 300_000, "cuMemcpyHtoDAsync_v2"),
        (43, "h2d", 64, 300_000, "cuMemcpyHtoDAsync_v2"),
        (44, "d2h", 8, 200_000, "cuMemcpyDtoH_v2"),
    ]
    assert [r["ns"] for r in rows if r["kind"] == "bandwidth"] == [10_000, 10_000, 640, 80]
    assert s["async_block_count"] >= 1 and {r["correlation_id"] for r in rows if r["kind"] == "async_block"} <= {41, 42}
    assert {r["source"] for r in rows} == {"emulator"} and {r["pid"] for r in rows} == {7}
    assert all(r["tid"] == threading.get_native_id() for r in rows)
    t0 = [r["ts_ns"] for r in rows]
    assert t0 == sorted(t0) and abs(t0[0] - time.monotonic_ns()) < 60e9  # CLOCK_MONOTONIC: the trace's clock
    assert _rows(emu) == []  # taken once


class Capture(ctypes.Structure):
    _fields_ = [("stream", ctypes.c_void_p), ("arg", ctypes.c_void_p)]


def test_under_stream_capture_nothing_is_tolled_and_no_stream_call_is_made(emu):
    """A copy on a capturing stream is a graph node being built: untouched. While any capture is open
    (here: another stream's), copies elsewhere still pay their toll, but no stream or event call is
    made (it could invalidate the capture); after it ends, serialization works again."""
    emu.setup(h2d_us=100, d2h_us=100, serialize=1, block=1)
    gpu = emu.gpu
    emu.copy("cuMemcpyHtoDAsync_v2", DEVICE, PINNED, 64, stream=3)  # before: event created and recorded
    assert gpu.stream_calls > 0 and gpu.violations == 0
    emu.call("cuStreamBeginCapture_v2", Capture(5, None), between=lambda: gpu.capturing.add(5))
    for _ in range(3):
        emu.copy("cuMemcpyHtoDAsync_v2", DEVICE, PINNED, 64, stream=5, gpu_ms=2)
        emu.copy("cuMemcpyDtoH_v2", 0x1000, DEVICE, 8)  # legacy stream, another thread's copy, say
    s = emu.stats()
    assert gpu.violations == 0
    assert s["captured_calls"] == 3 and s["h2d_toll_count"] == 1 and s["d2h_toll_count"] == 3
    emu.call("cuStreamEndCapture", Capture(5, None), between=lambda: gpu.capturing.discard(5))
    before = gpu.stream_calls
    emu.copy("cuMemcpyHtoDAsync_v2", DEVICE, PINNED, 64, stream=3)
    assert gpu.stream_calls > before and gpu.violations == 0
    assert emu.stats()["h2d_toll_count"] == 2


class Instantiate(ctypes.Structure):
    _fields_ = [("exec_ptr", ctypes.c_void_p), ("graph", ctypes.c_void_p), ("flags", ctypes.c_ulonglong)]


class Launch(ctypes.Structure):
    _fields_ = [("exec", ctypes.c_void_p), ("stream", ctypes.c_void_p)]


def test_graph_memcpy_nodes_pay_their_toll_at_every_launch(emu):
    emu.setup(h2d_us=100, d2h_us=50, serialize=1)
    gpu = emu.gpu
    gpu.graphs[0x600] = [
        gpu.memcpy_node(0x601, HOST_MEM, 0x7000, DEVICE_MEM, DEVICE, 2048),  # pinned inputs -> GPU
        0x602,  # a kernel
        gpu.memcpy_node(0x603, DEVICE_MEM, DEVICE, HOST_MEM, 0x7100, 64),  # sampled ids -> host
        gpu.memcpy_node(0x604, DEVICE_MEM, DEVICE, DEVICE_MEM, DEVICE + 64, 4096),  # on the GPU: no crossing
        0x605,  # a child graph with one more H2D, from pinned memory through a unified address
    ]
    gpu.nodes[0x602] = ("kernel",)
    gpu.nodes[0x605] = ("graph", 0x700)
    gpu.graphs[0x700] = [gpu.memcpy_node(0x701, UNIFIED_MEM, PINNED, UNIFIED_MEM, DEVICE, 16)]
    exec_handle = ctypes.c_void_p(0)

    def instantiate():
        exec_handle.value = 0xE1

    emu.call("cuGraphInstantiateWithFlags", Instantiate(ctypes.addressof(exec_handle), 0x600, 0), between=instantiate)
    for i in range(4):
        emu.call("cuGraphLaunch", Launch(0xE1, 9), corr=100 + i)
    s = emu.stats()
    assert (s["graphs"], s["graph_launches"], s["graph_copies"]) == (1, 4, 12)
    assert (s["h2d_toll_count"], s["d2h_toll_count"]) == (8, 4)
    assert s["toll_by_log2_bytes"] == {"h2d": {"11": 4, "4": 4}, "d2h": {"6": 4}}
    rows = [r for r in _rows(emu) if r["kind"] == "toll"]
    assert {r["call"] for r in rows} == {"cuGraphLaunch"}
    assert sorted((r["correlation_id"], r["direction"], r["bytes"]) for r in rows if r["correlation_id"] == 100) == [
        (100, "d2h", 64),
        (100, "h2d", 16),
        (100, "h2d", 2048),
    ]
    # launched into a capture (a child graph node being built): not a crossing now
    gpu.capturing.add(9)
    emu.call("cuStreamBeginCapture_v2", Capture(9, None))
    emu.call("cuGraphLaunch", Launch(0xE1, 9))
    emu.call("cuStreamEndCapture", Capture(9, None), between=lambda: gpu.capturing.discard(9))
    assert emu.stats()["graph_launches"] == 4 and gpu.violations == 0
    # destroyed: a later exec at the same address is another graph
    emu.call("cuGraphExecDestroy", Launch(0xE1, None))
    emu.call("cuGraphLaunch", Launch(0xE1, 9))
    assert emu.stats()["graph_launches"] == 4


def test_a_failed_instantiate_is_not_learned(emu):
    emu.setup(h2d_us=10)
    gpu = emu.gpu
    gpu.graphs[0x800] = [gpu.memcpy_node(0x801, HOST_MEM, 0x7000, DEVICE_MEM, DEVICE, 8)]
    exec_handle = ctypes.c_void_p(0xE2)
    emu.call("cuGraphInstantiateWithFlags", Instantiate(ctypes.addressof(exec_handle), 0x800, 0), ret=1)
    emu.call("cuGraphLaunch", Launch(0xE2, 1))
    assert emu.stats()["graphs"] == emu.stats()["h2d_toll_count"] == 0


def test_inj_rec_matches_inj_dtype(tmp_path):
    from cctrace.record.bridge import INJ_DTYPE
    from tests.test_structs import _c_layout, _mismatches, _struct

    decl, members = _struct(BRIDGE_SOURCE, "inj_rec")
    assert _mismatches(_c_layout(tmp_path, decl, "inj_rec", members), INJ_DTYPE) == []
    lib = load_lib(build_native(BRIDGE_SOURCE))
    assert lib.cct_bridge_record_size() == INJ_DTYPE.itemsize


def test_the_tracer_drain_writes_the_injections_as_a_shard(emu, tmp_path):
    """BridgeEmulator.drain (the flusher's call) turns the C records into bridge_injections shards, and its
    health counts the rows."""
    from cctrace.record.bridge import BridgeEmulator
    from cctrace.trace.shards import ShardWriter, read_shard

    emu.setup(h2d_us=50, d2h_us=50)
    w = ShardWriter(tmp_path, 4242)
    src = BridgeEmulator(parse_spec("toll-only"), writer=w)
    src.lib = load_lib(build_native(BRIDGE_SOURCE))  # the same loaded library the calls go through
    src.names = {(1, cbid): name for name, (cbid, _) in CALLS.items()}
    for i in range(3):
        emu.copy("cuMemcpyHtoDAsync_v2", DEVICE, 0x1000, 64, corr=i + 1)
    src.drain()
    emu.copy("cuMemcpyDtoH_v2", 0x1000, DEVICE, 8, corr=9)
    src.stop()  # not subscribed here: only the last drain
    w.close()
    (shard,) = tmp_path.glob("bridge_injections.*.arrows")
    rows = read_shard(shard).data.to_pylist()
    assert [(r["pid"], r["call"], r["correlation_id"]) for r in rows] == [
        (4242, "cuMemcpyHtoDAsync_v2", 1),
        (4242, "cuMemcpyHtoDAsync_v2", 2),
        (4242, "cuMemcpyHtoDAsync_v2", 3),
        (4242, "cuMemcpyDtoH_v2", 9),
    ]
    h = src.health()
    assert h["records"] == {"bridge_injections": 4} and h["dropped"] == 0
    assert h["injected"]["toll_count"] == 4
