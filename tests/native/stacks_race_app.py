"""A Python program whose threads intern new stacks while the interposer's flusher drains their rings
and another thread forks: tests/test_interposer.py checks that every recorded stack id has its block
in the same process's file and holds the frames of the call that named it. Each call's stack spells
its stream handle: dive() recurses BITS deep, calling itself from the line marked ONE or ZERO as the
handle's bits say, so there are 2**BITS stacks, most of them interned while other threads read.

    python stacks_race_app.py THREADS CALLS FORKS
"""

import ctypes
import os
import sys
import threading

cuda = ctypes.CDLL("libcuda.so.1")
BITS = 12
TAG = 1 << 16  # the stream handle is TAG | pattern (never 0, which ctypes passes as NULL)


def dive(depth: int, pattern: int) -> int:
    if depth == 0:
        return cuda.cuStreamSynchronize(ctypes.c_void_p(TAG | pattern))
    if (pattern >> (depth - 1)) & 1:
        return dive(depth - 1, pattern)  # SITE-ONE
    return dive(depth - 1, pattern)  # SITE-ZERO


def worker(k: int, threads: int, calls: int) -> None:
    for i in range(calls):
        dive(BITS, (i * threads + k) % (1 << BITS))


def forker(forks: int) -> None:
    for f in range(forks):
        pid = os.fork()
        if pid == 0:
            dive(BITS, f)
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0


def main() -> None:
    threads, calls, forks = map(int, sys.argv[1:4])
    ts = [threading.Thread(target=worker, args=(k, threads, calls)) for k in range(threads)]
    ts.append(threading.Thread(target=forker, args=(forks,)))
    for t in ts:
        t.start()
    for t in ts:
        t.join()


main()
