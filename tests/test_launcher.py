"""The launcher end to end with real processes: injection, exit codes, signals, children.

No GPU here, so each traced program proves the bootstrap ran by writing a row through the
tracer that the injected sitecustomize started (`cctrace.record.tracer._active`).
"""

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from tests.conftest import ROOT, cctrace, project_env
from tests.test_host_probes import _require_probes, fake_cuda  # noqa: F401 - a fixture

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


# ---- hardening: the trace directory, the lock, --force, full disks, cctrace's own death, sudo ----------


def _wait_for(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


WAITER = """
import os, sys, time, pathlib
prove('{tag}')
pathlib.Path(sys.argv[1], 'started-{tag}').write_text(str(os.getpid()))
while not pathlib.Path(sys.argv[1], 'go').exists():
    time.sleep(0.05)
"""


def _record_waiter(tmp_path, out, tag: str, **popen) -> subprocess.Popen:
    """`cctrace record` of a program that proves `tag`, says it started, and waits for tmp_path/go."""
    prog = _script(tmp_path, WAITER.format(tag=tag))
    cmd = [sys.executable, "-m", "cctrace", "record", "-o", str(out), "--flush-interval", "0.1", "--",
           sys.executable, str(prog), str(tmp_path)]  # fmt: skip
    return subprocess.Popen(cmd, env=project_env(), **popen)


def test_force_removes_only_what_the_earlier_manifest_lists(tmp_path):
    out = tmp_path / "t"
    r = cctrace("record", "--no-load", "-o", str(out), "--", sys.executable, "-c", "pass")
    assert r.returncode == 0, r.stderr
    for mine in ("data.arrows", "proc.notes.json", "notes.arrows"):  # look like cctrace's, are not
        (out / mine).write_text("mine")
    r = cctrace("record", "--force", "--no-load", "-o", str(out), "--", sys.executable, "-c", "pass")
    assert r.returncode == 0, r.stderr
    assert all((out / n).read_text() == "mine" for n in ("data.arrows", "proc.notes.json", "notes.arrows"))
    # an unlisted file that load would take into the trace: refused, nothing removed
    (out / "copies.99999.arrows").write_text("not from this trace")
    before = sorted(p.name for p in out.iterdir())
    r = cctrace("record", "--force", "--no-load", "-o", str(out), "--", sys.executable, "-c", "pass")
    assert r.returncode == 2 and "does not list (copies.99999.arrows)" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == before


def test_force_without_an_earlier_manifest_removes_nothing(tmp_path):
    out = tmp_path / "t"
    out.mkdir()
    (out / "copies.1.arrows").write_text("a user's file")
    r = cctrace("record", "--force", "--no-load", "-o", str(out), "--", sys.executable, "-c", "pass")
    assert r.returncode == 2 and "lists no files" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (out / "copies.1.arrows").read_text() == "a user's file"


def test_a_second_record_into_a_directory_being_recorded_is_refused(tmp_path):
    out = tmp_path / "t"
    first = _record_waiter(tmp_path, out, "first", stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "started-first")
        for extra in ((), ("--force",)):
            r = cctrace("record", *extra, "-o", str(out), "--", sys.executable, "-c", "pass")
            assert r.returncode == 2 and "being recorded into by another cctrace" in r.stderr, r.stderr
    finally:
        (tmp_path / "go").write_text("")
        assert first.wait(60) == 0, first.stderr.read()
    assert [n for _, n in _markers(out)] == ["first"]  # nothing of the first run was removed


def test_an_unusable_output_directory_is_found_before_the_program_runs(tmp_path):
    marker = tmp_path / "ran"
    for bad in (tmp_path / "afile" / "t", Path("/proc/cctrace-cannot-be-made")):
        (tmp_path / "afile").write_text("")
        r = cctrace("record", "-o", str(bad), "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')")
        assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not marker.exists()
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    r = cctrace("record", "-o", str(link), "--", sys.executable, "-c", "pass")
    assert r.returncode == 2 and "symbolic link" in r.stderr


def test_a_full_disk_keeps_the_exit_status_and_whole_batches(tmp_path):
    """RLIMIT_FSIZE stands in for a full disk: writes past it fail (EFBIG) in cctrace and the program."""
    prog = _script(
        tmp_path,
        """
        import cctrace.record.tracer as T
        for i in range(60):
            prove(os.urandom(1000).hex() + str(i))
            try:
                T._active.writer.flush()  # one batch per row, whatever the machine's load
            except OSError:
                pass
        sys.exit(5)
        """,
    )
    out = tmp_path / "trace"
    limit = 40_000
    wrapper = (
        "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); os.execvp(sys.argv[1], sys.argv[1:])"
    )
    r = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, "-m", "cctrace", "record", "-o", str(out),
         "--flush-interval", "0.05", "--no-load", "--", sys.executable, str(prog)],
        env=project_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 5, r.stderr  # the program's status, whatever failed in cctrace
    assert "Traceback" not in r.stderr
    shard = next(out.glob("markers.*.arrows"))
    assert shard.stat().st_size <= limit
    (proc,) = [json.loads(p.read_text()) for p in out.glob("proc.*.json")]
    assert proc["rows_lost"]["markers"] > 0
    assert proc["rows_written"]["markers"] + proc["rows_lost"]["markers"] == 60
    from cctrace.trace.shards import read_shard

    got = read_shard(shard)
    assert got.problem is None  # every batch written was whole: the shard reads to its end
    assert got.data.num_rows == proc["rows_written"]["markers"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no half-written temporaries left
    r = cctrace("load", str(out))
    assert r.returncode == 0 and "PARTIAL" in r.stderr and "could not be written" in r.stderr


def test_sigkill_of_cctrace_leaves_a_loadable_partial_trace(tmp_path):
    out = tmp_path / "t"
    launcher = _record_waiter(tmp_path, out, "survivor", stderr=subprocess.DEVNULL)
    _wait_for(tmp_path / "started-survivor")
    pid = int((tmp_path / "started-survivor").read_text())
    launcher.kill()
    launcher.wait()
    (tmp_path / "go").write_text("")  # the program runs on and finishes on its own
    deadline = time.monotonic() + 60
    while json.loads((out / f"proc.{pid}.json").read_text()).get("end_ns") is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not (out / "manifest.json").exists()
    r = cctrace("report", str(out))
    assert r.returncode == 0 and "PARTIAL" in r.stdout and "no manifest.json" in r.stdout
    con = duckdb.connect(str(out / "trace.duckdb"), read_only=True)
    assert con.execute("SELECT pid FROM processes").fetchall() == [(pid,)]  # taken from the process record
    con.close()
    assert [n for _, n in _markers(out)] == ["survivor"]


def test_secrets_never_reach_the_trace(tmp_path):
    out = tmp_path / "t"
    secret_args = ["--api-key", "sk-live-0123456789abcdefghijkl", "--password=hunter2", "https://u:pw@host/x"]
    r = cctrace(
        "record", "-o", str(out), "--", sys.executable, "-c", "pass", *secret_args,
        env={"HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz", "NCCL_PASS": "pw2", "HF_ENDPOINT": "https://a:pw3@h/"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    for f in out.iterdir():
        data = f.read_bytes()
        for secret in (b"sk-live", b"hunter2", b":pw@", b"hf_abcdef", b"pw2", b"pw3"):
            assert secret not in data, (f.name, secret)
    m = json.loads((out / "manifest.json").read_text())
    assert "--api-key" in m["command"] and "--password=<redacted>" in m["command"]


@pytest.mark.root
def test_under_sudo_the_program_and_every_trace_file_belong_to_the_user(fake_cuda):  # noqa: F811
    """As root with sudo's variables: the probes load as root, then the launcher drops to the user for
    good; the program runs as the user and every file of the trace is the user's."""
    _require_probes()
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd")
    user = "cctrace-test"
    if subprocess.run(["id", user], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-m", user], check=True)
    pw = pwd.getpwnam(user)
    pub = Path(tempfile.mkdtemp(prefix="cctrace-sudo-", dir="/tmp"))
    try:
        os.chmod(pub, 0o755)
        cuda = pub / "cuda"
        cuda.mkdir(mode=0o755)
        subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", str(cuda / "libcuda.so.1"), str(fake_cuda / "lib.c")], check=True)
        subprocess.run(["cc", "-O1", "-o", str(cuda / "app"), str(fake_cuda / "app.c"), str(cuda / "libcuda.so.1")], check=True)
        for p in cuda.iterdir():
            os.chmod(p, 0o755)
        home = pub / "home"
        home.mkdir()
        os.chown(home, pw.pw_uid, pw.pw_gid)
        out = home / "trace"
        script = f"id -u > {home}/uid; echo $HOME > {home}/home; echo go | {pub}/cuda/app"
        env = {"SUDO_UID": str(pw.pw_uid), "SUDO_GID": str(pw.pw_gid), "SUDO_USER": user,
               "CCTRACE_LIBCUDA": str(pub / "cuda" / "libcuda.so.1")}  # fmt: skip
        r = cctrace("record", "-o", str(out), "--host-probes", "on", "--", "sh", "-c", script, env=env)
        assert r.returncode == 0, r.stderr
        assert (home / "uid").read_text().strip() == str(pw.pw_uid)
        assert (home / "home").read_text().strip() == pw.pw_dir  # the user's own cache, not root's
        owners = {p.name: p.stat().st_uid for p in [out, *out.iterdir()]}
        assert set(owners.values()) == {pw.pw_uid}, owners
        m = json.loads((out / "manifest.json").read_text())
        assert m["options"]["host_probes"]["state"] == "active"
        con = duckdb.connect(str(out / "trace.duckdb"), read_only=True)
        assert con.execute("SELECT count(*) FROM host_waits").fetchall()[0][0] > 0  # the probes ran as root
        assert con.execute("SELECT count(*) FROM api_calls").fetchall()[0][0] > 0
        con.close()
    finally:
        shutil.rmtree(pub, ignore_errors=True)


@pytest.mark.gpu
def test_a_real_recording_loads_complete(tmp_path):
    """On a GPU: every row each process wrote (CUPTI shards, the raw decoder continuing them) loads, so
    nothing is PARTIAL, and no shard has a problem."""
    from tests.test_gpu_record import SERVE

    out = tmp_path / "serve"
    r = cctrace("record", "-o", str(out), "--nvtx", "--kernels", "--json", "--", *SERVE, "--steps", "20", timeout=600)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout[r.stdout.rindex("{\n  \"trace\"") :])  # after the program's own output
    load = summary["load"]
    assert load["partial"] == [] and [p for p in load["problems"] if "lacks" not in p] == [], load
    assert load["rows"]["copies"] > 0 and load["rows"]["api_calls"] > 0
    m = json.loads((out / "manifest.json").read_text())
    written = sum(sum((p.get("rows_written") or {}).values()) for p in m["processes"])
    assert written > 0 and all(not p.get("rows_lost") for p in m["processes"])
    rep = cctrace("report", str(out))
    assert rep.returncode == 0 and "PARTIAL" not in rep.stdout
