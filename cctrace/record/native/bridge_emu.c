/* Bridge emulation: make an ordinary GPU's copies behave as if they crossed a GPU Confidential
 * Computing bounce-buffer bridge, from inside the CUDA calls (CUPTI callback API), so that CUPTI
 * and the eBPF host probes both see the time where a real bridge puts it:
 *   - toll + slower bandwidth: the host spins (as when it encrypts) before an H2D copy is enqueued
 *     and after a D2H copy has landed (as when it decrypts);
 *   - serialization: a copy first waits until the previous bridge copy, if on another stream, is done;
 *   - async blocking: an async copy from/to pinned memory returns only when its stream is idle;
 *   - CUDA graphs: the memcpy nodes of a graph (found when it is instantiated) pay their tolls at each
 *     launch, as replayed copies do on a real bridge.
 * Every injection is counted (cct_bridge_stats) and recorded as one struct inj_rec (time, thread, call,
 * correlation id, kind, direction, bytes, ns) that the tracer drains into `bridge_injections`: the
 * trace's ground truth.
 * Safe wherever a server runs: it never makes a CUDA call that could fail or change the program. While
 * any stream capture is open in the process it makes no stream or event call at all, and a copy or a
 * launch on a capturing stream is a graph node being built, not a crossing: untouched. Serialization
 * keeps one event per context (several devices). Plain C on purpose: it runs inside the traced
 * program's CUDA calls, never waits for Python.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "cuda_driver.h"
#include "cupti_callbacks.h"

typedef CUDA_MEMCPY3D Memcpy3D; /* the parameters of a graph's memcpy node */

/* parameter layouts of the copy calls we act on (cuda_runtime_api_params.h / cuda_params.h) */
enum {
    L_RT = 1,       /* cudaMemcpy{,Async}: dst, src, count, kind[, stream] */
    L_DRV_HTOD = 2, /* cuMemcpyHtoD{,Async}_v2: CUdeviceptr dst, const void *src, size_t n[, stream] */
    L_DRV_DTOH = 3, /* cuMemcpyDtoH{,Async}_v2: void *dst, CUdeviceptr src, size_t n[, stream] */
    L_DRV_ANY = 4,  /* cuMemcpy{,Async}: CUdeviceptr dst, CUdeviceptr src, size_t n[, stream] */
    L_GRAPH_LAUNCH = 5,  /* cuGraphLaunch{,_ptsz}: CUgraphExec exec, CUstream stream */
    L_GRAPH_INST = 6,    /* cuGraphInstantiate*: CUgraphExec *exec, CUgraph graph, ... */
    L_GRAPH_UPDATE = 7,  /* cuGraphExecUpdate*: CUgraphExec exec, CUgraph graph, ... */
    L_GRAPH_DESTROY = 8, /* cuGraphExecDestroy: CUgraphExec exec */
    L_CAPTURE_BEGIN = 9, /* cuStreamBeginCapture*: CUstream stream, ... */
    L_CAPTURE_END = 10,  /* cuStreamEndCapture{,_ptsz}: CUstream stream, CUgraph *graph */
};
#define F_ASYNC 0x100
#define F_PTSZ 0x200 /* per-thread default stream variant */
#define MAX_CALLS 64

struct call { int domain; uint32_t cbid; int flags; };
static struct call g_calls[MAX_CALLS];
static int g_ncalls;

/* spec */
static int64_t g_toll_ns[2];        /* [0] H2D, [1] D2H */
static double g_extra_ns_per_b[2];  /* extra ns per byte from the lower bandwidth */
static int g_serialize, g_async_block;

/* driver entry points, resolved from libcuda by name (DRIVER_FNS), or set by a test */
static CUresult (*p_stream_query)(CUstream);
static CUresult (*p_event_query)(CUevent);
static CUresult (*p_event_record)(CUevent, CUstream);
static CUresult (*p_event_create)(CUevent *, unsigned int);
static CUresult (*p_pointer_attr)(void *, int, CUdeviceptr);
static CUresult (*p_is_capturing)(CUstream, int *);
static CUresult (*p_graph_nodes)(CUgraph, CUgraphNode *, size_t *);
static CUresult (*p_node_type)(CUgraphNode, int *);
static CUresult (*p_memcpy_params)(CUgraphNode, Memcpy3D *);
static CUresult (*p_child_graph)(CUgraphNode, CUgraph *);

