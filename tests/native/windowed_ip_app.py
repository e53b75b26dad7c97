"""The traced program of tests/test_interposer.py's window test: copies through the stand-in libcuda
(tests/native/fake_libcuda.c), each of a size that names its phase, in phases that follow the tracer's
state as this process sees it. It prints one JSON line per phase; the test answers "off?"/"on?" with
the toggle signal. Copies made while waiting for the tracer to change its state are 1 byte long.
With `fork` (recorded --start-detached): the parent copies outside any window and forks a child that copies."""

import ctypes
import json
import os
import sys
import time

from cctrace.record import tracer

cuda = ctypes.CDLL("libcuda.so.1")
dev = ctypes.c_uint64()
cuda.cuMemAlloc_v2(ctypes.byref(dev), ctypes.c_size_t(1 << 20))
host = ctypes.create_string_buffer(1 << 16)
WAITING = 1


def copy(n: int) -> None:
    cuda.cuMemcpyHtoD_v2(dev, host, ctypes.c_size_t(n))


def phase(first: int, n: int) -> None:
    for size in range(first, first + n):
        copy(size)


def wait_for(attached: bool) -> None:
    while tracer._active.attached != attached:
        copy(WAITING)
        time.sleep(0.001)


def say(at: str) -> None:
    print(json.dumps({"at": at}), flush=True)


if sys.argv[1:] == ["fork"]:  # recorded with --start-detached: a child forked outside any window
    phase(100, 50)
    pid = os.fork()
    if pid == 0:
        phase(3000, 50)  # the child is traced throughout
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    phase(200, 50)
    say("done")
else:
    phase(100, 50)
    say("off?")
    wait_for(False)
    phase(1000, 50)
    time.sleep(0.3)  # several flush intervals
    say("on?")
    wait_for(True)
    phase(2000, 50)
    say("done")
