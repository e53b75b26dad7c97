/* CUPTI activity buffers handled in C, so CUPTI's threads never wait for Python's GIL.
 *
 * cupti-python's buffer callbacks run Python on CUPTI's worker thread; that thread may hold CUPTI
 * locks while it waits for the GIL, and the traced program's main thread may hold the GIL while it
 * waits for those locks (a CUDA call that CUPTI intercepts): a stall or a deadlock. Here the
 * callbacks are plain C: a buffer request is a malloc, a completed buffer is appended to a file
 * as [u64 magic][u64 valid bytes][records] and freed. cctrace decodes the file after the run.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "cupti_callbacks.h"
#include "sbuf.h"
#include "write_all.h"

#define CCT_MAGIC 0x3130425554504343ULL     /* "CCPTUB01" little-endian: a buffer block */
#define CCT_STR_MAGIC 0x3130525453544343ULL /* "CCTSTR01": the strings its records point to */
#define CCT_MAX_FIELDS 16

typedef int CUptiResult;
typedef void (*req_fn)(uint8_t **buffer, size_t *size, size_t *max_records);
typedef void (*done_fn)(void *ctx, uint32_t stream_id, uint8_t *buffer, size_t size, size_t valid);
typedef CUptiResult (*register_fn)(req_fn, done_fn);

typedef int (*next_fn)(uint8_t *buffer, size_t valid, void **record);

static size_t g_size = 8u << 20;
/* string fields (kernel names, NVTX names) are pointers into this process: copy them out */
static next_fn g_next;
static uint32_t g_kinds[CCT_MAX_FIELDS], g_offsets[CCT_MAX_FIELDS];
static int g_nfields;
static int g_fd = -1;
static register_fn g_register; /* kept for cct_reattach (cupti_detach.h) */
static volatile uint64_t g_requested, g_completed, g_bytes, g_failed_writes, g_failed_allocs;

static void on_request(uint8_t **buffer, size_t *size, size_t *max_records) {
    void *p = NULL;
    if (posix_memalign(&p, 8, g_size) != 0) {
        p = NULL;
        __sync_fetch_and_add(&g_failed_allocs, 1);
    }
    *buffer = (uint8_t *)p;
    *size = p ? g_size : 0;
    *max_records = 0;
    __sync_fetch_and_add(&g_requested, 1);
}

/* Block of [u64 pointer][u32 length][bytes] for every string field of the buffer's records. */
static void write_strings(uint8_t *buffer, size_t valid) {
    if (!g_next || g_nfields == 0) return;
    struct sbuf b = {0, 0, 0};
    uint64_t hdr[2] = {CCT_STR_MAGIC, 0};
    if (sbuf_put(&b, hdr, sizeof hdr)) return;
    void *rec = NULL;
    while (g_next(buffer, valid, &rec) == 0) {
        uint32_t kind = *(uint32_t *)rec;
        for (int i = 0; i < g_nfields; i++) {
            if (g_kinds[i] != kind) continue;
            const char *str = *(const char **)((uint8_t *)rec + g_offsets[i]);
            if (!str) continue;
            uint64_t ptr = (uint64_t)(uintptr_t)str;
            uint32_t len = (uint32_t)strnlen(str, 4096);
            if (sbuf_put(&b, &ptr, 8) || sbuf_put(&b, &len, 4) || sbuf_put(&b, str, len)) {
                free(b.p);
                return;
            }
        }
    }
    ((uint64_t *)b.p)[1] = (uint64_t)(b.n - sizeof hdr);
    if (write_all(g_fd, b.p, b.n)) __sync_fetch_and_add(&g_failed_writes, 1);
    free(b.p);
}

static void on_complete(void *ctx, uint32_t stream_id, uint8_t *buffer, size_t size, size_t valid) {
    (void)ctx;
    (void)stream_id;
    (void)size;
    if (buffer && valid > 0 && g_fd >= 0) {
        /* header and buffer in one writev (no copy of the buffer): one append, kept whole against
         * the other threads' appends */
        int bad = write_block_all(g_fd, CCT_MAGIC, buffer, valid);
        if (bad) __sync_fetch_and_add(&g_failed_writes, 1);
        else __sync_fetch_and_add(&g_bytes, valid);
        write_strings(buffer, valid);
    }
    __sync_fetch_and_add(&g_completed, 1);
    free(buffer);
}

