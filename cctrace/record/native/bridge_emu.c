/* Bridge emulation: make an ordinary GPU's copies behave as if they crossed a GPU Confidential
 * Computing bounce-buffer bridge, from inside the CUDA calls (CUPTI callback API), so that CUPTI
 * and the eBPF host probes both see the time where a real bridge puts it:
 *   - toll + slower bandwidth: the host spins (as when it encrypts) before an H2D copy is enqueued
 *     and after a D2H copy has landed (as when it decrypts);
 *   - serialization: a copy first waits until the previous bridge copy, if on another stream, is done;
 *   - async blocking: an async copy from/to pinned memory returns only when its stream is idle.
 * Every injected nanosecond is counted here (cct_bridge_stats): it is the trace's ground truth.
 * Plain C on purpose: it runs inside the traced program's CUDA calls, never waits for Python.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "cupti_callbacks.h"

typedef int CUresult;
typedef void *CUstream;
typedef void *CUevent;
typedef uint64_t CUdeviceptr;

/* parameter layouts of the copy calls we act on (cuda_runtime_api_params.h / cuda_params.h) */
enum {
    L_RT = 1,       /* cudaMemcpy{,Async}: dst, src, count, kind[, stream] */
    L_DRV_HTOD = 2, /* cuMemcpyHtoD{,Async}_v2: CUdeviceptr dst, const void *src, size_t n[, stream] */
    L_DRV_DTOH = 3, /* cuMemcpyDtoH{,Async}_v2: void *dst, CUdeviceptr src, size_t n[, stream] */
    L_DRV_ANY = 4,  /* cuMemcpy{,Async}: CUdeviceptr dst, CUdeviceptr src, size_t n[, stream] */
};
#define F_ASYNC 0x100
#define F_PTSZ 0x200 /* per-thread default stream variant */
#define MAX_CALLS 32

struct call { int domain; uint32_t cbid; int flags; };
static struct call g_calls[MAX_CALLS];
static int g_ncalls;

/* spec */
static int64_t g_toll_ns[2];        /* [0] H2D, [1] D2H */
static double g_extra_ns_per_b[2];  /* extra ns per byte from the lower bandwidth */
static int g_serialize, g_async_block;

/* driver entry points */
static CUresult (*p_stream_query)(CUstream);
static CUresult (*p_event_query)(CUevent);
static CUresult (*p_event_record)(CUevent, CUstream);
static CUresult (*p_event_create)(CUevent *, unsigned int);
static CUresult (*p_pointer_attr)(void *, int, CUdeviceptr);

static void *g_sub;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static CUevent g_last_ev;
static CUstream g_last_stream;
static void *g_ev_ctx;
static int g_have_last;

/* counters: see STAT_NAMES in cctrace/record/bridge.py (same order) */
enum {
    S_COPIES, S_TOLL_N, S_TOLL_NS, S_BW_N, S_BW_NS, S_SERIAL_N, S_SERIAL_NS, S_BLOCK_N, S_BLOCK_NS,
    S_H2D_N, S_H2D_TOLL_NS, S_D2H_N, S_D2H_TOLL_NS, S_SKIPPED, S_ERRORS, S_FIXED
};
#define HIST 48
static volatile uint64_t g_stats[S_FIXED];
static volatile uint64_t g_hist[2][HIST]; /* tolled crossings per direction by floor(log2(bytes)) */

static __thread int t_depth;   /* >0 inside a copy we are emulating: skip the driver calls under it */
static __thread int t_dir;     /* per-call state from enter to exit */
static __thread int t_pinned;
static __thread size_t t_bytes;
static __thread CUstream t_stream;
static __thread int t_async;

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline void spin_ns(int64_t ns) {
    if (ns <= 0) return;
    int64_t end = now_ns() + ns;
    while (now_ns() < end) __asm__ __volatile__("" ::: "memory");
}

