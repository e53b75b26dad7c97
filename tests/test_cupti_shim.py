"""The C buffer shim, driven by a small C stand-in for CUPTI's callback registration (no GPU here).

The stand-in stores the two callbacks exactly as CUPTI would and, on demand, asks for a buffer,
fills it and completes it from a thread of its own, as CUPTI's worker does.
"""

import ctypes
import threading
from pathlib import Path

import pytest

from cctrace.record.native import address, build_shim, load_shim, shim_stats
from cctrace.record.sources.cupti_raw import iter_buffers
from tests.conftest import cc_shared

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


def stand_in(tmp: Path, name: str, text: str, *flags: str) -> ctypes.CDLL:
    """The C stand-in `text` (FAKE or FAKE_CALLBACKS) built as tmp/lib{name}.so and loaded."""
    (tmp / f"{name}.c").write_text(text)
    return ctypes.CDLL(str(cc_shared(tmp / f"{name}.c", tmp / f"lib{name}.so", *flags)))


@pytest.fixture
def fake_cupti(tmp_path):
    return stand_in(tmp_path, "fake", FAKE)


def test_shim_appends_completed_buffers_whole(tmp_path, fake_cupti):
    shim = load_shim(build_shim())
    raw = tmp_path / "cupti.1.cuptiraw"
    reg = address(fake_cupti.cuptiActivityRegisterCallbacks)
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
    from cctrace.record.sources.cupti_raw import iter_buffers_with_strings

    shim = load_shim(build_shim())
    raw = tmp_path / "cupti.2.cuptiraw"
    reg = address(fake_cupti.cuptiActivityRegisterCallbacks)
    nxt = address(fake_cupti.fake_next)
    kinds = (ctypes.c_uint32 * 2)(12, 10)
    offsets = (ctypes.c_uint32 * 2)(8, 8)
    assert shim.cct_set_string_fields(nxt, kinds, offsets, 2) == 0
    assert shim.cct_start(reg, str(raw).encode(), 64 * 1024) == 0
    fake_cupti.fake_emit_named(6)
    ((data, strings, problem),) = list(iter_buffers_with_strings(raw))
    assert problem is None and len(data) == 6 * 24
    ptrs = [int.from_bytes(data[24 * i + 8 : 24 * i + 16], "little") for i in range(6)]
    assert [strings[p] for p in ptrs] == ["step 0", "gemm_kernel", "step 1"] * 2


FAKE_CALLBACKS = r"""
#include <stdint.h>
#include <string.h>
#include <pthread.h>
#include "cupti_callbacks.h"
static callback_fn CB; static void *SUB = (void *)0x5;
static uint64_t clock_ = 100;
int enabled[3][64];
int fake_subscribe(void **sub, callback_fn cb, void *ud) { (void)ud; CB = cb; *sub = SUB; return 0; }
int fake_enable(uint32_t on, void *sub, int dom, uint32_t cbid) {
    if (sub != SUB) return 1; enabled[dom][cbid] = (int)on; return 0;
}
int fake_timestamp(uint64_t *ts) { *ts = clock_++; return 0; }
int is_enabled(int dom, int cbid) { return enabled[dom][cbid]; }
/* one call as CUPTI delivers it: enter, then exit with the return value */
void fake_call(int dom, uint32_t cbid, uint32_t corr, int ret) {
    CallbackData d; memset(&d, 0, sizeof d);
    d.correlationId = corr; d.functionReturnValue = &ret;
    if (!CB || !enabled[dom][cbid]) return;
    d.callbackSite = 0; CB(0, dom, cbid, &d);
    d.callbackSite = 1; CB(0, dom, cbid, &d);
}
void fake_calls(int n) { for (int i = 0; i < n; i++) fake_call(2, 7, (uint32_t)i, 0); } /* on this thread */
static void *many(void *arg) {
    int n = *(int *)arg;
    for (int i = 0; i < n; i++) fake_call(2, 7, (uint32_t)i, 0);
    return 0;
}
void fake_calls_on_threads(int threads, int n) {
    pthread_t t[16];
    for (int i = 0; i < threads; i++) pthread_create(&t[i], 0, many, &n);
    for (int i = 0; i < threads; i++) pthread_join(t[i], 0);
}
/* a runtime call with the driver call it makes inside it, as cudart calls libcuda */
void fake_nested(uint32_t rt_cbid, uint32_t drv_cbid, uint32_t rt_corr, uint32_t drv_corr) {
    int ret = 0;
    CallbackData r, d; memset(&r, 0, sizeof r); memset(&d, 0, sizeof d);
    r.correlationId = rt_corr; r.functionReturnValue = &ret;
    d.correlationId = drv_corr; d.functionReturnValue = &ret;
    r.callbackSite = 0; if (enabled[2][rt_cbid]) CB(0, 2, rt_cbid, &r);
    d.callbackSite = 0; if (enabled[1][drv_cbid]) CB(0, 1, drv_cbid, &d);
    d.callbackSite = 1; if (enabled[1][drv_cbid]) CB(0, 1, drv_cbid, &d);
    r.callbackSite = 1; if (enabled[2][rt_cbid]) CB(0, 2, rt_cbid, &r);
}
/* a chained tool (the bridge emulator's place): notes the clock at its enter and exit, and the
 * correlation id it was given */
uint64_t chain_seen[2]; int chain_calls; uint32_t chain_corr[64];
void chained(void *ud, int dom, uint32_t cbid, const void *p) {
    (void)ud; (void)dom; (void)cbid;
    const CallbackData *d = (const CallbackData *)p;
    fake_timestamp(&chain_seen[d->callbackSite]);
    if (chain_calls < 64) chain_corr[chain_calls] = d->correlationId;
    chain_calls++;
}
"""