/* Register the C callbacks with CUPTI; `reg` is cuptiActivityRegisterCallbacks' address. */
int cct_start(void *reg, const char *path, size_t buffer_size) {
    if (buffer_size >= 4096) g_size = buffer_size;
    g_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (g_fd < 0) return -errno;
    g_register = (register_fn)reg;
    return g_register(on_request, on_complete);
}

/* Which record kinds carry string pointers at which offsets; `next` is cuptiActivityGetNextRecord. */
int cct_set_string_fields(void *next, const uint32_t *kinds, const uint32_t *offsets, int n) {
    if (n > CCT_MAX_FIELDS) return -1;
    for (int i = 0; i < n; i++) {
        g_kinds[i] = kinds[i];
        g_offsets[i] = offsets[i];
    }
    g_nfields = n;
    g_next = (next_fn)next;
    return 0;
}

/* After fork: the child appends to its own file. */
int cct_reopen(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) return -errno;
    if (g_fd >= 0) close(g_fd);
    g_fd = fd;
    g_requested = g_completed = g_bytes = g_failed_writes = g_failed_allocs = 0;
    return 0;
}

void cct_stats(uint64_t out[5]) {
    out[0] = g_requested;
    out[1] = g_completed;
    out[2] = g_bytes;
    out[3] = g_failed_writes;
    out[4] = g_failed_allocs;
}

#include "py_stacks.h" /* the calling thread's Python stack, for each recorded call */

/* ---- API calls through CUPTI's callback API --------------------------------------------------
 * The RUNTIME activity kind makes CUPTI wrap every runtime call, kernel launches included, even
 * the calls its per-call filter then drops (benchmarks/cupti_inprocess.py). Callbacks enabled for
 * just the calls cctrace reads cost nothing on the others. Each call becomes one fixed-size record
 * (CUPTI timestamps, so the activity records' clock mapping holds), appended to the raw file as
 * [u64 CCT_API_MAGIC][u64 bytes][records]. CUPTI 13.0 allows one callback subscriber per process:
 * the bridge emulator chains onto this one through cct_chain_subscribe/enable/unsubscribe.
 */
#define CCT_API_MAGIC 0x3130495041544343ULL /* "CCTAPI01": a block of struct api_rec */
#define API_CAP 8192
#define MAX_CBID 4096
#define MAX_DEPTH 8
#define DOMAIN_DRIVER 1 /* CUPTI_CB_DOMAIN_DRIVER_API */
#define DOMAIN_RUNTIME 2

typedef int (*timestamp_fn)(uint64_t *ts);

struct api_rec { /* 40 bytes; API_DTYPE in cctrace/record/sources/cupti_source.py reads it */
    uint64_t start, end;
    uint32_t domain, cbid, correlation_id, tid;
    int32_t ret;
    uint32_t stack_id; /* the interned Python stack of the calling thread (py_stacks.h); 0: none */
};

struct api_block {
    uint64_t hdr[2];
    struct api_rec recs[API_CAP];
}; /* header and records contiguous: one write() per block */
static struct api_block g_api, g_out; /* records gather in g_api; g_out is written out */
static size_t g_api_n;
/* g_api_lock guards g_api and is only held for a record's copy; g_out_lock is held while g_out is
 * written, so a traced thread never waits behind a file write unless the buffer it adds to is full */
static pthread_mutex_t g_api_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_out_lock = PTHREAD_MUTEX_INITIALIZER;
static void *g_api_sub;
static enable_fn g_enable;
static timestamp_fn g_ts;
static uint8_t g_want[3][MAX_CBID];  /* [domain][cbid]: record this call */
static uint8_t g_chain_want[3][MAX_CBID];
static volatile int g_api_on;
static callback_fn volatile g_chain;
static void *volatile g_chain_ud;
static volatile uint64_t g_api_records, g_api_lost;
static int g_atfork;