#define CU_POINTER_ATTRIBUTE_MEMORY_TYPE 2
#define CU_MEMORYTYPE_HOST 1
#define CU_MEMORYTYPE_DEVICE 2
#define CU_MEMORYTYPE_UNIFIED 4
#define CUDA_ERROR_NOT_READY 600

/* 0 pageable host, 1 pinned host, 2 device */
static int mem_class(uint64_t ptr) {
    unsigned int t = 0;
    if (!p_pointer_attr || p_pointer_attr(&t, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, (CUdeviceptr)ptr) != 0) return 0;
    if (t == CU_MEMORYTYPE_DEVICE || t == CU_MEMORYTYPE_UNIFIED) return 2;
    return 1;
}

static const struct call *find(int domain, uint32_t cbid) {
    for (int i = 0; i < g_ncalls; i++)
        if (g_calls[i].cbid == cbid && g_calls[i].domain == domain) return &g_calls[i];
    return NULL;
}

static int log2_bucket(size_t n) {
    int b = 0;
    while (n > 1 && b < HIST - 1) {
        n >>= 1;
        b++;
    }
    return b;
}

/* direction 0 H2D, 1 D2H, -1 not a crossing; fills pinned/bytes/stream */
static int decode(const struct call *c, const void *params, int *pinned, size_t *bytes, CUstream *stream) {
    const uint8_t *p = (const uint8_t *)params;
    uint64_t dst = *(const uint64_t *)(p + 0), src = *(const uint64_t *)(p + 8);
    *bytes = *(const size_t *)(p + 16);
    int layout = c->flags & 0xff, dir = -1;
    size_t stream_off = 24;
    if (layout == L_RT) {
        int kind = *(const int *)(p + 24);
        stream_off = 32;
        if (kind == 1) dir = 0;
        else if (kind == 2) dir = 1;
        else if (kind == 4) { /* cudaMemcpyDefault: ask the driver what the pointers are */
            int s = mem_class(src), d = mem_class(dst);
            if (s < 2 && d == 2) dir = 0;
            else if (s == 2 && d < 2) dir = 1;
        }
    } else if (layout == L_DRV_HTOD) dir = 0;
    else if (layout == L_DRV_DTOH) dir = 1;
    else if (layout == L_DRV_ANY) {
        int s = mem_class(src), d = mem_class(dst);
        if (s < 2 && d == 2) dir = 0;
        else if (s == 2 && d < 2) dir = 1;
    }
    if (dir < 0) return -1;
    /* only async blocking needs to know pinned from pageable: spare the driver query otherwise */
    *pinned = (c->flags & F_ASYNC) && g_async_block ? mem_class(dir == 0 ? src : dst) == 1 : 0;
    *stream = (c->flags & F_ASYNC) ? *(CUstream const *)(p + stream_off) : (CUstream)0;
    if (*stream == (CUstream)0 && (c->flags & F_PTSZ)) *stream = (CUstream)0x2; /* CU_STREAM_PER_THREAD */
    return dir;
}

static void toll(int dir, size_t bytes) {
    int64_t t = g_toll_ns[dir];
    int64_t bw = (int64_t)(g_extra_ns_per_b[dir] * (double)bytes);
    spin_ns(t + bw);
    if (t > 0) {
        __sync_fetch_and_add(&g_stats[S_TOLL_N], 1);
        __sync_fetch_and_add(&g_stats[S_TOLL_NS], (uint64_t)t);
        __sync_fetch_and_add(&g_stats[dir ? S_D2H_N : S_H2D_N], 1);
        __sync_fetch_and_add(&g_stats[dir ? S_D2H_TOLL_NS : S_H2D_TOLL_NS], (uint64_t)t);
        __sync_fetch_and_add(&g_hist[dir][log2_bucket(bytes)], 1);
    }
    if (bw > 0) {
        __sync_fetch_and_add(&g_stats[S_BW_N], 1);
        __sync_fetch_and_add(&g_stats[S_BW_NS], (uint64_t)bw);
    }
}

