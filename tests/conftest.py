"""Shared fixtures: the real launcher, real subprocesses, real DuckDB; GPU tests skip without a GPU."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "cctrace" / "record" / "native"  # the C sources and headers cctrace builds


def _have_gpu() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return shutil.which("nvidia-smi") is not None


HAVE_GPU = _have_gpu()


def pytest_collection_modifyitems(config, items):  # noqa: ARG001
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (libcuda.so.1 and nvidia-smi)")
    for item in items:
        if "gpu" in item.keywords and not HAVE_GPU:
            item.add_marker(skip)


def project_env() -> dict[str, str]:
    """This environment with the project root first on PYTHONPATH (what is already there stays:
    on the GPU machine it holds cupti-python)."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def cctrace(*args: str, timeout: float = 120, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run the real CLI as a user would (`python -m cctrace ...`)."""
    e = project_env()
    if env:
        e.update(env)
    return subprocess.run(
        [sys.executable, "-m", "cctrace", *args], capture_output=True, text=True, timeout=timeout, env=e, **kw
    )


def toggle_when_asked(proc: subprocess.Popen, msg: dict) -> None:
    """Answer a traced program's "off?"/"on?" message with SIGUSR2 to the `cctrace record --toggle-signal
    USR2` in front of it."""
    if msg["at"] in ("off?", "on?"):
        proc.send_signal(signal.SIGUSR2)


def run_answering(cmd: list[str], env: dict, answer=None, timeout: float = 120, cwd=None) -> list[dict]:
    """Run `cmd`, handing each JSON message its program prints (a line of stdout) to `answer(proc, msg)`,
    which may signal it; the messages. The test fails on a non-zero exit."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    assert proc.stdout is not None
    msgs = []
    for line in proc.stdout:
        msgs.append(json.loads(line))
        if answer:
            answer(proc, msgs[-1])
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return msgs


def cc_shared(src: Path, so: Path, *flags: str) -> Path:
    """`so` built from the C file `src` as a threaded shared library, with the headers cctrace's own
    C is built with on the include path (a stand-in declares what the code under test expects)."""
    subprocess.run(["cc", *flags, "-shared", "-fPIC", "-pthread", "-I", str(NATIVE), "-o", str(so), str(src)], check=True)
    return so


@pytest.fixture
def run_cctrace():
    return cctrace


@pytest.fixture
def one_call_trace(tmp_path) -> Path:
    """A loaded trace of one process (pid 7) holding one API call and nothing else: no steps, no copies."""
    import json

    from cctrace.analyze.store import load
    from cctrace.trace.shards import ShardWriter

    d = tmp_path / "one-call"
    w = ShardWriter(d, 7)
    w.extend(
        "api_calls", ("pid", "tid", "name", "start_ns", "end_ns", "source"), [(7, 7, "cudaGetDevice", 10, 20, "x")]
    )
    w.close()
    (d / "manifest.json").write_text(json.dumps({"command": ["x"], "processes": [{"pid": 7}]}))
    load(d)
    return d


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
