"""Python stacks captured by the C shim inside CUPTI callbacks, without the GIL.

The stand-in CUPTI of test_cupti_shim.py plays the CUDA call: Python calls it through ctypes (which
lets go of the GIL, as torch does around its copies) from known lines, on the main thread, on other
threads and in asyncio tasks, and the call sites the shim recorded must be exactly those lines.
"""

import asyncio
import ctypes
import subprocess
import sys
import sysconfig
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from cctrace.record.native import address, build_shim, load_shim
from cctrace.record.sources import py_stacks
from cctrace.record.sources.cupti_raw import iter_buffers_with_strings
from cctrace.record.sources.cupti_source import API_DTYPE
from cctrace.trace.handoff import Handoff
from tests.test_cupti_shim import FAKE, FAKE_CALLBACKS, stand_in

CBID = 7


def _marker_line(path: Path, marker: str) -> int:
    """The line of `path` that carries `marker` (so no test hard-codes a line number)."""
    (line,) = [i for i, text in enumerate(path.read_text().splitlines(), 1) if text.rstrip().endswith(marker)]
    return line


HERE = Path(__file__)


@pytest.fixture
def recording(tmp_path):
    """The shim recording runtime call CBID through the stand-in CUPTI, stacks on."""
    fake, fc = stand_in(tmp_path, "fake", FAKE), stand_in(tmp_path, "fakecb", FAKE_CALLBACKS)
    shim = load_shim(build_shim())
    raw = tmp_path / "cupti.9.cuptiraw"
    assert shim.cct_start(address(fake.cuptiActivityRegisterCallbacks), str(raw).encode(), 64 * 1024) == 0
    doms, ids = (ctypes.c_int * 1)(2), (ctypes.c_uint32 * 1)(CBID)
    assert (
        shim.cct_api_start(
            address(fc.fake_subscribe), address(fc.fake_enable), address(fc.fake_timestamp), doms, ids, 1
        )
        == 0
    )
    assert py_stacks.start(shim) == {"state": "on", "python": f"3.{sys.version_info.minor}"}
    yield shim, fc, raw
    shim.cct_stacks_enable(0)


def _decoded(raw: Path, skip=(), keep=()) -> tuple[np.ndarray, dict[int, list], dict[int, int]]:
    """(API records, stack id -> frames, stack id -> call-site depth) from a raw file."""
    api, stk = [], []
    for _ in iter_buffers_with_strings(raw, api.append, stk.append):
        pass
    recs = np.concatenate([np.frombuffer(b, API_DTYPE) for b in api])
    stacks = dict(s for block in stk for s in py_stacks.parse_stacks(block))
    sites = {sid: py_stacks.callsite_index(frames, skip, keep) for sid, frames in stacks.items()}
    return recs, stacks, sites


def _site(recs, stacks, sites, corr: int) -> tuple[str, int, str]:
    (i,) = np.flatnonzero(recs["correlation_id"] == corr)
    sid = int(recs["stack_id"][i])
    return stacks[sid][sites[sid]]


def _loop_of_calls(fc, first: int, n: int) -> None:
    for i in range(n):
        fc.fake_call(2, CBID, first + i, 0)  # CALLSITE-LOOP


async def _task(fc, corr: int) -> None:
    await asyncio.sleep(0)
    fc.fake_call(2, CBID, corr, 0)  # CALLSITE-TASK


