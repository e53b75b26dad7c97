"""Bounded tracing (record --toggle-signal/--delay/--duration) with CUPTI truly detached outside the
windows: the real launcher, tracer and C shim in real subprocesses with real signals, over the
stand-in libcupti and cupti-python of tests/standin/ (no GPU here). What is asserted: which calls
were recorded (only those inside a window), and that no CUPTI function was entered while detached.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cctrace.trace.shards import read_shard
from tests.conftest import cc_shared, project_env

STANDIN = Path(__file__).with_name("standin")


@pytest.fixture
def standin_env(tmp_path):
    """An environment in which the stand-in CUPTI is the one cctrace finds."""
    lib = tmp_path / "lib"
    lib.mkdir()
    libcupti = lib / "libcupti.so.13"
    cc_shared(STANDIN / "libcupti_standin.c", libcupti)
    (lib / "empty.c").write_text("int cctrace_test_libcuda;\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib / "libcuda.so.1"), str(lib / "empty.c")], check=True)
    env = project_env()
    env["PYTHONPATH"] = os.pathsep.join([str(STANDIN), env["PYTHONPATH"]])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), env.get("LD_LIBRARY_PATH")]))
    env["CCTRACE_TEST_LIBCUPTI"] = str(libcupti)
    env["CCTRACE_CACHE"] = str(tmp_path / "cache")
    return env


def _record(env, out: Path, mode: str, *window: str, answer=None) -> list[dict]:
    """Run the program under `cctrace record`; `answer(proc, msg)` may signal cctrace. Its messages."""
    cmd = [sys.executable, "-m", "cctrace", "record", "-o", str(out), "--kinds", "memcpy,runtime"]
    cmd += ["--flush-interval", "0.05", "--host-probes", "off", "--no-load", "-q", *window]
    cmd += ["--", sys.executable, str(STANDIN / "windowed.py"), mode]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    msgs = []
    for line in proc.stdout:
        msg = json.loads(line)
        msgs.append(msg)
        if answer:
            answer(proc, msg)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return msgs


def _recorded(out: Path) -> tuple[dict, dict]:
    """Correlation ids (sorted) of the recorded copies and API calls, and the one process record."""
    (proc,) = json.loads((out / "manifest.json").read_text())["processes"]
    ids = {}
    for table in ("copies", "api_calls"):
        path = out / f"{table}.{proc['pid']}.arrows"
        data = read_shard(path).data if path.exists() else None
        ids[table] = sorted(data.column("correlation_id").to_pylist()) if data is not None else []
        if data is not None and table == "copies":
            ids["copy_times"] = list(
                zip(data.column("start_ns").to_pylist(), data.column("end_ns").to_pylist(), strict=True)
            )
    return ids, proc


def _cupti_calls(pair: list[dict]) -> int:
    before, after = pair
    return after["n_calls"] - before["n_calls"]


def test_toggle_signal_detaches_cupti_and_attaches_it_again(tmp_path, standin_env):
    out = tmp_path / "t"

    def answer(proc, msg):
        if msg["at"] in ("off?", "on?"):
            proc.send_signal(signal.SIGUSR2)

    msgs = _record(standin_env, out, "toggle", "--toggle-signal", "USR2", answer=answer)
    ids, proc = _recorded(out)
    by = {m["at"]: m for m in msgs}
    # inside the windows: every call, both ways; outside: none
    for table in ("copies", "api_calls"):
        got = ids[table]
        steady = [i for i in got if i < 10000]
        assert steady == list(range(100)) + list(range(200, 300)), table
        assert not [i for i in got if 100 <= i < 200]
    # while detached (0.5 s, ten flush intervals) no CUPTI function was entered at all
    assert _cupti_calls(by["on?"]["detached"]) == 0
    final = by["done"]["counters"]
    assert final["n_finalize"] == 1  # one detach, finalized at a call's exit
    assert final["n_subscribe"] == 2 and final["n_register"] == 2  # attached twice
    health = proc["sources"]["cupti"]
    assert health["detach"] == {"state": "attached", "detaches": 1, "finalized": 1, "finalize_status": 0}
    assert proc["cupti"] == "active"
    # two windows in the process, in order, and every recorded copy inside one of them
    (w1, w2) = proc["windows"]
    assert w1[0] < w1[1] < w2[0] < w2[1]
    assert all(any(a <= s and e <= b for a, b in proc["windows"]) for s, e in ids["copy_times"])
    m = json.loads((out / "manifest.json").read_text())
    assert m["options"]["window"]["toggle_signal"] == "SIGUSR2"
    assert len(m["options"]["window"]["windows"]) == 2
    assert not list(out.glob("control.*.fifo"))  # the tracer removed its pipe


@pytest.mark.parametrize("mode", ["idle", "idle-cancel"])
def test_a_detach_without_cuda_calls_finalizes_at_the_next_call_or_is_called_off(tmp_path, standin_env, mode):
    """No CUDA call returns while the detach waits: CUPTI is finalized at the program's next call
    ('idle'), or, when tracing is turned on again first, the finalize is called off ('idle-cancel')."""
    out = tmp_path / mode

    def answer(proc, msg):
        if msg["at"] in ("off?", "on?"):
            proc.send_signal(signal.SIGUSR2)

    msgs = _record(standin_env, out, mode, "--toggle-signal", "USR2", answer=answer)
    by = {m["at"]: m for m in msgs}
    assert by["on?"]["state"].startswith("finalize pending")
    ids, proc = _recorded(out)
    expected = list(range(100)) + list(range(200, 300))
    assert ids["copies"] == expected and ids["api_calls"] == expected
    final = by["done"]["counters"]
    if mode == "idle":
        assert by["on?"]["counters"]["n_finalize"] == 1  # at phase B's first call
        assert (final["n_subscribe"], final["n_register"]) == (2, 2)
    else:
        assert final["n_finalize"] == 0  # called off: CUPTI stayed attached, its subscription reused
        assert (final["n_subscribe"], final["n_register"]) == (1, 1)
    assert proc["sources"]["cupti"]["detach"]["state"] == "attached"


def test_delay_and_duration_trace_one_window_only(tmp_path, standin_env):
    for delay in (0.3, 1.5, 5.0):  # a machine under load may start the program after a short window
        out = tmp_path / f"w{delay}"
        (msg,) = _record(standin_env, out, "window", "--delay", str(delay), "--duration", "0.4")
        if msg["at"] != "missed":
            break
    assert msg["at"] == "done"
    ids, proc = _recorded(out)
    opened, closed = msg["opened"], msg["closed"]
    for table in ("copies", "api_calls"):
        got = ids[table]
        assert got and got == list(range(got[0], got[-1] + 1)), table  # one unbroken run of calls
        assert got[0] <= opened and got[-1] < closed  # all seen attached were recorded; none after
    assert _cupti_calls(msg["detached"]) == 0
    (w,) = proc["windows"]
    assert msg["detached"][0]["t_first_call"] >= w[0]  # CUPTI was not touched before the window opened
    assert all(w[0] <= s and e <= w[1] for s, e in ids["copy_times"])
    m = json.loads((out / "manifest.json").read_text())
    (lw,) = m["options"]["window"]["windows"]
    assert lw[0] - m["start_ns"] >= delay * 1e9  # the launcher opened it no sooner than --delay
    assert lw[1] - m["start_ns"] >= (delay + 0.4) * 1e9  # and closed it no sooner than --delay + --duration


def test_window_options_say_no_in_one_line(tmp_path, run_cctrace):
    r = run_cctrace("record", "-o", str(tmp_path / "x"), "--start-detached", "--", "true")
    assert r.returncode == 2 and "needs --toggle-signal" in r.stderr and "Traceback" not in r.stderr
    r = run_cctrace("record", "-o", str(tmp_path / "x"), "--duration", "1", "--interpose", "on", "--", "true")
    assert r.returncode == 2 and "does not follow tracing windows" in r.stderr and "Traceback" not in r.stderr
    r = run_cctrace("record", "-o", str(tmp_path / "x"), "--toggle-signal", "KILL", "--", "true")
    assert r.returncode == 2 and "choose one of" in r.stderr
    r = run_cctrace(
        "record", "-o", str(tmp_path / "x"), "--duration", "1", "--emulate-bridge", "b300-tdx", "--", "true"
    )
    assert r.returncode == 2 and "cannot be combined" in r.stderr
