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
/* records of 24 bytes: kind, pad, name pointer, value; walked as cuptiActivityGetNextRecord would */
int fake_next(uint8_t *buf, size_t valid, void **rec) {
    uint8_t *r = *rec ? (uint8_t *)*rec + 24 : buf;
    if (r + 24 > buf + valid) return 1;
    *rec = r; return 0;
}
static const char *NAMES[] = {"step 0", "gemm_kernel", "step 1"};
int fake_emit_named(int count) {
    uint8_t *buf; size_t size, maxr;
    R(&buf, &size, &maxr);
    for (int i = 0; i < count; i++) {
        uint32_t kind = (i % 2) ? 10 : 12;
        const char *name = NAMES[i % 3];
        uint64_t v = (uint64_t)i;
        memcpy(buf + 24 * i, &kind, 4); memset(buf + 24 * i + 4, 0, 4);
        memcpy(buf + 24 * i + 8, &name, 8); memcpy(buf + 24 * i + 16, &v, 8);
    }
    D(0, 0, buf, size, (size_t)(24 * count));
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


def test_shim_saves_the_strings_records_point_to(tmp_path, fake_cupti):
    from cctrace.sources.cupti_raw import iter_buffers_with_strings

    shim = load_shim(build_shim())
    raw = tmp_path / "cupti.2.cuptiraw"
    reg = ctypes.cast(fake_cupti.cuptiActivityRegisterCallbacks, ctypes.c_void_p).value
    nxt = ctypes.cast(fake_cupti.fake_next, ctypes.c_void_p).value
    kinds = (ctypes.c_uint32 * 2)(12, 10)
    offsets = (ctypes.c_uint32 * 2)(8, 8)
    assert shim.cct_set_string_fields(nxt, kinds, offsets, 2) == 0
    assert shim.cct_start(reg, str(raw).encode(), 64 * 1024) == 0
    fake_cupti.fake_emit_named(6)
    ((data, strings, problem),) = list(iter_buffers_with_strings(raw))
    assert problem is None and len(data) == 6 * 24
    ptrs = [int.from_bytes(data[24 * i + 8 : 24 * i + 16], "little") for i in range(6)]
    assert [strings[p] for p in ptrs] == ["step 0", "gemm_kernel", "step 1"] * 2