def test_every_call_names_its_line_on_threads_and_tasks(recording):
    shim, fc, raw = recording
    fc.fake_call(2, CBID, 1, 0)  # CALLSITE-MAIN
    threads = [threading.Thread(target=_loop_of_calls, args=(fc, 1000 * (t + 1), 500)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    async def both():
        await asyncio.gather(_task(fc, 10), _task(fc, 11))

    asyncio.run(both())
    shim.cct_stacks_enable(0)
    fc.fake_call(2, CBID, 2, 0)  # recorded, without a stack
    shim.cct_api_flush(1)

    recs, stacks, sites = _decoded(raw)
    assert len(recs) == 1 + 4 * 500 + 2 + 1
    me = HERE.as_posix()
    assert _site(recs, stacks, sites, 1) == (me, _marker_line(HERE, "# CALLSITE-MAIN"), _qualname())
    for corr in (1000, 1499, 2000, 4499):
        assert _site(recs, stacks, sites, corr) == (me, _marker_line(HERE, "# CALLSITE-LOOP"), "_loop_of_calls")
    for corr in (10, 11):
        assert _site(recs, stacks, sites, corr) == (me, _marker_line(HERE, "# CALLSITE-TASK"), "_task")
    assert recs["stack_id"][recs["correlation_id"] == 2].tolist() == [0]
    # the four threads share one stack: interned once (same frames, same lines)
    loop_ids = set(recs["stack_id"][recs["correlation_id"] >= 1000].tolist())
    assert len(loop_ids) == 1
    (loop_id,) = loop_ids
    assert [f[2] for f in stacks[loop_id]][:3] == ["_loop_of_calls", "Thread.run", "Thread._bootstrap_inner"]
    # the task's stack runs through the event loop down to this test
    task_id = int(recs["stack_id"][recs["correlation_id"] == 10][0])
    assert [f[2] for f in stacks[task_id]].count(_qualname()) == 1
    assert py_stacks.stats(shim) == {
        "calls_with_stack": 1 + 4 * 500 + 2,
        "calls_without_python": 0,
        "calls_dropped": 0,
        "stacks": len(stacks),
    }


def _qualname() -> str:
    return "test_every_call_names_its_line_on_threads_and_tasks"


def test_call_site_is_the_innermost_frame_outside_the_frameworks(recording, tmp_path):
    shim, fc, raw = recording
    pkg = tmp_path / "site-packages" / "fakefw"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """
            def copy(fc, corr):
                return _inner(fc, corr)

            def _inner(fc, corr):
                fc.fake_call(2, 7, corr, 0)  # FW-LINE
            """
        )
    )
    sys.path.insert(0, str(pkg.parent))
    try:
        import fakefw

        fakefw.copy(fc, 5)  # USER-LINE
    finally:
        sys.path.remove(str(pkg.parent))
        sys.modules.pop("fakefw", None)
    shim.cct_api_flush(1)
    me, fw = HERE.as_posix(), (pkg / "__init__.py").as_posix()
    skip = py_stacks.default_skip()
    user = (me, _marker_line(HERE, "# USER-LINE"), "test_call_site_is_the_innermost_frame_outside_the_frameworks")
    assert _site(*_decoded(raw, skip), 5) == user
    assert _site(*_decoded(raw, skip, ["fakefw"]), 5) == (fw, _marker_line(pkg / "__init__.py", "# FW-LINE"), "_inner")
    assert _site(*_decoded(raw, [*skip, "*/test_py_stacks.py"]), 5)[0] != me  # a glob skips this file too
    # decoded as `cctrace record` does (CuptiSource.convert_stacks), with the patterns the process had
    from cctrace.record.sources.cupti_source import CuptiSource
    from cctrace.trace.shards import ShardWriter, read_shard

    writer = ShardWriter(tmp_path / "trace", 9)
    src = CuptiSource(writer, ("runtime",), stacks={"on": True, "keep": ["fakefw"]})
    for _ in iter_buffers_with_strings(raw, None, src.convert_stacks):
        pass
    writer.close()
    rows = read_shard(next((tmp_path / "trace").glob("stacks.*.arrows"))).data.to_pylist()
    (site,) = [(r["file"], r["line"], r["function"]) for r in rows if r["is_callsite"]]
    assert site == (fw, _marker_line(pkg / "__init__.py", "# FW-LINE"), "_inner")
    assert {r["pid"] for r in rows} == {9} and {r["source"] for r in rows} == {"cupti"}
    # the rows of the `stacks` table: one call site per stack, depth 0 innermost
    _, stacks, _ = _decoded(raw)
    cols = py_stacks.stack_rows(stacks.items(), skip, [])
    assert sum(cols["is_callsite"]) == len(stacks)
    assert cols["depth"][:2] == [0, 1] and cols["function"][:2] == ["_inner", "copy"]


