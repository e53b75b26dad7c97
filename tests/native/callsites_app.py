"""A Python program that reaches the stand-in libcuda (tests/native/fake_libcuda.c, found as libcuda.so.1)
from known lines, each marked with a SITE- comment that tests/test_interposer.py looks up: the steps of
a serving loop (an input copy through a framework, a token readback and its sync) on the main thread, a
worker thread's syncs, a thread with no Python at all (tests/native/native_thread.c, when its library
is given), and a forked child's own call.

    python callsites_app.py STEPS [NATIVE_THREAD_LIB] [fork]
"""

import ctypes
import os
import sys
import threading

from fakeframework import ops

cuda = ctypes.CDLL("libcuda.so.1")
dev = ctypes.c_uint64()
cuda.cuMemAlloc_v2(ctypes.byref(dev), ctypes.c_size_t(1 << 20))
host = ctypes.create_string_buffer(4096)
STREAM = ctypes.c_void_p(0xAB)


def prepare_inputs():
    ops.copy_in(cuda, dev, host, 64, STREAM)  # SITE-H2D


def read_token():
    cuda.cuMemcpyDtoHAsync_v2(host, dev, ctypes.c_size_t(4), STREAM)  # SITE-D2H
    cuda.cuStreamSynchronize(STREAM)  # SITE-SYNC


def worker():
    for _ in range(5):
        cuda.cuCtxSynchronize()  # SITE-THREAD


def main() -> None:
    steps = int(sys.argv[1])
    t = threading.Thread(target=worker)
    t.start()
    for _ in range(steps):
        prepare_inputs()
        read_token()
    t.join()
    if len(sys.argv) > 2 and sys.argv[2] != "-":
        native = ctypes.CDLL(sys.argv[2])
        assert native.call_from_native_thread(b"libcuda.so.1", 3) == 0
    if "fork" in sys.argv[3:]:
        pid = os.fork()
        if pid == 0:
            cuda.cuEventSynchronize(ctypes.c_void_p(0xE1))  # SITE-CHILD
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0


main()
