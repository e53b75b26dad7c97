"""The launcher end to end with real processes: injection, exit codes, signals, children.

No GPU here, so each traced program proves the bootstrap ran by writing a row through the
tracer that the injected sitecustomize started (`cctrace.record.tracer._active`).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import duckdb

from tests.conftest import ROOT, cctrace

PROVE = textwrap.dedent(
    """
    import os, sys, time
    def prove(tag):
        import cctrace.record.tracer as T
        t = T._active
        assert t is not None, "tracer not started"
        t.writer.extend("markers", ("pid", "tid", "name", "domain", "start_ns", "end_ns", "source"),
                        [(os.getpid(), 0, tag, "test", time.monotonic_ns(), time.monotonic_ns(), "test")])
    """
)


def _script(tmp_path, body: str, name="prog.py"):
    p = tmp_path / name
    p.write_text(PROVE + textwrap.dedent(body))
    return p


def _markers(trace):
    con = duckdb.connect(str(trace / "trace.duckdb"), read_only=True)
    rows = con.execute("SELECT pid, name FROM markers ORDER BY name").fetchall()
    con.close()
    return rows


def test_exit_code_and_bootstrap_in_plain_program(tmp_path):
    prog = _script(tmp_path, "prove('main'); sys.exit(7)\n")
    out = tmp_path / "trace"
    r = cctrace("record", "-o", str(out), "--", sys.executable, str(prog))
    assert r.returncode == 7, r.stderr
    assert [n for _, n in _markers(out)] == ["main"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["exit_code"] == 7
    assert m["command"][-1] == str(prog)
    (proc,) = m["processes"]
    assert proc["end_ns"] >= proc["start_ns"]
    assert proc["cupti"].startswith("off:")  # no GPU here: said why, program still ran


def test_missing_command_gives_127(tmp_path):
    r = cctrace("record", "-o", str(tmp_path / "t"), "--", "no-such-command-xyz")
    assert r.returncode == 127
    assert "command not found: no-such-command-xyz" in r.stderr
    assert "Traceback" not in r.stderr


def test_no_command_is_a_usage_error(tmp_path):
    r = cctrace("record", "-o", str(tmp_path / "t"))
    assert r.returncode == 2 and "no command given" in r.stderr


def test_unhandled_exception_still_flushes(tmp_path):
    prog = _script(tmp_path, "prove('before-crash'); raise RuntimeError('boom')\n")
    out = tmp_path / "trace"
    r = cctrace("record", "-o", str(out), "--", sys.executable, str(prog))
    assert r.returncode == 1 and "boom" in r.stderr
    assert [n for _, n in _markers(out)] == ["before-crash"]


def test_children_of_subprocess_and_multiprocessing_are_traced(tmp_path):
    prog = _script(
        tmp_path,
        """
        import multiprocessing as mp, subprocess
        def work(tag):
            prove(tag)
        if __name__ == "__main__":
            prove("parent")
            subprocess.run([sys.executable, "-c", "import sys, cctrace.record.tracer as T; assert T._active; "
                            "exec(open(sys.argv[1]).read().split('if __name__')[0]); prove('subprocess')",
                            __file__], check=True)
            for method in ("fork", "spawn", "forkserver"):
                ctx = mp.get_context(method)
                p = ctx.Process(target=work, args=(method,))
                p.start(); p.join()
                assert p.exitcode == 0, (method, p.exitcode)
            with mp.get_context("spawn").Pool(2) as pool:
                pool.map(work, ["pool-a", "pool-b"])
        """,
    )
    out = tmp_path / "trace"
    r = cctrace("record", "-o", str(out), "--", sys.executable, str(prog), timeout=180)
    assert r.returncode == 0, r.stderr
    rows = _markers(out)
    names = sorted(n for _, n in rows)
    assert names == sorted(["parent", "subprocess", "fork", "spawn", "forkserver", "pool-a", "pool-b"])
    pids = {n: p for p, n in rows}
    assert len({pids[n] for n in ("parent", "subprocess", "fork", "spawn", "forkserver")}) == 5
    m = json.loads((out / "manifest.json").read_text())
    fork_rec = next(p for p in m["processes"] if p["pid"] == pids["fork"])
    assert fork_rec["forked_from"] == pids["parent"]
    con = duckdb.connect(str(out / "trace.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM processes").fetchone()[0] >= 7


def test_users_sitecustomize_and_pythonpath_keep_working(tmp_path):
    site = tmp_path / "usersite"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import builtins\nbuiltins.USER_SITE_RAN = True\n")
    (site / "usermod.py").write_text("VALUE = 42\n")
    prog = _script(
        tmp_path, "import builtins, usermod\nassert builtins.USER_SITE_RAN and usermod.VALUE == 42\nprove('ok')\n"
    )
    out = tmp_path / "trace"
    r = cctrace("record", "-o", str(out), "--", sys.executable, str(prog), env={"PYTHONPATH": f"{ROOT}:{site}"})
    assert r.returncode == 0, r.stderr
    assert [n for _, n in _markers(out)] == ["ok"]


def _start_in_own_group(args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "cctrace", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for(path, timeout=30):
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


def test_sigterm_reaches_child_and_trace_is_complete(tmp_path):
    ready = tmp_path / "ready"
    prog = _script(tmp_path, f"prove('started'); open({str(ready)!r}, 'w').close(); time.sleep(60)\n")
    out = tmp_path / "trace"
    p = _start_in_own_group(["record", "-o", str(out), "--", sys.executable, str(prog)])
    _wait_for(ready)
    p.send_signal(signal.SIGTERM)  # to cctrace only: it must forward
    _, err = p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert [n for _, n in _markers(out)] == ["started"]
    (proc,) = json.loads((out / "manifest.json").read_text())["processes"]
    assert proc["exit_reason"] == "SIGTERM"


def test_ctrl_c_to_the_process_group(tmp_path):
    ready = tmp_path / "ready"
    prog = _script(tmp_path, f"prove('started'); open({str(ready)!r}, 'w').close(); time.sleep(60)\n")
    out = tmp_path / "trace"
    p = _start_in_own_group(["record", "-o", str(out), "--", sys.executable, str(prog)])
    _wait_for(ready)
    os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, err = p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGINT and "KeyboardInterrupt" in err  # as the shell reports Ctrl-C
    assert [n for _, n in _markers(out)] == ["started"]


def test_sigkilled_program_leaves_a_loadable_trace(tmp_path):
    ready = tmp_path / "ready"
    prog = _script(
        tmp_path,
        f"""
        prove('early')
        time.sleep(0.5)   # longer than the flush interval
        open({str(ready)!r}, 'w').close()
        prove('lost-maybe')
        os.kill(os.getpid(), 9)
        """,
    )
    out = tmp_path / "trace"
    r = cctrace("record", "-o", str(out), "--flush-interval", "0.1", "--", sys.executable, str(prog))
    assert r.returncode == 128 + 9
    names = [n for _, n in _markers(out)]
    assert "early" in names


def test_refuses_non_empty_output_without_force(tmp_path):
    out = tmp_path / "t"
    out.mkdir()
    (out / "x").write_text("keep me")
    r = cctrace("record", "-o", str(out), "--", sys.executable, "-c", "pass")
    assert r.returncode == 2 and "--force" in r.stderr
    assert (out / "x").read_text() == "keep me"


def test_force_replaces_an_earlier_trace_and_keeps_other_files(tmp_path):
    out = tmp_path / "t"
    for code in ("import sys; sys.exit(3)", "pass"):
        r = cctrace("record", "--force", "--no-load", "-o", str(out), "--", sys.executable, "-c", code)
    assert r.returncode == 0, r.stderr
    (out / "notes.txt").write_text("mine")
    r = cctrace("record", "--force", "--no-load", "-o", str(out), "--", sys.executable, "-c", "pass")
    assert r.returncode == 0
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["processes"]) == 1 and len(list(out.glob("proc.*.json"))) == 1  # the earlier runs are gone
    assert (out / "notes.txt").read_text() == "mine"