def test_call_site_patterns():
    frames = [
        ("/x/site-packages/torch/nn/m.py", 3, "f"),
        ("/usr/lib/python3.11/threading.py", 9, "run"),
        ("/srv/app/serve.py", 40, "step"),
        ("/srv/app/main.py", 7, "<module>"),
    ]
    assert py_stacks.callsite_index(frames, ["torch", "/usr/lib/python3.11/"], []) == 2
    assert py_stacks.callsite_index(frames, ["torch", "/usr/lib/python3.11/", "*/serve.py"], []) == 3
    assert py_stacks.callsite_index(frames, ["torch"], ["torch"]) == 0
    assert py_stacks.callsite_index(frames, ["torch", "threading", "app"], []) == 0  # nothing left: innermost
    assert py_stacks.callsite_index([("/a/torch.py", 1, "f"), ("/a/b.py", 2, "g")], ["torch"], []) == 1
    # cctrace's own frames are skipped by the package's path, not by a folder's name
    pkg = Path(py_stacks.__file__).resolve().parents[2]
    own = [(str(pkg / "record" / "tracer.py"), 5, "wrapped"), ("/root/cctrace/examples/serve.py", 9, "step")]
    assert py_stacks.callsite_index(own, py_stacks.default_skip(), []) == 1


def test_no_stacks_is_handed_to_the_traced_process():
    handed = Handoff(
        trace_dir="/t", kinds=("memcpy",), stacks=False, callsite_skip=("a/b", "c"), callsite_keep=("vllm",)
    )
    back = Handoff.from_env(handed.to_env())
    assert (back.stacks, back.callsite_skip, back.callsite_keep) == (False, ("a/b", "c"), ("vllm",))
    assert Handoff.from_env(Handoff(trace_dir="/t", kinds=()).to_env()).stacks is True


LAYOUT_PROBE = r"""
#define Py_BUILD_CORE 1
#include <Python.h>
#include <stddef.h>
#include <stdio.h>
#include "internal/pycore_frame.h"
#include "internal/pycore_code.h"
int main(void) {
    printf("%d %zu %zu %zu %zu %zu %zu %d %d %zu %zu %zu %zu %zu %zu\n", PY_MINOR_VERSION,
           offsetof(PyThreadState, cframe), offsetof(_PyCFrame, current_frame),
           offsetof(_PyInterpreterFrame, f_code), offsetof(_PyInterpreterFrame, previous),
           offsetof(_PyInterpreterFrame, prev_instr), offsetof(_PyInterpreterFrame, owner),
           (int)FRAME_OWNED_BY_GENERATOR, CSTACK,
           offsetof(PyCodeObject, co_filename), offsetof(PyCodeObject, co_qualname),
           offsetof(PyCodeObject, _co_firsttraceable), offsetof(PyCodeObject, co_code_adaptive),
           sizeof(PyASCIIObject), sizeof(PyCompactUnicodeObject));
    return 0;
}
"""


def _include_dirs() -> dict[int, Path]:
    """Python header folders here: this interpreter's, and those of sibling installations (pyenv)."""
    found = {}
    own = Path(sysconfig.get_paths()["include"])
    for minor in (11, 12):
        for cand in [own, *Path(sys.base_prefix).parent.glob(f"3.{minor}*/include/python3.{minor}")]:
            if cand.name == f"python3.{minor}" and (cand / "internal" / "pycore_frame.h").exists():
                found[minor] = cand
                break
    return found


@pytest.mark.parametrize("minor", [11, 12])
def test_frame_layout_matches_the_internal_headers(tmp_path, minor):
    inc = _include_dirs().get(minor)
    if inc is None:
        pytest.skip(f"no CPython 3.{minor} internal headers on this machine")
    src = tmp_path / "probe.c"
    src.write_text(LAYOUT_PROBE.replace("CSTACK", "-1" if minor == 11 else "(int)FRAME_OWNED_BY_CSTACK"))
    subprocess.run(["cc", "-I", str(inc), "-o", str(tmp_path / "probe"), str(src)], check=True)
    want = [
        int(x)
        for x in subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True, check=True).stdout.split()
    ]
    shim = load_shim(build_shim())
    out = (ctypes.c_int * 32)()
    n = shim.cct_stacks_layout(minor, out, 32)
    assert list(out[:n]) == want


def test_unknown_python_leaves_stacks_off():
    shim = load_shim(build_shim())
    assert shim.cct_stacks_layout(10, (ctypes.c_int * 32)(), 32) == -1
    assert shim.cct_stacks_init(13, None, None, None, None) == -1