static void on_enter(const CallbackData *d) {
    if (g_serialize && p_event_query) {
        pthread_mutex_lock(&g_lock);
        if (g_have_last && g_last_stream != t_stream && g_ev_ctx == d->context &&
            p_event_query(g_last_ev) == CUDA_ERROR_NOT_READY) {
            int64_t t0 = now_ns();
            while (p_event_query(g_last_ev) == CUDA_ERROR_NOT_READY) __asm__ __volatile__("" ::: "memory");
            __sync_fetch_and_add(&g_stats[S_SERIAL_N], 1);
            __sync_fetch_and_add(&g_stats[S_SERIAL_NS], (uint64_t)(now_ns() - t0));
        }
        pthread_mutex_unlock(&g_lock);
    }
    if (t_dir == 0) toll(0, t_bytes);
}

static void on_exit_(const CallbackData *d) {
    if (t_async && t_pinned && g_async_block && p_stream_query) {
        if (p_stream_query(t_stream) == CUDA_ERROR_NOT_READY) {
            int64_t t0 = now_ns();
            while (p_stream_query(t_stream) == CUDA_ERROR_NOT_READY) __asm__ __volatile__("" ::: "memory");
            __sync_fetch_and_add(&g_stats[S_BLOCK_N], 1);
            __sync_fetch_and_add(&g_stats[S_BLOCK_NS], (uint64_t)(now_ns() - t0));
        }
    }
    if (t_dir == 1) toll(1, t_bytes);
    if (g_serialize && p_event_record) {
        pthread_mutex_lock(&g_lock);
        if (!g_last_ev && p_event_create && p_event_create(&g_last_ev, 2 /* CU_EVENT_DISABLE_TIMING */) == 0)
            g_ev_ctx = d->context;
        if (g_last_ev && g_ev_ctx == d->context && p_event_record(g_last_ev, t_stream) == 0) {
            g_last_stream = t_stream;
            g_have_last = 1;
        } else {
            __sync_fetch_and_add(&g_stats[S_ERRORS], 1);
        }
        pthread_mutex_unlock(&g_lock);
    }
}

static void on_callback(void *userdata, int domain, uint32_t cbid, const void *cbdata) {
    (void)userdata;
    const CallbackData *d = (const CallbackData *)cbdata;
    const struct call *c = find(domain, cbid);
    if (!c) return;
    if (d->callbackSite == 0) {
        if (t_depth++ > 0) return; /* the driver call under a runtime call we already emulate */
        t_dir = decode(c, d->functionParams, &t_pinned, &t_bytes, &t_stream);
        t_async = (c->flags & F_ASYNC) != 0;
        if (t_dir < 0) {
            __sync_fetch_and_add(&g_stats[S_SKIPPED], 1);
            return;
        }
        __sync_fetch_and_add(&g_stats[S_COPIES], 1);
        on_enter(d);
    } else {
        if (t_depth <= 0) return;
        if (--t_depth > 0) return;
        if (t_dir < 0) return;
        on_exit_(d);
    }
}

static void *sym(void *lib, const char *a, const char *b) {
    void *p = dlsym(lib, a);
    return p ? p : (b ? dlsym(lib, b) : NULL);
}

/* Which calls to act on, and the spec: shared by cct_bridge_start and the test entry. */
static void configure(const int *domains, const uint32_t *cbids, const int *flags, int n, const int64_t *toll_ns,
                      const double *extra_ns_per_byte, int serialize, int async_block) {
    g_ncalls = n < MAX_CALLS ? n : MAX_CALLS;
    for (int i = 0; i < g_ncalls; i++) {
        g_calls[i].domain = domains[i];
        g_calls[i].cbid = cbids[i];
        g_calls[i].flags = flags[i];
    }
    for (int i = 0; i < 2; i++) {
        g_toll_ns[i] = toll_ns[i];
        g_extra_ns_per_b[i] = extra_ns_per_byte[i];
    }
    g_serialize = serialize;
    g_async_block = async_block;
}