@pytest.fixture
def fake_callbacks(tmp_path):
    return stand_in(tmp_path, "fakecb", FAKE_CALLBACKS)


def _shim_recording(raw, fake_cupti, fc, cbids: list[int], driver: list[int] = ()):
    """The shim writing to `raw`, recording runtime-domain calls `cbids` (and driver-domain calls
    `driver`) through the stand-in CUPTI."""
    shim = load_shim(build_shim())
    assert shim.cct_start(address(fake_cupti.cuptiActivityRegisterCallbacks), str(raw).encode(), 64 * 1024) == 0
    n = len(cbids) + len(driver)
    doms, ids = (ctypes.c_int * n)(*[2] * len(cbids), *[1] * len(driver)), (ctypes.c_uint32 * n)(*cbids, *driver)
    rc = shim.cct_api_start(
        address(fc.fake_subscribe), address(fc.fake_enable), address(fc.fake_timestamp), doms, ids, n
    )
    assert rc == 0
    return shim


def _api_records(raw):
    import numpy as np

    from cctrace.record.sources.cupti_raw import iter_buffers_with_strings
    from cctrace.record.sources.cupti_source import API_DTYPE

    blocks: list[bytes] = []
    for _ in iter_buffers_with_strings(raw, blocks.append):
        pass
    return np.concatenate([np.frombuffer(b, API_DTYPE) for b in blocks]) if blocks else np.empty(0, API_DTYPE)


def test_shim_records_only_the_selected_calls_through_callbacks(tmp_path, fake_callbacks, fake_cupti):
    from cctrace.record.native import api_stats, chain_hooks

    fc = fake_callbacks
    raw = tmp_path / "cupti.3.cuptiraw"
    shim = _shim_recording(raw, fake_cupti, fc, [7, 9])
    before = api_stats(shim)  # the loaded shim is shared by the tests of this process: count from here
    assert [fc.is_enabled(2, c) for c in (7, 9, 11)] == [1, 1, 0]  # CUPTI wraps only these
    fc.fake_call(2, 7, 41, 0)
    fc.fake_call(2, 9, 42, 3)
    fc.fake_call(2, 11, 43, 0)  # not enabled: never reaches the shim

    # a second tool chains on: its enter/exit run inside the recorded call's start..end
    subscribe, enable, unsubscribe = chain_hooks(shim)
    chain_sub = ctypes.c_void_p()
    sub_fn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)(subscribe)
    en_fn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)(enable)
    unsub_fn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)(unsubscribe)
    assert sub_fn(ctypes.byref(chain_sub), address(fc.chained), None) == 0
    assert en_fn(1, chain_sub, 2, 9) == 0 and en_fn(1, chain_sub, 1, 20) == 0
    fc.fake_call(2, 9, 44, 0)
    chain_enter, chain_exit = (ctypes.c_uint64 * 2).in_dll(fc, "chain_seen")
    fc.fake_call(1, 20, 45, 0)  # the chained tool's own call: forwarded, not recorded
    assert ctypes.c_int.in_dll(fc, "chain_calls").value == 4

    # a new selection switches the old calls off, except what the chained tool still wants
    doms1, cbids1 = (ctypes.c_int * 1)(2), (ctypes.c_uint32 * 1)(11)
    assert shim.cct_api_select(doms1, cbids1, 1) == 0
    assert [fc.is_enabled(2, c) for c in (7, 9, 11)] == [0, 1, 1]
    assert unsub_fn(chain_sub) == 0
    assert [fc.is_enabled(2, 9), fc.is_enabled(1, 20)] == [0, 0]
    fc.fake_calls_on_threads(4, 3000)  # cbid 7 is off now: nothing
    shim.cct_api_flush(1)

    recs = _api_records(raw)
    assert list(iter_buffers(raw)) == []  # API blocks are not activity buffers
    assert recs["correlation_id"].tolist() == [41, 42, 44]
    assert recs["cbid"].tolist() == [7, 9, 9] and recs["domain"].tolist() == [2, 2, 2]
    assert recs["ret"].tolist() == [0, 3, 0]
    assert (recs["end"] > recs["start"]).all()
    assert recs["start"][2] < chain_enter < chain_exit < recs["end"][2]
    assert recs["tid"][0] == threading.get_native_id()
    after = api_stats(shim)
    assert {k: after[k] - before[k] for k in after} == {"api_records": 3, "api_records_lost": 0}