static __thread uint64_t t_start[MAX_DEPTH];
static __thread int t_depth;
static __thread uint32_t t_tid;
static __thread int t_rt_open;         /* recorded runtime calls open on this thread */
static __thread uint32_t t_outer_corr; /* the outermost recorded call open on this thread (0: none) */

static inline int wanted(int domain, uint32_t cbid) {
    return domain > 0 && domain < 3 && cbid < MAX_CBID && g_want[domain][cbid];
}

static void api_flush(void) {
    pthread_mutex_lock(&g_out_lock);
    pthread_mutex_lock(&g_api_lock);
    size_t n = g_api_n;
    memcpy(g_out.recs, g_api.recs, n * sizeof(struct api_rec));
    g_api_n = 0;
    pthread_mutex_unlock(&g_api_lock);
    stk_flush(g_fd); /* the stacks these records name, first */
    if (n > 0) {
        g_out.hdr[0] = CCT_API_MAGIC;
        g_out.hdr[1] = (uint64_t)(n * sizeof(struct api_rec));
        if (g_fd < 0 || write_all(g_fd, &g_out, sizeof g_out.hdr + n * sizeof(struct api_rec)))
            __sync_fetch_and_add(&g_api_lost, n);
    }
    pthread_mutex_unlock(&g_out_lock);
}

/* A driver call made inside a runtime call this thread is recording (cudaMemcpyAsync ->
 * cuMemcpyHtoDAsync_v2) is the same call: recorded once, as the runtime call. A driver call made on
 * its own (JAX/XLA, CuPy, Triton, custom C++) is recorded with domain 'driver'. */
static inline int nested_driver(int domain) { return domain == DOMAIN_DRIVER && t_rt_open > 0; }

/* The chained tool sees the correlation id of the recorded call its work lands in (the runtime call
 * around a nested driver call), so its records join the api_calls row of that call. */
static inline void call_chain(callback_fn chain, int domain, uint32_t cbid, const CallbackData *d) {
    if (t_outer_corr && t_outer_corr != d->correlationId) {
        CallbackData c = *d;
        c.correlationId = t_outer_corr;
        chain(g_chain_ud, domain, cbid, &c);
    } else {
        chain(g_chain_ud, domain, cbid, d);
    }
}

#include "cupti_detach.h" /* cuptiFinalize at an API exit, and attaching again */

static void on_api(void *ud, int domain, uint32_t cbid, const void *cbdata) {
    (void)ud;
    const CallbackData *d = (const CallbackData *)cbdata;
    if (detach_hook(domain, d)) return;
    int mine = g_api_on && wanted(domain, cbid) && !nested_driver(domain);
    callback_fn chain = g_chain;
    if (d->callbackSite == 0) {
        if (mine) {
            uint64_t t = 0;
            g_ts(&t);
            if (t_depth < MAX_DEPTH) t_start[t_depth] = t;
            if (t_depth == 0) t_outer_corr = d->correlationId;
            t_depth++;
            if (domain == DOMAIN_RUNTIME) t_rt_open++;
        }
        if (chain) call_chain(chain, domain, cbid, d); /* the bridge's toll lands inside the call */
        return;
    }
    if (chain) call_chain(chain, domain, cbid, d);
    if (!mine || t_depth <= 0) return;
    t_depth--;
    if (domain == DOMAIN_RUNTIME && t_rt_open > 0) t_rt_open--;
    if (t_depth == 0) t_outer_corr = 0;
    if (t_depth >= MAX_DEPTH) return;
    struct api_rec r;
    r.start = t_start[t_depth];
    r.end = 0;
    g_ts(&r.end);
    if (!t_tid) t_tid = (uint32_t)syscall(SYS_gettid);
    r.domain = (uint32_t)domain;
    r.cbid = cbid;
    r.correlation_id = d->correlationId;
    r.tid = t_tid;
    r.ret = d->functionReturnValue ? *(const int32_t *)d->functionReturnValue : 0;
    r.stack_id = stk_capture(); /* after the end time: the capture is not part of the call */
    for (;;) {
        pthread_mutex_lock(&g_api_lock);
        if (g_api_n < API_CAP) {
            g_api.recs[g_api_n++] = r;
            int full = g_api_n == API_CAP;
            pthread_mutex_unlock(&g_api_lock);
            if (full) api_flush();
            break;
        }
        pthread_mutex_unlock(&g_api_lock);
        api_flush(); /* another thread filled it and is writing it out: wait for that, then add */
    }
    __sync_fetch_and_add(&g_api_records, 1);
}

