"""`record --step-function MODULE:QUALNAME`, for real (no GPU needed): the named functions are wrapped
when their module is imported, with no change to the program, and each call is a `markers` row, in the
main process and in a spawned worker."""

from __future__ import annotations

import json
import sys

import pytest

from cctrace.record.step_function import StepFunctionError, parse_target
from cctrace.trace.shards import read_shard
from tests.conftest import cctrace

MODEL = '''
import asyncio

class Engine:
    def step(self, n):
        return n + 1

    @staticmethod
    def tokenize(s):
        return s.split()

def decode(i):
    return i * 2

async def agenerate(n):
    await asyncio.sleep(0)
    return n

def run(n):  # the module's own callers go through the wrapper too
    return [decode(i) for i in range(n)]
'''

PROGRAM = '''
import multiprocessing as mp, os, sys, asyncio
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

def worker(n):
    import mymodel
    mymodel.run(n)

if __name__ == "__main__":
    import mymodel
    from mymodel import decode  # bound after import: the wrapped one
    e = mymodel.Engine()
    assert [e.step(i) for i in range(5)] == [1, 2, 3, 4, 5]  # results unchanged
    assert mymodel.Engine.tokenize("a b") == ["a", "b"]
    assert decode(3) == 6 and mymodel.run(2) == [0, 2]
    assert asyncio.run(mymodel.agenerate(7)) == 7
    os.getcwd()
    p = mp.get_context("spawn").Process(target=worker, args=(4,))
    p.start(); p.join(); assert p.exitcode == 0
    print("PROGRAM_PIDS", os.getpid(), p.pid)
'''

TARGETS = ["mymodel:Engine.step", "mymodel:Engine.tokenize", "mymodel:decode", "mymodel:agenerate", "os:getcwd"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    d = tmp_path_factory.mktemp("stepfn")
    (d / "mymodel.py").write_text(MODEL)
    (d / "prog.py").write_text(PROGRAM)
    out = d / "trace"
    opts = [x for t in [*TARGETS, "mymodel:Missing.step", "notimported.mod:f"] for x in ("--step-function", t)]
    r = cctrace("record", "--no-load", "--kinds", "none", "--host-probes", "off", "-o", str(out), *opts, "--",
                sys.executable, str(d / "prog.py"), timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("PROGRAM_PIDS"))
    main_pid, child_pid = (int(x) for x in line.split()[1:])
    rows = [row for f in out.glob("markers.*.arrows") for row in read_shard(f).data.to_pylist()]
    return out, rows, main_pid, child_pid


def test_each_call_is_one_marker_in_the_process_that_made_it(recorded):
    _, rows, main_pid, child_pid = recorded

    def count(pid):
        out: dict[str, int] = {}
        for r in rows:
            if r["pid"] == pid:
                out[r["name"]] = out.get(r["name"], 0) + 1
        return out

    # decode: 1 direct + 2 through run(); getcwd: at least the program's own call (os was imported already)
    main = count(main_pid)
    assert main.pop("getcwd") >= 1
    assert main == {"Engine.step": 5, "Engine.tokenize": 1, "decode": 3, "agenerate": 1}
    child = count(child_pid)
    child.pop("getcwd", None)
    assert child == {"decode": 4}  # the spawned worker, its own import
    assert {(r["source"], r["domain"]) for r in rows} == {("step_function", "cctrace")}
    assert all(0 < r["start_ns"] <= r["end_ns"] and r["tid"] > 0 for r in rows)


def test_the_process_record_says_what_was_wrapped(recorded):
    out, _, main_pid, _ = recorded
    proc = json.loads((out / f"proc.{main_pid}.json").read_text())
    state = proc["sources"]["step_function"]["targets"]
    assert {t: state[t] for t in TARGETS} == dict.fromkeys(TARGETS, "wrapped")
    assert state["notimported.mod:f"] == "module not imported"
    assert state["mymodel:Missing.step"].startswith("not wrapped:") and "Missing" in state["mymodel:Missing.step"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["options"]["step_functions"][:5] == TARGETS


@pytest.mark.parametrize("bad", ["nocolon", "mod:", ":fn", "mod:fn()", "a b:c", "mod:1fn"])
def test_a_bad_target_is_refused_before_anything_runs(tmp_path, bad):
    with pytest.raises(StepFunctionError):
        parse_target(bad)
    out = tmp_path / "t"
    r = cctrace("record", "-o", str(out), "--step-function", bad, "--", sys.executable, "-c", "1")
    assert r.returncode == 2 and r.stderr.startswith("cctrace: --step-function:") and "Traceback" not in r.stderr
    assert not out.exists()