def test_shim_callback_records_from_many_threads_stay_whole(tmp_path, fake_callbacks, fake_cupti):
    fc = fake_callbacks
    raw = tmp_path / "cupti.4.cuptiraw"
    shim = _shim_recording(raw, fake_cupti, fc, [7])
    # 40,000 records from 8 threads while another thread flushes as the tracer's flusher does:
    # the 8,192-record buffer fills and is written out several times, concurrently with the flushes
    stop = threading.Event()
    flusher = threading.Thread(target=lambda: [shim.cct_api_flush(0) for _ in iter(lambda: stop.wait(0.001), True)])
    flusher.start()
    fc.fake_calls_on_threads(8, 5000)
    stop.set()
    flusher.join()
    shim.cct_api_flush(1)
    recs = _api_records(raw)
    assert len(recs) == 40000
    assert sorted(recs["correlation_id"].tolist()) == sorted(list(range(5000)) * 8)
    assert len(set(recs["tid"].tolist())) == 8


def test_driver_calls_are_recorded_once(tmp_path, fake_callbacks, fake_cupti):
    """A driver call inside a recorded runtime call is that call (one record, the runtime one); a
    driver call on its own (as JAX makes them) is recorded with the driver domain; a driver call inside
    a runtime call that is not recorded stands for it. A chained tool sees the recorded call's
    correlation id, so what it injects joins that call."""
    from cctrace.record.native import chain_hooks

    fc = fake_callbacks
    raw = tmp_path / "cupti.5.cuptiraw"
    shim = _shim_recording(raw, fake_cupti, fc, [7], driver=[30, 31])
    subscribe, enable, _ = chain_hooks(shim)
    sub = ctypes.c_void_p()
    ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)(subscribe)(
        ctypes.byref(sub), address(fc.chained), None
    )
    ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)(enable)(
        1, sub, 1, 30
    )
    fc.fake_nested(7, 30, 100, 900)  # cudaMemcpyAsync -> cuMemcpyHtoDAsync_v2: one record
    fc.fake_call(1, 30, 901, 0)  # cuMemcpyHtoDAsync_v2 on its own (JAX)
    fc.fake_call(1, 31, 902, 0)  # cuStreamSynchronize on its own
    fc.fake_nested(8, 31, 101, 903)  # a runtime call not recorded: its driver call stands for it
    fc.fake_nested(7, 30, 102, 904)
    shim.cct_api_flush(1)
    recs = _api_records(raw)
    got = list(zip(recs["domain"].tolist(), recs["cbid"].tolist(), recs["correlation_id"].tolist(), strict=True))
    assert got == [(2, 7, 100), (1, 30, 901), (1, 31, 902), (1, 31, 903), (2, 7, 102)]
    n = ctypes.c_int.in_dll(fc, "chain_calls").value
    corr = list((ctypes.c_uint32 * 64).in_dll(fc, "chain_corr"))[:n]
    # the chained tool hears every call (enter and exit); the driver call inside a recorded runtime
    # call carries that call's id (100, not 900), the others their own
    assert corr == [100] * 4 + [901, 901, 902, 902, 903, 903] + [102] * 4