/* Subscribe and enable the given (domain, cbid, flags) calls. Returns 0, or a negative code:
 * -1 libcuda not loadable, -2 too many calls, else CUPTI's error (positive) from subscribe/enable. */
int cct_bridge_start(void *subscribe, void *enable, const int *domains, const uint32_t *cbids, const int *flags,
                     int n, const int64_t *toll_ns, const double *extra_ns_per_byte, int serialize,
                     int async_block) {
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (!lib) lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib) return -1;
    p_stream_query = (CUresult(*)(CUstream))sym(lib, "cuStreamQuery", NULL);
    p_event_query = (CUresult(*)(CUevent))sym(lib, "cuEventQuery", NULL);
    p_event_record = (CUresult(*)(CUevent, CUstream))sym(lib, "cuEventRecord", NULL);
    p_event_create = (CUresult(*)(CUevent *, unsigned int))sym(lib, "cuEventCreate", NULL);
    p_pointer_attr = (CUresult(*)(void *, int, CUdeviceptr))sym(lib, "cuPointerGetAttribute", NULL);
    if (n > MAX_CALLS) return -2;
    configure(domains, cbids, flags, n, toll_ns, extra_ns_per_byte, serialize, async_block);
    int rc = ((subscribe_fn)subscribe)(&g_sub, on_callback, NULL);
    if (rc != 0) return rc;
    for (int i = 0; i < n; i++) {
        rc = ((enable_fn)enable)(1, g_sub, domains[i], cbids[i]);
        if (rc != 0) return rc;
    }
    return 0;
}

int cct_bridge_stop(void *unsubscribe) {
    if (!g_sub) return 0;
    int rc = ((unsubscribe_fn)unsubscribe)(g_sub);
    g_sub = NULL;
    return rc;
}

/* After fork: the child starts its own count (its CUDA state is not the parent's). */
void cct_bridge_reset(void) {
    memset((void *)g_stats, 0, sizeof g_stats);
    memset((void *)g_hist, 0, sizeof g_hist);
    g_last_ev = NULL;
    g_have_last = 0;
}

int cct_bridge_stats(uint64_t *out, int n) {
    int k = 0;
    for (int i = 0; i < S_FIXED && k < n; i++) out[k++] = g_stats[i];
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < HIST && k < n; i++) out[k++] = g_hist[d][i];
    return k;
}

/* For tests on machines without a GPU: stand-in driver entry points (any may be NULL), and one
 * callback delivered as CUPTI would deliver it. Not used by cctrace itself. */
void cct_bridge_test_setup(void *stream_query, void *event_query, void *event_record, void *event_create,
                           void *pointer_attr, const int *domains, const uint32_t *cbids, const int *flags, int n,
                           const int64_t *toll_ns, const double *extra_ns_per_byte, int serialize,
                           int async_block) {
    p_stream_query = (CUresult(*)(CUstream))stream_query;
    p_event_query = (CUresult(*)(CUevent))event_query;
    p_event_record = (CUresult(*)(CUevent, CUstream))event_record;
    p_event_create = (CUresult(*)(CUevent *, unsigned int))event_create;
    p_pointer_attr = (CUresult(*)(void *, int, CUdeviceptr))pointer_attr;
    configure(domains, cbids, flags, n, toll_ns, extra_ns_per_byte, serialize, async_block);
    cct_bridge_reset();
}

void cct_bridge_test_call(int domain, uint32_t cbid, int site, const void *params, void *context) {
    CallbackData d;
    memset(&d, 0, sizeof d);
    d.callbackSite = site;
    d.functionParams = params;
    d.context = context;
    on_callback(NULL, domain, cbid, &d);
}