/* A fork child must not write its parent's records, nor record into a file that is the parent's. */
static void api_after_fork_child(void) {
    g_api_on = 0;
    g_api_n = 0;
    t_depth = 0;
    t_tid = 0;
    t_rt_open = 0;
    t_outer_corr = 0;
    pthread_mutex_init(&g_api_lock, NULL);
    pthread_mutex_init(&g_out_lock, NULL);
    stk_after_fork_child();
}

/* Record exactly these calls from now on (others switched off, unless the chained tool wants them). */
int cct_api_select(const int *domains, const uint32_t *cbids, int n) {
    if (!g_api_sub) return -1;
    for (int dom = 1; dom < 3; dom++)
        for (uint32_t c = 0; c < MAX_CBID; c++)
            if (g_want[dom][c]) {
                g_want[dom][c] = 0;
                if (!g_chain_want[dom][c]) g_enable(0, g_api_sub, dom, c);
            }
    for (int i = 0; i < n; i++) {
        if (domains[i] <= 0 || domains[i] >= 3 || cbids[i] >= MAX_CBID) return -2;
        int rc = g_enable(1, g_api_sub, domains[i], cbids[i]);
        if (rc != 0) return rc;
        g_want[domains[i]][cbids[i]] = 1;
    }
    return 0;
}

/* Subscribe (cuptiSubscribe, cuptiEnableCallback and cuptiGetTimestamp's addresses) and record the
 * given calls. Returns 0, or CUPTI's error (39: another tool holds the one subscriber slot). */
int cct_api_start(void *subscribe, void *enable, void *timestamp, const int *domains, const uint32_t *cbids,
                  int n) {
    g_enable = (enable_fn)enable;
    g_ts = (timestamp_fn)timestamp;
    if (!g_atfork) {
        pthread_atfork(NULL, NULL, api_after_fork_child);
        g_atfork = 1;
    }
    int rc = ((subscribe_fn)subscribe)(&g_api_sub, on_api, NULL);
    if (rc != 0) {
        g_api_sub = NULL;
        return rc;
    }
    rc = cct_api_select(domains, cbids, n);
    if (rc == 0) g_api_on = 1;
    return rc;
}

/* Write the records gathered so far; `last` also stops recording (the tracer is stopping). */
void cct_api_flush(int last) {
    if (last) g_api_on = 0;
    api_flush();
}

void cct_api_stats(uint64_t out[2]) {
    out[0] = g_api_records;
    out[1] = g_api_lost;
}

/* Stand-ins for cuptiSubscribe/EnableCallback/Unsubscribe given to a second tool (the bridge
 * emulator): it shares this subscription and its callback runs inside ours. */
int cct_chain_subscribe(void **subscriber, callback_fn cb, void *userdata) {
    if (!g_api_sub) return 39; /* CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED: nothing to chain onto */
    g_chain_ud = userdata;
    g_chain = cb;
    *subscriber = g_api_sub;
    return 0;
}

int cct_chain_enable(uint32_t enable, void *subscriber, int domain, uint32_t cbid) {
    (void)subscriber;
    if (domain <= 0 || domain >= 3 || cbid >= MAX_CBID) return 1; /* CUPTI_ERROR_INVALID_PARAMETER */
    g_chain_want[domain][cbid] = enable ? 1 : 0;
    if (!enable && g_want[domain][cbid]) return 0; /* still recorded here */
    return g_enable(enable, g_api_sub, domain, cbid);
}

int cct_chain_unsubscribe(void *subscriber) {
    (void)subscriber;
    g_chain = NULL;
    for (int dom = 1; dom < 3; dom++)
        for (uint32_t c = 0; c < MAX_CBID; c++)
            if (g_chain_want[dom][c]) {
                g_chain_want[dom][c] = 0;
                if (!g_want[dom][c]) g_enable(0, g_api_sub, dom, c);
            }
    return 0;
}
