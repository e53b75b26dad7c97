"""The C buffer shim, driven by a small C stand-in for CUPTI's callback registration (no GPU here).

The stand-in stores the two callbacks exactly as CUPTI would and, on demand, asks for a buffer,
fills it and completes it from a thread of its own, as CUPTI's worker does.
"""

import ctypes
import subprocess
import threading

import pytest

from cctrace.native import build_shim, load_shim, shim_stats
from cctrace.sources.cupti_raw import iter_buffers

FAKE = r"""
#include <stdint.h>
#include <string.h>
#include <pthread.h>
typedef void (*req_fn)(uint8_t **, size_t *, size_t *);
typedef void (*done_fn)(void *, uint32_t, uint8_t *, size_t, size_t);
static req_fn R; static done_fn D;
int cuptiActivityRegisterCallbacks(req_fn r, done_fn d) { R = r; D = d; return 0; }
struct job { int n; unsigned char fill; };
static void *emit(void *arg) {
    struct job *j = (struct job *)arg;
    uint8_t *buf; size_t size, maxr;
    R(&buf, &size, &maxr);
    memset(buf, j->fill, (size_t)j->n);
    D(0, 0, buf, size, (size_t)j->n);
    return 0;
}
int fake_emit(int n, int fill) {  /* from another thread, like CUPTI's worker */
    pthread_t t; struct job j = {n, (unsigned char)fill};
    pthread_create(&t, 0, emit, &j); pthread_join(t, 0); return 0;
}
"""


@pytest.fixture
def fake_cupti(tmp_path):
    src = tmp_path / "fake.c"
    src.write_text(FAKE)
    so = tmp_path / "libfakecupti.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-pthread", "-o", str(so), str(src)], check=True)
    return ctypes.CDLL(str(so))


def test_shim_appends_completed_buffers_whole(tmp_path, fake_cupti):
    shim = load_shim(build_shim())
    raw = tmp_path / "cupti.1.cuptiraw"
    reg = ctypes.cast(fake_cupti.cuptiActivityRegisterCallbacks, ctypes.c_void_p).value
    assert shim.cct_start(reg, str(raw).encode(), 64 * 1024) == 0
    threads = [threading.Thread(target=fake_cupti.fake_emit, args=(1000 + i, 65 + i)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bufs = [b for b, _ in iter_buffers(raw)]
    assert sorted(len(b) for b in bufs) == [1000 + i for i in range(8)]
    assert all(b == bytes([b[0]]) * len(b) for b in bufs)  # never interleaved
    stats = shim_stats(shim)
    assert stats["buffers_completed"] == 8 and stats["bytes"] == sum(1000 + i for i in range(8))
    # a writer killed mid-buffer leaves a tail that is reported, the whole buffers stay
    data = raw.read_bytes()
    raw.write_bytes(data[:-10])
    got = list(iter_buffers(raw))
    assert len([b for b, _ in got if b is not None]) == 7
    assert "truncated" in got[-1][1]