static const struct {
    const char *name;
    void **fn;
} DRIVER_FNS[] = {
    {"cuStreamQuery", (void **)&p_stream_query},
    {"cuEventQuery", (void **)&p_event_query},
    {"cuEventRecord", (void **)&p_event_record},
    {"cuEventCreate", (void **)&p_event_create},
    {"cuPointerGetAttribute", (void **)&p_pointer_attr},
    {"cuStreamIsCapturing", (void **)&p_is_capturing},
    {"cuGraphGetNodes", (void **)&p_graph_nodes},
    {"cuGraphNodeGetType", (void **)&p_node_type},
    {"cuGraphMemcpyNodeGetParams", (void **)&p_memcpy_params},
    {"cuGraphChildGraphNodeGetGraph", (void **)&p_child_graph},
};
#define N_DRIVER_FNS (sizeof DRIVER_FNS / sizeof DRIVER_FNS[0])

static void *g_sub;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
/* serialization: per context (device), the event recorded after its last bridge copy */
#define MAX_CTX 32
struct ctx_slot {
    int used;
    void *ctx;
    CUevent ev;
    CUstream last_stream;
    int have_last;
};
static struct ctx_slot g_ctx[MAX_CTX];
static volatile int g_captures; /* stream captures open in this process: no stream/event call then */