def test_manifest_says_whether_stacks_were_captured():
    from cctrace.trace.manifest import stacks_summary

    def proc(pid, state, n):
        return {"pid": pid, "sources": {"cupti": {"stacks": {"state": state, "calls_with_stack": n}}}}

    got = stacks_summary([proc(1, "on", 5), proc(2, "off (--no-stacks)", 0), {"pid": 3, "sources": {}}])
    assert got["captured"] is True and got["calls_with_stack"] == 5
    assert got["processes"] == {"1": "on", "2": "off (--no-stacks)"}
    assert stacks_summary([proc(2, "off (--no-stacks)", 0)])["captured"] is False
    # --interpose on with CUPTI: both sources capture the same calls; the process's calls count once
    both = proc(4, "on", 7)
    both["sources"]["interposer"] = {"state": "active", "stacks": {"state": "on", "calls_with_stack": 7}}
    assert stacks_summary([both])["calls_with_stack"] == 7


WRONG_LAYOUT = """
import ctypes, sys
from cctrace.record.native import build_shim, load_shim
from cctrace.record.sources import py_stacks
shim = load_shim(build_shim())
api = ctypes.pythonapi
other = 12 if sys.version_info.minor == 11 else 11
assert shim.cct_stacks_init(other, ctypes.cast(api.PyGILState_GetThisThreadState, ctypes.c_void_p).value,
                            ctypes.cast(api.PyCode_Addr2Line, ctypes.c_void_p).value,
                            ctypes.addressof(ctypes.c_char.in_dll(api, "PyCode_Type")),
                            ctypes.addressof(ctypes.c_char.in_dll(api, "PyUnicode_Type"))) == 0
print("PROBLEM", py_stacks.check(shim))
"""


@pytest.mark.skipif(sys.version_info[:2] not in ((3, 11), (3, 12)), reason="needs a layout cctrace knows")
def test_a_layout_that_does_not_fit_turns_stacks_off_without_crashing():
    from tests.conftest import project_env

    r = subprocess.run([sys.executable, "-c", WRONG_LAYOUT], capture_output=True, text=True, env=project_env())
    assert r.returncode == 0, r.stderr[-2000:]
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("PROBLEM ")]
    assert line != "PROBLEM None"


def test_doctor_says_whether_this_python_gives_call_sites():
    import json

    from tests.conftest import cctrace

    checks = {c["check"]: c for c in json.loads(cctrace("doctor", "--json").stdout)}
    got = checks["Python stacks (call sites)"]
    assert (got["status"], got["detail"]) == (
        "ok",
        f"CPython 3.{sys.version_info.minor}: frames readable without the GIL",
    )


def test_record_summary_says_why_a_traced_process_has_no_stacks(tmp_path, capsys):
    import json

    from cctrace.cli import _print_record_summary

    def proc(pid, cupti, state):
        return {"pid": pid, "cupti": cupti, "sources": {"cupti": {"stacks": {"state": state}}}}

    procs = [
        proc(1, "active", "on"),
        proc(2, "active", "off: CPython 3.13's frame layout is not known to cctrace (3.11 and 3.12 are)"),
        proc(3, "active", "off (--no-stacks)"),
        proc(4, "off: no NVIDIA driver here", "off: runtime calls not recorded by the shim"),
    ]
    (tmp_path / "manifest.json").write_text(json.dumps({"processes": procs}))
    _print_record_summary(tmp_path, {})
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "stacks" in ln]
    assert lines == [
        "cctrace:   pid 2: no Python stacks (call sites): CPython 3.13's frame layout is not known to cctrace (3.11 and 3.12 are)"
    ]


def test_odd_manifests_do_not_break_the_stacks_summary_or_the_report_paths(tmp_path):
    import json

    from cctrace.trace.manifest import read_manifest, stacks_summary

    odd = [
        {"pid": 1, "sources": []},
        {"pid": 2, "sources": {"cupti": "x"}},
        {"pid": 3, "sources": {"cupti": {"stacks": 5}}},
    ]
    assert stacks_summary(odd)["processes"] == {}
    (tmp_path / "manifest.json").write_text(json.dumps({"cwd": 7, "stacks": [], "processes": odd}))
    m = read_manifest(tmp_path)
    assert "cwd" not in m and "stacks" not in m
