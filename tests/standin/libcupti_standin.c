/* A stand-in libcupti for tests without a GPU: the calls cctrace makes, with CUPTI's observable
 * behaviour kept (one callback subscriber; activity buffers asked for and completed through the
 * registered callbacks; cuptiFinalize drops the subscription, the buffer callbacks and every kind),
 * and every entry counted, so a test can see that nothing reaches CUPTI while it is detached.
 * fake_memcpy(corr) plays a cudaMemcpy: the runtime-domain callbacks (cbid 7) and a MEMCPY record. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cupti_callbacks.h"

#define KIND_MEMCPY 1
#define CBID_MEMCPY 7
#define REC_SIZE 64
#define BUF_RECS 16

typedef void (*req_fn)(uint8_t **, size_t *, size_t *);
typedef void (*done_fn)(void *, uint32_t, uint8_t *, size_t, size_t);

struct rec { /* tests/standin/cupti/cupti.py's ActivityMemcpy6 reads it */
    uint32_t kind, copy_kind, src_kind, dst_kind;
    uint64_t bytes, start, end;
    uint32_t device_id, context_id, stream_id, correlation_id, flags_, pad;
};

static req_fn R;
static done_fn D;
static callback_fn volatile CB;
static int subscribed, dom_on[3], kind_on[64];
static uint8_t cb_on[3][4096];
static uint8_t *buf;
static size_t cap, used;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
/* counters: every CUPTI entry; subscribes, registers, finalizes, forced flushes, callbacks delivered */
uint64_t n_calls, n_subscribe, n_register, n_finalize, n_flush, n_delivered, n_records;
uint64_t t_first_call; /* CLOCK_MONOTONIC ns of the first CUPTI entry */

static uint64_t now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}
#define ENTRY (__sync_fetch_and_add(&n_calls, 1) || (t_first_call = now()))

int cuptiActivityRegisterCallbacks(req_fn r, done_fn d) {
    ENTRY;
    R = r;
    D = d;
    n_register++;
    return 0;
}
int cuptiSubscribe(void **sub, callback_fn cb, void *ud) {
    (void)ud;
    ENTRY;
    if (subscribed) return 39;
    subscribed = 1;
    CB = cb;
    *sub = (void *)0x5;
    n_subscribe++;
    return 0;
}
int cuptiUnsubscribe(void *sub) {
    (void)sub;
    ENTRY;
    subscribed = 0;
    CB = 0;
    return 0;
}
int cuptiEnableCallback(uint32_t on, void *sub, int dom, uint32_t cbid) {
    (void)sub;
    ENTRY;
    if (!subscribed || dom < 1 || dom > 2 || cbid >= 4096) return 1;
    cb_on[dom][cbid] = (uint8_t)on;
    return 0;
}
int cuptiEnableDomain(uint32_t on, void *sub, int dom) {
    (void)sub;
    ENTRY;
    if (!subscribed || dom < 1 || dom > 2) return 1;
    dom_on[dom] = (int)on;
    if (!on) memset(cb_on[dom], 0, sizeof cb_on[dom]);
    return 0;
}
int cuptiGetTimestamp(uint64_t *ts) {
    ENTRY;
    *ts = now();
    return 0;
}
int cuptiActivityEnable(int kind) {
    ENTRY;
    if (kind < 0 || kind >= 64) return 1;
    kind_on[kind] = 1;
    return 0;
}
int cuptiActivityDisable(int kind) {
    ENTRY;
    if (kind < 0 || kind >= 64) return 1;
    kind_on[kind] = 0;
    return 0;
}
static void complete_locked(void) {
    if (buf && D) D(0, 0, buf, cap, used);
    buf = 0;
    used = cap = 0;
}
int cuptiActivityFlushAll(uint32_t flag) {
    ENTRY;
    pthread_mutex_lock(&lock);
    if (flag) n_flush++;
    if (used) complete_locked();
    pthread_mutex_unlock(&lock);
    return 0;
}
int cuptiActivityFlushPeriod(uint32_t ms) {
    (void)ms;
    ENTRY;
    return 0;
}
int cuptiFinalize(void) {
    ENTRY;
    pthread_mutex_lock(&lock);
    if (buf) free(buf); /* real CUPTI hands buffers over before; cctrace flushes first */
    buf = 0;
    used = cap = 0;
    R = 0;
    D = 0;
    CB = 0;
    subscribed = 0;
    memset(dom_on, 0, sizeof dom_on);
    memset(cb_on, 0, sizeof cb_on);
    memset(kind_on, 0, sizeof kind_on);
    n_finalize++;
    pthread_mutex_unlock(&lock);
    return 0;
}
int cuptiActivityGetNextRecord(uint8_t *b, size_t valid, void **r) {
    uint8_t *next = *r ? (uint8_t *)*r + REC_SIZE : b;
    if (next + REC_SIZE > b + valid) return 1;
    *r = next;
    return 0;
}

void fake_memcpy(uint32_t corr) {
    int ret = 0;
    CallbackData d;
    memset(&d, 0, sizeof d);
    d.correlationId = corr;
    d.functionReturnValue = &ret;
    callback_fn cb = CB;
    int deliver = cb && (dom_on[2] || cb_on[2][CBID_MEMCPY]);
    if (deliver) {
        __sync_fetch_and_add(&n_delivered, 1);
        cb(0, 2, CBID_MEMCPY, &d);
    }
    pthread_mutex_lock(&lock);
    if (kind_on[KIND_MEMCPY] && R) {
        if (!buf) {
            size_t maxr;
            R(&buf, &cap, &maxr);
            used = 0;
        }
        struct rec r;
        memset(&r, 0, sizeof r);
        r.kind = KIND_MEMCPY;
        r.copy_kind = 1;
        r.bytes = 64;
        r.start = now();
        r.end = r.start + 1;
        r.correlation_id = corr;
        memcpy(buf + used, &r, sizeof r);
        used += sizeof r;
        n_records++;
        if (used + REC_SIZE > cap || used >= BUF_RECS * REC_SIZE) complete_locked();
    }
    pthread_mutex_unlock(&lock);
    cb = CB; /* a detach may have finalized at the enter: then CUPTI delivers no exit */
    if (deliver && cb && (dom_on[2] || cb_on[2][CBID_MEMCPY])) {
        __sync_fetch_and_add(&n_delivered, 1);
        d.callbackSite = 1;
        cb(0, 2, CBID_MEMCPY, &d);
    }
}