/* counters: see STAT_NAMES in cctrace/record/bridge.py (same order) */
enum {
    S_COPIES, S_TOLL_N, S_TOLL_NS, S_BW_N, S_BW_NS, S_SERIAL_N, S_SERIAL_NS, S_BLOCK_N, S_BLOCK_NS,
    S_H2D_N, S_H2D_TOLL_NS, S_D2H_N, S_D2H_TOLL_NS, S_SKIPPED, S_ERRORS, S_GRAPH_LAUNCHES, S_GRAPH_COPIES,
    S_CAPTURED, S_GRAPHS, S_GRAPH_NODES_LOST, S_REC_LOST, S_FIXED
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
static __thread int t_captured; /* this call is being captured into a graph: not a crossing now */
static __thread uint32_t t_tid;

/* ---- ground truth: one record per injection, drained by the tracer (cct_bridge_take) ----------- */
enum { K_TOLL, K_BANDWIDTH, K_SERIALIZE, K_ASYNC_BLOCK }; /* KINDS in cctrace/record/bridge.py */
struct inj_rec { /* 40 bytes; INJ_DTYPE in cctrace/record/bridge.py reads it */
    int64_t ts;
    int64_t ns;
    uint64_t bytes;
    uint32_t tid;
    uint32_t correlation_id;
    uint32_t cbid;
    uint8_t kind;
    uint8_t direction; /* 0 h2d, 1 d2h, 2 none */
    uint8_t domain;
    uint8_t pad;
};
#define REC_CAP 65536
static struct inj_rec *g_recs;
static size_t g_nrecs;
static pthread_mutex_t g_rec_lock = PTHREAD_MUTEX_INITIALIZER;

struct site { /* the call an injection lands in */
    int domain;
    uint32_t cbid, correlation_id;
};

static void add_rec(const struct site *at, int kind, int dir, uint64_t bytes, int64_t ts, int64_t ns) {
    if (!t_tid) t_tid = (uint32_t)syscall(SYS_gettid);
    struct inj_rec r = {ts, ns, bytes, t_tid, at->correlation_id, at->cbid, (uint8_t)kind,
                        (uint8_t)(dir < 0 ? 2 : dir), (uint8_t)at->domain, 0};
    pthread_mutex_lock(&g_rec_lock);
    if (!g_recs) g_recs = (struct inj_rec *)malloc(REC_CAP * sizeof(struct inj_rec));
    if (g_recs && g_nrecs < REC_CAP) g_recs[g_nrecs++] = r;
    else __sync_fetch_and_add(&g_stats[S_REC_LOST], 1);
    pthread_mutex_unlock(&g_rec_lock);
}

/* Move up to `cap` records into `out` (the tracer's flusher); returns how many. */
size_t cct_bridge_take(struct inj_rec *out, size_t cap) {
    pthread_mutex_lock(&g_rec_lock);
    size_t n = g_nrecs < cap ? g_nrecs : cap;
    if (n) {
        memcpy(out, g_recs, n * sizeof(struct inj_rec));
        memmove(g_recs, g_recs + n, (g_nrecs - n) * sizeof(struct inj_rec));
        g_nrecs -= n;
    }
    pthread_mutex_unlock(&g_rec_lock);
    return n;
}

size_t cct_bridge_record_size(void) { return sizeof(struct inj_rec); }

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

static void toll(const struct site *at, int dir, size_t bytes) {
    int64_t t = g_toll_ns[dir];
    int64_t bw = (int64_t)(g_extra_ns_per_b[dir] * (double)bytes);
    int64_t t0 = now_ns();
    spin_ns(t + bw);
    if (t > 0) add_rec(at, K_TOLL, dir, bytes, t0, t);
    if (bw > 0) add_rec(at, K_BANDWIDTH, dir, bytes, t0 + t, bw);
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

/* The serialization slot of a context (device): found, or made on first use (NULL when full). */
static struct ctx_slot *ctx_slot(void *ctx) {
    for (int i = 0; i < MAX_CTX; i++) {
        if (g_ctx[i].used && g_ctx[i].ctx == ctx) return &g_ctx[i];
        if (!g_ctx[i].used) {
            if (!p_event_create || p_event_create(&g_ctx[i].ev, 2 /* CU_EVENT_DISABLE_TIMING */) != 0) return NULL;
            g_ctx[i].used = 1;
            g_ctx[i].ctx = ctx;
            return &g_ctx[i];
        }
    }
    return NULL;
}

/* May this call touch streams and events? Not while any capture is open in the process (a query or
 * a record there can invalidate it, even from another thread), nor on a stream being captured. */
static inline int stream_calls_ok(void) { return g_captures == 0 && !t_captured; }

/* Serialization, before a crossing: wait until the context's last bridge copy, if on another
 * stream, has finished. */
static void serialize_wait(const CallbackData *d, const struct site *at, int dir, size_t bytes) {
    if (!g_serialize || !p_event_query || !stream_calls_ok()) return;
    pthread_mutex_lock(&g_lock);
    struct ctx_slot *c = ctx_slot(d->context);
    if (c && c->have_last && c->last_stream != t_stream && p_event_query(c->ev) == CUDA_ERROR_NOT_READY) {
        int64_t t0 = now_ns();
        while (p_event_query(c->ev) == CUDA_ERROR_NOT_READY) __asm__ __volatile__("" ::: "memory");
        int64_t ns = now_ns() - t0;
        __sync_fetch_and_add(&g_stats[S_SERIAL_N], 1);
        __sync_fetch_and_add(&g_stats[S_SERIAL_NS], (uint64_t)ns);
        add_rec(at, K_SERIALIZE, dir, bytes, t0, ns);
    }
    pthread_mutex_unlock(&g_lock);
}

/* Serialization, after a crossing was enqueued: remember where the context's bridge is busy. */
static void serialize_mark(const CallbackData *d) {
    if (!g_serialize || !p_event_record || !stream_calls_ok()) return;
    pthread_mutex_lock(&g_lock);
    struct ctx_slot *c = ctx_slot(d->context);
    if (c && p_event_record(c->ev, t_stream) == 0) {
        c->last_stream = t_stream;
        c->have_last = 1;
    } else {
        __sync_fetch_and_add(&g_stats[S_ERRORS], 1);
    }
    pthread_mutex_unlock(&g_lock);
}

/* Is this stream being captured into a graph? (cuStreamIsCapturing is legal during a capture.) */
static int is_capturing(CUstream s) {
    if (!p_is_capturing) return 0;
    int st = 0;
    if (p_is_capturing(s, &st) != 0) return 1; /* cannot tell (legacy stream during a capture): hands off */
    return st != 0;                            /* active or invalidated */
}

static void on_enter(const CallbackData *d, const struct site *at) {
    serialize_wait(d, at, t_dir, t_bytes);
    if (t_dir == 0) toll(at, 0, t_bytes);
}

static void on_exit_(const CallbackData *d, const struct site *at) {
    if (t_async && t_pinned && g_async_block && p_stream_query && stream_calls_ok()) {
        if (p_stream_query(t_stream) == CUDA_ERROR_NOT_READY) {
            int64_t t0 = now_ns();
            while (p_stream_query(t_stream) == CUDA_ERROR_NOT_READY) __asm__ __volatile__("" ::: "memory");
            int64_t ns = now_ns() - t0;
            __sync_fetch_and_add(&g_stats[S_BLOCK_N], 1);
            __sync_fetch_and_add(&g_stats[S_BLOCK_NS], (uint64_t)ns);
            add_rec(at, K_ASYNC_BLOCK, t_dir, t_bytes, t0, ns);
        }
    }
    if (t_dir == 1) toll(at, 1, t_bytes);
    serialize_mark(d);
}

/* ---- CUDA graphs: the host<->device memcpy nodes of each instantiated graph, tolled per launch ---- */
#define MAX_EXECS 4096
#define MAX_GNODES 256
struct gnode {
    int dir;
    size_t bytes;
};
struct gexec {
    CUgraphExec exec;
    int n;
    struct gnode *nodes;
};
static struct gexec g_execs[MAX_EXECS];
static pthread_mutex_t g_graph_lock = PTHREAD_MUTEX_INITIALIZER;

static int side_class(int memtype, const void *host, CUdeviceptr dev) { /* 0/1 host, 2 device, -1 unknown */
    if (memtype == CU_MEMORYTYPE_HOST) return 1;
    if (memtype == CU_MEMORYTYPE_DEVICE || memtype == 3 /* array */) return 2;
    if (memtype == CU_MEMORYTYPE_UNIFIED) return mem_class(dev ? (uint64_t)dev : (uint64_t)(uintptr_t)host);
    return -1;
}

static void scan_graph(CUgraph g, struct gnode *out, int *n, int depth) {
    if (!p_graph_nodes || !p_node_type || depth > 8) return;
    size_t count = 0;
    if (p_graph_nodes(g, NULL, &count) != 0 || count == 0) return;
    CUgraphNode *nodes = (CUgraphNode *)malloc(count * sizeof(CUgraphNode));
    if (!nodes) return;
    if (p_graph_nodes(g, nodes, &count) == 0) {
        for (size_t i = 0; i < count; i++) {
            int type = -1;
            if (p_node_type(nodes[i], &type) != 0) continue;
            if (type == 4 /* CU_GRAPH_NODE_TYPE_GRAPH */ && p_child_graph) {
                CUgraph child = NULL;
                if (p_child_graph(nodes[i], &child) == 0 && child) scan_graph(child, out, n, depth + 1);
                continue;
            }
            if (type != 1 /* CU_GRAPH_NODE_TYPE_MEMCPY */ || !p_memcpy_params) continue;
            Memcpy3D m;
            memset(&m, 0, sizeof m);
            if (p_memcpy_params(nodes[i], &m) != 0) continue;
            int s = side_class(m.srcMemoryType, m.srcHost, m.srcDevice);
            int d = side_class(m.dstMemoryType, m.dstHost, m.dstDevice);
            int dir = (s == 0 || s == 1) && d == 2 ? 0 : (s == 2 && (d == 0 || d == 1) ? 1 : -1);
            if (dir < 0) continue;
            if (*n >= MAX_GNODES) {
                __sync_fetch_and_add(&g_stats[S_GRAPH_NODES_LOST], 1);
                continue;
            }
            size_t bytes = m.WidthInBytes * (m.Height ? m.Height : 1) * (m.Depth ? m.Depth : 1);
            out[(*n)++] = (struct gnode){dir, bytes};
        }
    }
    free(nodes);
}

static struct gexec *exec_slot(CUgraphExec exec, int create) { /* under g_graph_lock */
    struct gexec *empty = NULL;
    for (int i = 0; i < MAX_EXECS; i++) {
        if (g_execs[i].exec == exec) return &g_execs[i];
        if (!g_execs[i].exec && !empty) empty = &g_execs[i];
    }
    return create ? empty : NULL;
}

static void graph_forget(CUgraphExec exec) {
    pthread_mutex_lock(&g_graph_lock);
    struct gexec *e = exec_slot(exec, 0);
    if (e) {
        free(e->nodes);
        memset(e, 0, sizeof *e);
    }
    pthread_mutex_unlock(&g_graph_lock);
}

static void graph_learn(CUgraphExec exec, CUgraph graph) {
    if (!exec || !graph) return;
    struct gnode *nodes = (struct gnode *)malloc(MAX_GNODES * sizeof(struct gnode));
    if (!nodes) return;
    int n = 0;
    scan_graph(graph, nodes, &n, 0);
    graph_forget(exec);
    pthread_mutex_lock(&g_graph_lock);
    struct gexec *e = exec_slot(exec, 1);
    if (e) {
        e->exec = exec;
        e->n = n;
        e->nodes = nodes;
        __sync_fetch_and_add(&g_stats[S_GRAPHS], 1);
    } else {
        free(nodes);
        __sync_fetch_and_add(&g_stats[S_GRAPH_NODES_LOST], (uint64_t)n);
    }
    pthread_mutex_unlock(&g_graph_lock);
}

/* A launch's memcpy nodes, copied out (the exec may be destroyed by another thread meanwhile). */
static int graph_nodes_of(CUgraphExec exec, struct gnode *out) {
    int n = 0;
    pthread_mutex_lock(&g_graph_lock);
    struct gexec *e = exec_slot(exec, 0);
    if (e) {
        n = e->n;
        memcpy(out, e->nodes, (size_t)n * sizeof(struct gnode));
    }
    pthread_mutex_unlock(&g_graph_lock);
    return n;
}

static __thread struct gnode t_gnodes[MAX_GNODES];
static __thread int t_gn;

static void graph_launch(const CallbackData *d, const struct site *at, const uint8_t *p, int flags) {
    if (d->callbackSite == 0) {
        t_stream = *(CUstream const *)(p + 8);
        if (t_stream == (CUstream)0 && (flags & F_PTSZ)) t_stream = (CUstream)0x2;
        t_captured = is_capturing(t_stream);
        t_gn = t_captured ? 0 : graph_nodes_of(*(CUgraphExec const *)p, t_gnodes);
        if (t_captured) __sync_fetch_and_add(&g_stats[S_CAPTURED], 1);
        if (t_gn == 0) return;
        __sync_fetch_and_add(&g_stats[S_GRAPH_LAUNCHES], 1);
        __sync_fetch_and_add(&g_stats[S_GRAPH_COPIES], (uint64_t)t_gn);
        serialize_wait(d, at, -1, 0);
        for (int i = 0; i < t_gn; i++)
            if (t_gnodes[i].dir == 0) toll(at, 0, t_gnodes[i].bytes);
        return;
    }
    if (t_gn == 0) return;
    for (int i = 0; i < t_gn; i++)
        if (t_gnodes[i].dir == 1) toll(at, 1, t_gnodes[i].bytes);
    serialize_mark(d);
    t_gn = 0;
}

/* The graph-lifecycle and capture calls: nothing injected, only what later launches and copies need. */
static void bookkeeping(const CallbackData *d, int layout, const uint8_t *p) {
    int ok = !d->functionReturnValue || *(const int *)d->functionReturnValue == 0;
    if (layout == L_CAPTURE_BEGIN) {
        if (d->callbackSite == 1 && ok) __sync_fetch_and_add(&g_captures, 1);
    } else if (layout == L_CAPTURE_END) {
        /* a capture ends even when EndCapture reports it invalidated; only a call on a stream that was
         * not capturing (enter: nothing open) leaves the count alone */
        if (d->callbackSite == 0) t_captured = is_capturing(*(CUstream const *)p);
        else if (t_captured && g_captures > 0) __sync_fetch_and_sub(&g_captures, 1);
    } else if (d->callbackSite == 1 && ok) {
        if (layout == L_GRAPH_INST) graph_learn(**(CUgraphExec *const *)p, *(CUgraph const *)(p + 8));
        else if (layout == L_GRAPH_UPDATE) graph_learn(*(CUgraphExec const *)p, *(CUgraph const *)(p + 8));
        else if (layout == L_GRAPH_DESTROY) graph_forget(*(CUgraphExec const *)p);
    }
}

static void on_callback(void *userdata, int domain, uint32_t cbid, const void *cbdata) {
    (void)userdata;
    const CallbackData *d = (const CallbackData *)cbdata;
    const struct call *c = find(domain, cbid);
    if (!c) return;
    int layout = c->flags & 0xff;
    struct site at = {domain, cbid, d->correlationId};
    if (layout >= L_GRAPH_INST) {
        bookkeeping(d, layout, (const uint8_t *)d->functionParams);
        return;
    }
    if (layout == L_GRAPH_LAUNCH) {
        graph_launch(d, &at, (const uint8_t *)d->functionParams, c->flags);
        return;
    }
    if (d->callbackSite == 0) {
        if (t_depth++ > 0) return; /* the driver call under a runtime call we already emulate */
        t_dir = decode(c, d->functionParams, &t_pinned, &t_bytes, &t_stream);
        t_async = (c->flags & F_ASYNC) != 0;
        if (t_dir < 0) {
            __sync_fetch_and_add(&g_stats[S_SKIPPED], 1);
            return;
        }
        t_captured = is_capturing(t_stream);
        if (t_captured) { /* a memcpy node being built: it crosses when the graph is launched */
            __sync_fetch_and_add(&g_stats[S_CAPTURED], 1);
            return;
        }
        __sync_fetch_and_add(&g_stats[S_COPIES], 1);
        on_enter(d, &at);
    } else {
        if (t_depth <= 0) return;
        if (--t_depth > 0) return;
        if (t_dir < 0 || t_captured) {
            t_captured = 0;
            return;
        }
        on_exit_(d, &at);
    }
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
    for (size_t i = 0; i < N_DRIVER_FNS; i++) *DRIVER_FNS[i].fn = dlsym(lib, DRIVER_FNS[i].name);
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

/* After fork: the child starts its own count and records (its CUDA state is not the parent's). */
void cct_bridge_reset(void) {
    memset((void *)g_stats, 0, sizeof g_stats);
    memset((void *)g_hist, 0, sizeof g_hist);
    memset(g_ctx, 0, sizeof g_ctx);
    g_captures = 0;
    pthread_mutex_init(&g_lock, NULL);
    pthread_mutex_init(&g_rec_lock, NULL);
    pthread_mutex_init(&g_graph_lock, NULL);
    g_nrecs = 0;
    t_tid = 0;
    t_depth = 0;
    t_gn = 0;
    t_captured = 0;
}

int cct_bridge_stats(uint64_t *out, int n) {
    int k = 0;
    for (int i = 0; i < S_FIXED && k < n; i++) out[k++] = g_stats[i];
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < HIST && k < n; i++) out[k++] = g_hist[d][i];
    return k;
}

/* For tests on machines without a GPU: a stand-in for one driver entry point (by its libcuda name;
 * 0 when known), the calls and spec, and one callback delivered as CUPTI would deliver it. Not used by
 * cctrace itself. */
int cct_bridge_test_driver(const char *name, void *fn) {
    for (size_t i = 0; i < N_DRIVER_FNS; i++)
        if (strcmp(DRIVER_FNS[i].name, name) == 0) {
            *DRIVER_FNS[i].fn = fn;
            return 0;
        }
    return -1;
}

void cct_bridge_test_setup(const int *domains, const uint32_t *cbids, const int *flags, int n, const int64_t *toll_ns,
                           const double *extra_ns_per_byte, int serialize, int async_block) {
    configure(domains, cbids, flags, n, toll_ns, extra_ns_per_byte, serialize, async_block);
    for (int i = 0; i < MAX_EXECS; i++) free(g_execs[i].nodes);
    memset(g_execs, 0, sizeof g_execs);
    cct_bridge_reset();
}

void cct_bridge_test_call(int domain, uint32_t cbid, int site, const void *params, void *context, uint32_t corr,
                          int ret) {
    CallbackData d;
    memset(&d, 0, sizeof d);
    d.callbackSite = site;
    d.functionParams = params;
    d.context = context;
    d.correlationId = corr;
    d.functionReturnValue = &ret;
    on_callback(NULL, domain, cbid, &d);
}
