"""Bridge emulation and calibration pieces that run without a GPU: the spec language, the emulator's
build and counters, the ground-truth sum, the profile fit, the plot and the --profile plumbing.
(On the GPU: tests/test_gpu_record.py::test_emulated_bridge_puts_its_toll_inside_the_copy_calls.)"""

import json
import sys
import time

import pytest

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


class FakeGPU:
    """Streams that stay busy for a set time after each copy is enqueued; events that complete when
    the work recorded before them does; cuPointerGetAttribute by address range."""

    def __init__(self, ctypes):
        self.busy: dict[int, int] = {}
        self.event_ready = 0
        self.copy_ns = 0
        c = ctypes
        self.stream_query = c.CFUNCTYPE(c.c_int, c.c_void_p)(
            lambda s: NOT_READY if time.perf_counter_ns() < self.busy.get(s or 0, 0) else 0
        )
        self.event_query = c.CFUNCTYPE(c.c_int, c.c_void_p)(
            lambda _e: NOT_READY if time.perf_counter_ns() < self.event_ready else 0
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

        self.event_record = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_void_p)(record)
        self.event_create = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_uint)(create)
        self.pointer_attr = c.CFUNCTYPE(c.c_int, c.c_void_p, c.c_int, c.c_uint64)(attr)


HTOD_ASYNC, DTOH_SYNC, UNRELATED = 11, 12, 99


@pytest.fixture
def emu():
    import ctypes

    lib = ctypes.CDLL(str(build_native(BRIDGE_SOURCE)))
    gpu = FakeGPU(ctypes)

    class Params(ctypes.Structure):
        _fields_ = [
            ("dst", ctypes.c_uint64),
            ("src", ctypes.c_uint64),
            ("n", ctypes.c_size_t),
            ("stream", ctypes.c_void_p),
        ]

    def setup(h2d_us=0, d2h_us=0, serialize=0, block=0):
        flags = (ctypes.c_int * 2)(2 | 0x100, 3)  # cuMemcpyHtoDAsync_v2-like, cuMemcpyDtoH_v2-like
        lib.cct_bridge_test_setup(
            gpu.stream_query,
            gpu.event_query,
            gpu.event_record,
            gpu.event_create,
            gpu.pointer_attr,
            (ctypes.c_int * 2)(1, 1),
            (ctypes.c_uint32 * 2)(HTOD_ASYNC, DTOH_SYNC),
            flags,
            2,
            (ctypes.c_int64 * 2)(h2d_us * 1000, d2h_us * 1000),
            (ctypes.c_double * 2)(0.0, 0.0),
            serialize,
            block,
        )

    def copy(cbid, dst, src, n, stream=0, gpu_ms=0.0) -> float:
        """One copy call: enter callback, the copy is enqueued (busy for gpu_ms), exit callback."""
        p = Params(dst, src, n, stream)
        t0 = time.perf_counter_ns()
        lib.cct_bridge_test_call(1, cbid, 0, ctypes.byref(p), None)
        gpu.busy[stream] = time.perf_counter_ns() + int(gpu_ms * 1e6)
        lib.cct_bridge_test_call(1, cbid, 1, ctypes.byref(p), None)
        return (time.perf_counter_ns() - t0) / 1e6

    load_lib(build_native(BRIDGE_SOURCE))  # argtypes for the stats call
    lib.cct_bridge_stats.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_int]
    return setup, copy, lambda: read_stats(lib)


def test_emulator_tolls_each_crossing_where_a_bridge_would(emu):
    setup, copy, stats = emu
    setup(h2d_us=2000, d2h_us=1000)
    assert copy(HTOD_ASYNC, DEVICE, 0x1000, 4096) >= 2.0  # pageable H2D: toll before it is enqueued
    assert copy(DTOH_SYNC, 0x1000, DEVICE, 100) >= 1.0  # D2H: toll after it landed
    copy(UNRELATED, DEVICE, 0x1000, 4096)  # not a copy call it acts on: no toll below
    s = stats()
    assert (s["toll_count"], s["h2d_toll_ns"], s["d2h_toll_ns"]) == (2, 2_000_000, 1_000_000)
    assert s["toll_by_log2_bytes"] == {"h2d": {"12": 1}, "d2h": {"6": 1}}
    assert s["async_block_count"] == s["serialize_count"] == 0


def test_async_copies_of_pinned_memory_block_until_their_stream_is_idle(emu):
    setup, copy, stats = emu
    setup(block=1)
    assert copy(HTOD_ASYNC, DEVICE, PINNED, 64, stream=7, gpu_ms=3) >= 3.0  # pinned: waits for the stream
    copy(HTOD_ASYNC, DEVICE, 0x1000, 64, stream=7, gpu_ms=3)  # pageable source: returns (one block below)
    s = stats()
    assert s["async_block_count"] == 1 and s["async_block_ns"] > 2_500_000


def test_copies_on_different_streams_are_serialized(emu):
    setup, copy, stats = emu
    setup(serialize=1)
    copy(HTOD_ASYNC, DEVICE, PINNED, 64, stream=1, gpu_ms=4)  # stream 1 busy for 4 ms after this
    copy(HTOD_ASYNC, DEVICE, PINNED, 64, stream=1, gpu_ms=0)  # same stream: ordered anyway (one wait below)
    copy(HTOD_ASYNC, DEVICE, PINNED, 64, stream=1, gpu_ms=4)
    assert copy(HTOD_ASYNC, DEVICE, PINNED, 64, stream=2) >= 3.0  # waits for stream 1's copy
    s = stats()
    assert s["serialize_count"] == 1 and s["serialize_ns"] > 2_500_000
