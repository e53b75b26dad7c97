"""Bridge emulation and calibration pieces that run without a GPU: the spec language, the emulator's
build and counters, the ground-truth sum, the profile fit, the plot and the --profile plumbing.
(On the GPU: tests/test_gpu_record.py::test_emulated_bridge_puts_its_toll_inside_the_copy_calls.)"""

import json
import sys

import pytest

from cctrace.bridge import BridgeSpecError, load_lib, parse_spec, read_stats, sum_injected
from cctrace.calibrate import DEFAULT_PROFILE, fit_model, params_from_profile, plot_profile
from cctrace.native import BRIDGE_SOURCE, build_native
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
