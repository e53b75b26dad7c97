/* The CUDA boundary without CUPTI: a driver interposer preloaded (LD_PRELOAD) into every traced process.
 *
 * Programs reach the driver three ways, and each is covered:
 *   - direct linking: this library exports the driver's names (cuMemcpyHtoDAsync_v2, ...), found first;
 *   - dlsym on libcuda: dlsym is interposed and hands back this library's wrapper of the same name;
 *   - cuGetProcAddress(_v2) (the CUDA 12+/13 runtime resolves everything through it): the driver's answer
 *     is matched by address to an exported name (so _v2/_ptsz/_ptds variants keep their own real entry
 *     point and signature), else by base name, version and per-thread-stream flag; unknown answers pass
 *     through untouched.
 * Each wrapped call becomes one fixed-size record (name, bytes, direction, host/device memory kinds,
 * stream, enter/exit on CLOCK_MONOTONIC, return code, thread) in a per-thread ring: the hot path takes no
 * lock and makes no syscall but clock_gettime (vDSO). A flusher thread appends the rings to
 * `<CCTRACE_DIR>/interpose.<pid>.ipraw` every CCTRACE_FLUSH_S as [u64 magic][u64 bytes][payload] blocks;
 * a JSON header block describes the record layout and the name tables, so the decoder
 * (cctrace/record/sources/interposer.py) derives everything from the file. Memory kinds come from
 * cuPointerGetAttributes, cached per allocation (a seqlock-read range table, plus a page cache of pageable
 * hits). Graphs: at instantiate the memcpy/memset nodes are walked, and each cuGraphLaunch records the
 * crossings it replays. Copies issued during stream capture are marked captured (they move nothing).
 * Python stacks (py_stacks.h): once the in-process tracer switches capture on (cct_stacks_init/enable,
 * called by cctrace/record/sources/py_stacks.py), each record names its thread's interned stack, and the
 * stacks are written as blocks before the records that name them; a thread with no Python frames (or a
 * process with no tracer: capture is never on) records stack 0.
 * After fork the child drops its parent's records and stacks and writes its own file; before exec
 * (every exec* of glibc but execveat) everything recorded is appended, as at exit.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "cuda_driver.h"
#include "held_locks.h"
#include "cupti_callbacks.h"
#include "py_stacks.h" /* the calling thread's Python stack, once the tracer switches capture on */
#include "write_all.h"

#define CUDA_ERROR_NOT_FOUND 500
#define PTDS_FLAG 2 /* CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM */

/* ---- the record and its name tables (the header block hands these to the decoder) --------------- */
#define OPS(X) X(other) X(copy) X(memset) X(p2p) X(alloc) X(free) X(sync) X(graph_launch) X(graph) X(launch)
#define COPY_KINDS(X) X(none) X(HtoD) X(DtoH) X(DtoD) X(HtoH) X(PtoP) X(unknown)
/* the schema's MEMORY_KINDS names, indexed by the codes below */
#define MEM_KINDS(X) X(unknown) X(pageable) X(pinned) X(device) X(managed) X(array)
#define SYNC_KINDS(X) X(none) X(stream) X(event) X(context) X(stream_wait_event)
#define ENUM_OP(n) OP_##n,
#define ENUM_CK(n) CK_##n,
#define ENUM_MK(n) MK_##n,
#define ENUM_SK(n) SK_##n,
enum { OPS(ENUM_OP) };
enum { COPY_KINDS(ENUM_CK) };
enum { MEM_KINDS(ENUM_MK) };
enum { SYNC_KINDS(ENUM_SK) };

#define F_ASYNC 1u
#define F_CAPTURED 2u /* issued while its stream was being captured into a graph: moved nothing */
#define F_REPLAYED 4u /* a crossing replayed by the graph launch recorded just before it */
#define F_PTDS 8u

struct ip_rec { /* 72 bytes */
    uint64_t start, end; /* CLOCK_MONOTONIC ns around the real call */
    uint64_t bytes;
    uint64_t stream;
    uint64_t ptr; /* destination / allocated / freed pointer; the graph exec for launches */
    uint64_t aux; /* source pointer; the event for event syncs */
    uint32_t tid;
    uint16_t fn; /* index into "functions" */
    uint8_t op, copy_kind, src_kind, dst_kind, sync_kind, flags;
    int32_t ret;
    uint32_t stack_id; /* the calling thread's interned Python stack (py_stacks.h); 0: none */
};
#define LAYOUT(X)                                                                                              \
    X(start, u8) X(end, u8) X(bytes, u8) X(stream, u8) X(ptr, u8) X(aux, u8) X(tid, u4) X(fn, u2) X(op, u1)    \
        X(copy_kind, u1) X(src_kind, u1) X(dst_kind, u1) X(sync_kind, u1) X(flags, u1) X(ret, i4) X(stack_id, u4)

/* ---- wrapped entry points -------------------------------------------------------------------------
 * X(family, exported name, base name given to cuGetProcAddress, CUDA version that introduced this
 * signature under the base name, per-thread-stream variant). */
#define FUNCS(X)                                                                                               \
    X(HTOD, cuMemcpyHtoD_v2, cuMemcpyHtoD, 3020, 0)                                                            \
    X(HTOD, cuMemcpyHtoD_v2_ptds, cuMemcpyHtoD, 3020, 1)                                                       \
    X(HTODA, cuMemcpyHtoDAsync_v2, cuMemcpyHtoDAsync, 3020, 0)                                                 \
    X(HTODA, cuMemcpyHtoDAsync_v2_ptsz, cuMemcpyHtoDAsync, 3020, 1)                                            \
    X(DTOH, cuMemcpyDtoH_v2, cuMemcpyDtoH, 3020, 0)                                                            \
    X(DTOH, cuMemcpyDtoH_v2_ptds, cuMemcpyDtoH, 3020, 1)                                                       \
    X(DTOHA, cuMemcpyDtoHAsync_v2, cuMemcpyDtoHAsync, 3020, 0)                                                 \
    X(DTOHA, cuMemcpyDtoHAsync_v2_ptsz, cuMemcpyDtoHAsync, 3020, 1)                                            \
    X(DTOD, cuMemcpyDtoD_v2, cuMemcpyDtoD, 3020, 0)                                                            \
    X(DTOD, cuMemcpyDtoD_v2_ptds, cuMemcpyDtoD, 3020, 1)                                                       \
    X(DTODA, cuMemcpyDtoDAsync_v2, cuMemcpyDtoDAsync, 3020, 0)                                                 \
    X(DTODA, cuMemcpyDtoDAsync_v2_ptsz, cuMemcpyDtoDAsync, 3020, 1)                                            \
    X(UNI, cuMemcpy, cuMemcpy, 4000, 0)                                                                        \
    X(UNI, cuMemcpy_ptds, cuMemcpy, 4000, 1)                                                                   \
    X(UNIA, cuMemcpyAsync, cuMemcpyAsync, 4000, 0)                                                             \
    X(UNIA, cuMemcpyAsync_ptsz, cuMemcpyAsync, 4000, 1)                                                        \
    X(PEER, cuMemcpyPeer, cuMemcpyPeer, 4000, 0)                                                               \
    X(PEER, cuMemcpyPeer_ptds, cuMemcpyPeer, 4000, 1)                                                          \
    X(PEERA, cuMemcpyPeerAsync, cuMemcpyPeerAsync, 4000, 0)                                                    \
    X(PEERA, cuMemcpyPeerAsync_ptsz, cuMemcpyPeerAsync, 4000, 1)                                               \
    X(M2D, cuMemcpy2D_v2, cuMemcpy2D, 3020, 0)                                                                 \
    X(M2D, cuMemcpy2D_v2_ptds, cuMemcpy2D, 3020, 1)                                                            \
    X(M2D, cuMemcpy2DUnaligned_v2, cuMemcpy2DUnaligned, 3020, 0)                                               \
    X(M2D, cuMemcpy2DUnaligned_v2_ptds, cuMemcpy2DUnaligned, 3020, 1)                                          \
    X(M2DA, cuMemcpy2DAsync_v2, cuMemcpy2DAsync, 3020, 0)                                                      \
    X(M2DA, cuMemcpy2DAsync_v2_ptsz, cuMemcpy2DAsync, 3020, 1)                                                 \
    X(M3D, cuMemcpy3D_v2, cuMemcpy3D, 3020, 0)                                                                 \
    X(M3D, cuMemcpy3D_v2_ptds, cuMemcpy3D, 3020, 1)                                                            \
    X(M3DA, cuMemcpy3DAsync_v2, cuMemcpy3DAsync, 3020, 0)                                                      \
    X(M3DA, cuMemcpy3DAsync_v2_ptsz, cuMemcpy3DAsync, 3020, 1)                                                 \
    X(SET8, cuMemsetD8_v2, cuMemsetD8, 3020, 0)                                                                \
    X(SET8, cuMemsetD8_v2_ptds, cuMemsetD8, 3020, 1)                                                           \
    X(SET16, cuMemsetD16_v2, cuMemsetD16, 3020, 0)                                                             \
    X(SET16, cuMemsetD16_v2_ptds, cuMemsetD16, 3020, 1)                                                        \
    X(SET32, cuMemsetD32_v2, cuMemsetD32, 3020, 0)                                                             \
    X(SET32, cuMemsetD32_v2_ptds, cuMemsetD32, 3020, 1)                                                        \
    X(SET8A, cuMemsetD8Async, cuMemsetD8Async, 3020, 0)                                                        \
    X(SET8A, cuMemsetD8Async_ptsz, cuMemsetD8Async, 3020, 1)                                                   \
    X(SET16A, cuMemsetD16Async, cuMemsetD16Async, 3020, 0)                                                     \
    X(SET16A, cuMemsetD16Async_ptsz, cuMemsetD16Async, 3020, 1)                                                \
    X(SET32A, cuMemsetD32Async, cuMemsetD32Async, 3020, 0)                                                     \
    X(SET32A, cuMemsetD32Async_ptsz, cuMemsetD32Async, 3020, 1)                                                \
    X(SET2D8, cuMemsetD2D8_v2, cuMemsetD2D8, 3020, 0)                                                          \
    X(SET2D8, cuMemsetD2D8_v2_ptds, cuMemsetD2D8, 3020, 1)                                                     \
    X(SET2D16, cuMemsetD2D16_v2, cuMemsetD2D16, 3020, 0)                                                       \
    X(SET2D16, cuMemsetD2D16_v2_ptds, cuMemsetD2D16, 3020, 1)                                                  \
    X(SET2D32, cuMemsetD2D32_v2, cuMemsetD2D32, 3020, 0)                                                       \
    X(SET2D32, cuMemsetD2D32_v2_ptds, cuMemsetD2D32, 3020, 1)                                                  \
    X(SET2D8A, cuMemsetD2D8Async, cuMemsetD2D8Async, 3020, 0)                                                  \
    X(SET2D8A, cuMemsetD2D8Async_ptsz, cuMemsetD2D8Async, 3020, 1)                                             \
    X(SET2D16A, cuMemsetD2D16Async, cuMemsetD2D16Async, 3020, 0)                                               \
    X(SET2D16A, cuMemsetD2D16Async_ptsz, cuMemsetD2D16Async, 3020, 1)                                          \
    X(SET2D32A, cuMemsetD2D32Async, cuMemsetD2D32Async, 3020, 0)                                               \
    X(SET2D32A, cuMemsetD2D32Async_ptsz, cuMemsetD2D32Async, 3020, 1)                                          \
    X(ALLOC, cuMemAlloc_v2, cuMemAlloc, 3020, 0)                                                               \
    X(ALLOCM, cuMemAllocManaged, cuMemAllocManaged, 6000, 0)                                                   \
    X(ALLOCP, cuMemAllocPitch_v2, cuMemAllocPitch, 3020, 0)                                                    \
    X(ALLOCA, cuMemAllocAsync, cuMemAllocAsync, 11020, 0)                                                      \
    X(ALLOCA, cuMemAllocAsync_ptsz, cuMemAllocAsync, 11020, 1)                                                 \
    X(ALLOCPA, cuMemAllocFromPoolAsync, cuMemAllocFromPoolAsync, 11020, 0)                                     \
    X(ALLOCPA, cuMemAllocFromPoolAsync_ptsz, cuMemAllocFromPoolAsync, 11020, 1)                                \
    X(HALLOC, cuMemAllocHost_v2, cuMemAllocHost, 3020, 0)                                                      \
    X(HOSTALLOC, cuMemHostAlloc, cuMemHostAlloc, 2020, 0)                                                      \
    X(HOSTREG, cuMemHostRegister_v2, cuMemHostRegister, 6050, 0)                                               \
    X(FREE, cuMemFree_v2, cuMemFree, 3020, 0)                                                                  \
    X(FREEA, cuMemFreeAsync, cuMemFreeAsync, 11020, 0)                                                         \
    X(FREEA, cuMemFreeAsync_ptsz, cuMemFreeAsync, 11020, 1)                                                    \
    X(HFREE, cuMemFreeHost, cuMemFreeHost, 2000, 0)                                                            \
    X(HUNREG, cuMemHostUnregister, cuMemHostUnregister, 4000, 0)                                               \
    X(SSYNC, cuStreamSynchronize, cuStreamSynchronize, 2000, 0)                                                \
    X(SSYNC, cuStreamSynchronize_ptsz, cuStreamSynchronize, 2000, 1)                                           \
    X(ESYNC, cuEventSynchronize, cuEventSynchronize, 2000, 0)                                                  \
    X(CSYNC, cuCtxSynchronize, cuCtxSynchronize, 2000, 0)                                                      \
    X(CSYNC2, cuCtxSynchronize_v2, cuCtxSynchronize, 13000, 0)                                                 \
    X(SWAIT, cuStreamWaitEvent, cuStreamWaitEvent, 3020, 0)                                                    \
    X(SWAIT, cuStreamWaitEvent_ptsz, cuStreamWaitEvent, 3020, 1)                                               \
    X(GINST, cuGraphInstantiateWithFlags, cuGraphInstantiateWithFlags, 11040, 0)                               \
    X(GINST, cuGraphInstantiateWithFlags, cuGraphInstantiate, 12000, 0)                                        \
    X(GINST5, cuGraphInstantiate_v2, cuGraphInstantiate, 11000, 0)                                             \
    X(GINSTP, cuGraphInstantiateWithParams, cuGraphInstantiateWithParams, 12000, 0)                            \
    X(GINSTP, cuGraphInstantiateWithParams_ptsz, cuGraphInstantiateWithParams, 12000, 1)                       \
    X(GLAUNCH, cuGraphLaunch, cuGraphLaunch, 10000, 0)                                                         \
    X(GLAUNCH, cuGraphLaunch_ptsz, cuGraphLaunch, 10000, 1)                                                    \
    X(GEXECDESTROY, cuGraphExecDestroy, cuGraphExecDestroy, 10000, 0)                                          \
    X(CAPBEGIN, cuStreamBeginCapture_v2, cuStreamBeginCapture, 10010, 0)                                       \
    X(CAPBEGIN, cuStreamBeginCapture_v2_ptsz, cuStreamBeginCapture, 10010, 1)                                  \
    X(CAPEND, cuStreamEndCapture, cuStreamEndCapture, 10000, 0)                                                \
    X(CAPEND, cuStreamEndCapture_ptsz, cuStreamEndCapture, 10000, 1)                                           \
    X(LAUNCH, cuLaunchKernel, cuLaunchKernel, 4000, 0)                                                         \
    X(LAUNCH, cuLaunchKernel_ptsz, cuLaunchKernel, 4000, 1)                                                    \
    X(LAUNCHEX, cuLaunchKernelEx, cuLaunchKernelEx, 11060, 0)                                                  \
    X(LAUNCHEX, cuLaunchKernelEx_ptsz, cuLaunchKernelEx, 11060, 1)                                             \
    X(GPA, cuGetProcAddress, cuGetProcAddress, 11030, 0)                                                       \
    X(GPA2, cuGetProcAddress_v2, cuGetProcAddress, 12000, 0)

/* one table entry per line; a name listed twice (an alias under another base) shares one wrapper */
#define ENUM_FN(fam, sym, base, since, pt) FN_##sym##_##since,
enum { FUNCS(ENUM_FN) N_FUNCS };

struct fn_entry {
    const char *name, *base;
    int since, pt;
    void *wrapper;
    void *volatile *real;
};

/* ---- state ----------------------------------------------------------------------------------------- */
#define RING 4096 /* records per thread (256 KiB), appended to the file when full or every flush */
#define REC_MAGIC 0x3130525049544343ULL  /* "CCTIPR01": a block of struct ip_rec */
#define HEAD_MAGIC 0x3130484950544343ULL /* "CCTPIH01": the JSON header (layout, names) */
#define STAT_MAGIC 0x3130535049544343ULL /* "CCTIPS01": JSON counters, written at each final flush */

struct tbuf {
    struct ip_rec recs[RING];
    volatile uint32_t head; /* written by the owning thread only */
    volatile uint32_t tail; /* written under `lock` only */
    volatile int state;     /* 0 free, 1 owned by a live thread */
    pthread_mutex_t lock;   /* consumers: the flusher, or the owner when its ring is full */
    struct tbuf *next;
};

static struct tbuf *volatile g_bufs;
static __thread struct tbuf *t_buf;
static __thread uint32_t t_tid;
static pthread_key_t g_key;
static volatile int g_on;     /* recording in this process: CCTRACE_DIR set and the file writable */
static int g_armed;           /* CCTRACE_DIR and CCTRACE_INTERPOSE were set: cct_ip_set may switch it */
static int g_launches;        /* CCTRACE_INTERPOSE_LAUNCHES: also record kernel launches */
static char g_dir[3072];
static volatile int g_fd = -1;
static pid_t g_fd_pid; /* the process that opened g_fd (a vfork child shares it, and must not flush) */
static pthread_mutex_t g_file_lock = PTHREAD_MUTEX_INITIALIZER;
static volatile int g_flusher; /* 0 none, 1 starting/running */
static long g_flush_ns = 1000000000L;
static volatile uint64_t g_records, g_lost, g_unmatched, g_attr_queries, g_graph_nodes;
static volatile int g_capturing; /* captures begun and not ended: only then is cuStreamIsCapturing asked */
static char g_unmatched_names[512];

typedef void *(*dlsym_fn)(void *, const char *);
static dlsym_fn g_real_dlsym;
static void *volatile g_libcuda; /* the driver library the answers came from (for helper calls) */

/* helpers in the driver this library calls itself (never recorded) */
typedef CUresult (*ptrattrs_fn)(unsigned, int *, void **, CUdeviceptr);
typedef CUresult (*iscap_fn)(CUstream, int *);
typedef CUresult (*getnodes_fn)(CUgraph, CUgraphNode *, size_t *);
typedef CUresult (*nodetype_fn)(CUgraphNode, int *);
typedef CUresult (*cpyparams_fn)(CUgraphNode, CUDA_MEMCPY3D *);
typedef CUresult (*setparams_fn)(CUgraphNode, CUDA_MEMSET_NODE_PARAMS *);
typedef CUresult (*childgraph_fn)(CUgraphNode, CUgraph *);
static struct {
    ptrattrs_fn ptrattrs;
    iscap_fn iscap;
    getnodes_fn getnodes;
    nodetype_fn nodetype;
    cpyparams_fn cpyparams;
    setparams_fn setparams;
    childgraph_fn childgraph;
    void *volatile from; /* the library they were looked up in */
} H;

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *real_dlsym(void *handle, const char *name) {
    if (!g_real_dlsym) {
        static const char *versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.0", NULL};
        for (int i = 0; versions[i] && !g_real_dlsym; i++) g_real_dlsym = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    }
    return g_real_dlsym ? g_real_dlsym(handle, name) : NULL;
}

/* ---- the file -------------------------------------------------------------------------------------- */
static void write_block(uint64_t magic, const void *data, size_t n) {
    if (g_fd < 0 || write_block_all(g_fd, magic, data, n))
        __sync_fetch_and_add(&g_lost, magic == REC_MAGIC ? n / sizeof(struct ip_rec) : 0);
}

extern struct fn_entry g_fns[];

static void write_header(void) {
    static char json[16384];
    size_t n = 0, cap = sizeof json;
#define PUT(...) n += (size_t)snprintf(json + (n < cap ? n : cap), n < cap ? cap - n : 0, __VA_ARGS__)
    PUT("{\"version\":1,\"pid\":%d,\"record_size\":%zu,\"clock\":\"CLOCK_MONOTONIC\",\"layout\":[",
        (int)getpid(), sizeof(struct ip_rec));
    int first = 1;
#define LAY(f, t)                                                                                              \
    PUT("%s[\"%s\",\"%s\",%zu]", first ? "" : ",", #f, #t, offsetof(struct ip_rec, f));                        \
    first = 0;
    LAYOUT(LAY)
    PUT("],\"functions\":[");
    for (int i = 0; i < N_FUNCS; i++) PUT("%s\"%s\"", i ? "," : "", g_fns[i].name);
#define NAME(x) PUT("%s\"%s\"", first ? "" : ",", #x), first = 0;
#define TABLE(key, LIST) PUT("],\"" key "\":["), first = 1; LIST(NAME)
    TABLE("ops", OPS)
    TABLE("copy_kinds", COPY_KINDS)
    TABLE("memory_kinds", MEM_KINDS)
    TABLE("sync_kinds", SYNC_KINDS)
    PUT("],\"flags\":{\"async\":%u,\"captured\":%u,\"replayed\":%u,\"ptds\":%u}}", F_ASYNC, F_CAPTURED, F_REPLAYED,
        F_PTDS);
    if (n < cap) write_block(HEAD_MAGIC, json, n);
}

/* Open this process's file (first record, or after fork); O_NOFOLLOW: never write through a link. */
static int open_file(void) {
    char path[3200];
    snprintf(path, sizeof path, "%s/interpose.%d.ipraw", g_dir, (int)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) return -1;
    g_fd = fd;
    g_fd_pid = getpid();
    write_header();
    return 0;
}

/* Append a ring's pending records; the caller holds b->lock. */
static void drain_ring(struct tbuf *b) {
    uint32_t tail = b->tail, head = __atomic_load_n(&b->head, __ATOMIC_ACQUIRE);
    if (head == tail) return;
    uint32_t from = tail % RING, n = head - tail;
    held_lock(&g_file_lock);
    /* the stacks these records name, first: each was queued before its record was published (head) */
    stk_flush(g_fd);
    if (from + n <= RING) {
        write_block(REC_MAGIC, &b->recs[from], n * sizeof(struct ip_rec));
    } else {
        uint32_t first = RING - from;
        write_block(REC_MAGIC, &b->recs[from], first * sizeof(struct ip_rec));
        write_block(REC_MAGIC, &b->recs[0], (n - first) * sizeof(struct ip_rec));
    }
    held_unlock(&g_file_lock);
    __atomic_store_n(&b->tail, head, __ATOMIC_RELEASE);
}

static void write_stats(void) {
    char json[1024];
    int n = snprintf(json, sizeof json,
                     "{\"records\":%llu,\"lost\":%llu,\"unmatched_symbols\":%llu,\"unmatched_names\":\"%s\","
                     "\"pointer_queries\":%llu,\"graph_crossings\":%llu}",
                     (unsigned long long)g_records, (unsigned long long)g_lost, (unsigned long long)g_unmatched,
                     g_unmatched_names, (unsigned long long)g_attr_queries, (unsigned long long)g_graph_nodes);
    held_lock(&g_file_lock);
    if (n > 0 && (size_t)n < sizeof json) write_block(STAT_MAGIC, json, (size_t)n);
    held_unlock(&g_file_lock);
}

static void flush_all(int final) {
    for (struct tbuf *b = g_bufs; b; b = b->next) {
        held_lock(&b->lock);
        drain_ring(b);
        held_unlock(&b->lock);
    }
    if (final && g_fd >= 0) write_stats();
}

static void *flusher(void *arg) {
    (void)arg;
    for (;;) {
        struct timespec ts = {g_flush_ns / 1000000000L, g_flush_ns % 1000000000L};
        nanosleep(&ts, NULL);
        flush_all(0);
    }
    return NULL;
}

/* A thread that ends hands its ring back (flushed) for the next new thread. */
static void thread_gone(void *p) {
    struct tbuf *b = (struct tbuf *)p;
    held_lock(&b->lock);
    drain_ring(b);
    held_unlock(&b->lock);
    __atomic_store_n(&b->state, 0, __ATOMIC_RELEASE);
}

/* The slow path of a thread's first record: a ring (reused or new), the file, the flusher. */
static struct tbuf *thread_ring(void) {
    if (g_fd < 0) {
        held_lock(&g_file_lock);
        int bad = g_fd < 0 && open_file() != 0;
        held_unlock(&g_file_lock);
        if (bad) {
            g_on = 0;
            return NULL;
        }
    }
    struct tbuf *b;
    for (b = g_bufs; b; b = b->next) {
        int free_ = 0;
        if (__atomic_compare_exchange_n(&b->state, &free_, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) break;
    }
    if (!b) {
        b = (struct tbuf *)calloc(1, sizeof *b);
        if (!b) return NULL;
        b->state = 1;
        pthread_mutex_init(&b->lock, NULL);
        struct tbuf *old;
        do {
            old = g_bufs;
            b->next = old;
        } while (!__atomic_compare_exchange_n(&g_bufs, &old, b, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED));
    }
    pthread_setspecific(g_key, b);
    int none = 0;
    if (__atomic_compare_exchange_n(&g_flusher, &none, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&th, &attr, flusher, NULL) != 0) g_flusher = 0;
        pthread_attr_destroy(&attr);
    }
    return b;
}

/* The hot path: copy the record into this thread's ring; lock-free unless the ring is full. */
static void commit(struct ip_rec *r) {
    struct tbuf *b = t_buf;
    if (!b) {
        b = t_buf = thread_ring();
        if (!b) {
            __sync_fetch_and_add(&g_lost, 1);
            return;
        }
    }
    if (!t_tid) t_tid = (uint32_t)syscall(SYS_gettid);
    r->tid = t_tid;
    uint32_t head = b->head;
    if (head - __atomic_load_n(&b->tail, __ATOMIC_ACQUIRE) >= RING) {
        held_lock(&b->lock);
        drain_ring(b);
        held_unlock(&b->lock);
    }
    b->recs[head % RING] = *r;
    __atomic_store_n(&b->head, head + 1, __ATOMIC_RELEASE);
    g_records++; /* a count for health only: not worth a locked add on the hot path */
}

/* ---- memory kinds, cached per allocation ----------------------------------------------------------- */
#define RANGES 65536
struct range {
    uint64_t start, end;
    uint32_t kind;
};
static struct range g_ranges[RANGES];
static volatile uint32_t g_nranges;
static volatile uint32_t g_rseq; /* odd while a writer changes the table */
static pthread_mutex_t g_range_lock = PTHREAD_MUTEX_INITIALIZER;
#define PAGES 4096
static volatile uint64_t g_pageable[PAGES]; /* page number + 1 of pointers found pageable */

/* The first of the n ranges whose start is above `key` (or at it too, when `or_at`). */
static uint32_t range_after(uint64_t key, uint32_t n, int or_at) {
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        uint64_t s = g_ranges[mid].start;
        if (s < key || (!or_at && s == key)) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static int range_lookup(uint64_t p) {
    for (;;) {
        uint32_t s = __atomic_load_n(&g_rseq, __ATOMIC_ACQUIRE);
        if (s & 1) continue;
        uint32_t n = g_nranges;
        if (n > RANGES) n = RANGES;
        uint32_t lo = range_after(p, n, 0);
        int kind = -1;
        if (lo > 0 && p < g_ranges[lo - 1].end) kind = (int)g_ranges[lo - 1].kind;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&g_rseq, __ATOMIC_RELAXED) == s) return kind;
    }
}

static void range_change(uint64_t start, uint64_t size, int kind) { /* kind < 0: remove */
    held_lock(&g_range_lock);
    __atomic_store_n(&g_rseq, g_rseq + 1, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    uint32_t n = g_nranges, lo = range_after(start, n, 1);
    int same = lo < n && g_ranges[lo].start == start;
    if (kind < 0) {
        if (same) {
            memmove(&g_ranges[lo], &g_ranges[lo + 1], (n - lo - 1) * sizeof(struct range));
            g_nranges = n - 1;
        }
    } else if (same) {
        g_ranges[lo].end = start + size;
        g_ranges[lo].kind = (uint32_t)kind;
    } else if (n < RANGES) {
        memmove(&g_ranges[lo + 1], &g_ranges[lo], (n - lo) * sizeof(struct range));
        g_ranges[lo].start = start;
        g_ranges[lo].end = start + size;
        g_ranges[lo].kind = (uint32_t)kind;
        g_nranges = n + 1;
    }
    __atomic_store_n(&g_rseq, g_rseq + 1, __ATOMIC_RELEASE);
    held_unlock(&g_range_lock);
    if (kind == MK_pinned) memset((void *)g_pageable, 0, sizeof g_pageable); /* a page may have been pinned */
}

static void helpers_ready(void);

/* The memory kind of a pointer: the range table, the pageable page cache, else one driver query whose
 * answer is cached for the whole allocation. */
static int kind_of(uint64_t p) {
    if (!p) return MK_unknown;
    int k = range_lookup(p);
    if (k >= 0) return k;
    uint64_t page = p >> 12;
    if (g_pageable[page % PAGES] == page + 1) return MK_pageable;
    helpers_ready();
    if (!H.ptrattrs) return MK_unknown;
    int attrs[4] = {2 /* MEMORY_TYPE */, 8 /* IS_MANAGED */, 11 /* RANGE_START_ADDR */, 12 /* RANGE_SIZE */};
    unsigned int memtype = 0;
    int managed = 0;
    uint64_t start = 0;
    size_t size = 0;
    void *data[4] = {&memtype, &managed, &start, &size};
    __sync_fetch_and_add(&g_attr_queries, 1);
    CUresult rc = H.ptrattrs(4, attrs, data, (CUdeviceptr)p);
    if (rc != 0 || memtype == 0) {
        g_pageable[page % PAGES] = page + 1;
        return MK_pageable;
    }
    k = managed ? MK_managed : memtype == 1 ? MK_pinned : memtype == 2 ? MK_device : memtype == 3 ? MK_array : MK_unknown;
    if (size > 0) range_change(start, size, k);
    return k;
}

static int is_hostside(int k) { return k == MK_pageable || k == MK_pinned; }

static int direction(int src, int dst) {
    int sh = is_hostside(src), dh = is_hostside(dst);
    if (src == MK_unknown || dst == MK_unknown) return CK_unknown;
    return sh && dh ? CK_HtoH : sh ? CK_HtoD : dh ? CK_DtoH : CK_DtoD;
}

/* CUmemorytype of a 2D/3D copy side (1 host, 2 device, 3 array, 4 unified) -> a memory kind */
static int side_kind(int memtype, const void *host, CUdeviceptr dev) {
    switch (memtype) {
    case 1: return kind_of((uint64_t)(uintptr_t)host) == MK_pinned ? MK_pinned : MK_pageable;
    case 2: return MK_device;
    case 3: return MK_array;
    case 4: return kind_of(dev);
    default: return MK_unknown;
    }
}

static void resolve_helpers_in(void *lib) {
    H.ptrattrs = (ptrattrs_fn)real_dlsym(lib, "cuPointerGetAttributes");
    H.iscap = (iscap_fn)real_dlsym(lib, "cuStreamIsCapturing");
    H.getnodes = (getnodes_fn)real_dlsym(lib, "cuGraphGetNodes");
    H.nodetype = (nodetype_fn)real_dlsym(lib, "cuGraphNodeGetType");
    H.cpyparams = (cpyparams_fn)real_dlsym(lib, "cuGraphMemcpyNodeGetParams");
    H.setparams = (setparams_fn)real_dlsym(lib, "cuGraphMemsetNodeGetParams");
    H.childgraph = (childgraph_fn)real_dlsym(lib, "cuGraphChildGraphNodeGetGraph");
}

static void helpers_ready(void) {
    void *lib = g_libcuda ? g_libcuda : RTLD_NEXT;
    if (H.from == lib) return;
    resolve_helpers_in(lib);
    H.from = lib;
}

/* ---- graphs: the crossings each instantiated graph replays ----------------------------------------- */
struct crossing {
    uint64_t bytes;
    uint8_t op, copy_kind, src_kind, dst_kind;
};
struct graph_info {
    CUgraphExec exec;
    uint32_t n, cap;
    struct crossing items[];
};
#define GRAPHS 8192
static struct graph_info *volatile g_graphs[GRAPHS]; /* open addressing on the exec handle */
static pthread_mutex_t g_graph_lock = PTHREAD_MUTEX_INITIALIZER;

static inline uint32_t ghash(CUgraphExec e) { return (uint32_t)(((uintptr_t)e >> 4) * 2654435761u) % GRAPHS; }

static struct graph_info *graph_find(CUgraphExec e) {
    uint32_t h = ghash(e);
    for (uint32_t i = 0; i < GRAPHS; i++) {
        struct graph_info *g = __atomic_load_n(&g_graphs[(h + i) % GRAPHS], __ATOMIC_ACQUIRE);
        if (!g) return NULL;
        if (g->exec == e) return g;
    }
    return NULL;
}

static void graph_store(CUgraphExec e, struct graph_info *info) {
    held_lock(&g_graph_lock);
    uint32_t h = ghash(e);
    for (uint32_t i = 0; i < GRAPHS; i++) {
        struct graph_info *g = g_graphs[(h + i) % GRAPHS];
        if (!g || g->exec == e) { /* a reused handle gets its new graph; the old info is leaked, not freed */
            __atomic_store_n(&g_graphs[(h + i) % GRAPHS], info, __ATOMIC_RELEASE);
            break;
        }
    }
    held_unlock(&g_graph_lock);
}

static struct graph_info *walk(CUgraph graph, struct graph_info *info, int depth) {
    if (!H.getnodes || !H.nodetype || depth > 8) return info;
    size_t n = 0;
    if (H.getnodes(graph, NULL, &n) != 0 || n == 0) return info;
    CUgraphNode *nodes = (CUgraphNode *)calloc(n, sizeof *nodes);
    if (!nodes || H.getnodes(graph, nodes, &n) != 0) {
        free(nodes);
        return info;
    }
    for (size_t i = 0; i < n; i++) {
        int type = -1;
        if (H.nodetype(nodes[i], &type) != 0) continue;
        struct crossing c = {0, 0, 0, 0, 0};
        if (type == 1 && H.cpyparams) { /* memcpy node */
            CUDA_MEMCPY3D p;
            memset(&p, 0, sizeof p);
            if (H.cpyparams(nodes[i], &p) != 0) continue;
            c.op = OP_copy;
            c.bytes = (uint64_t)p.WidthInBytes * (p.Height ? p.Height : 1) * (p.Depth ? p.Depth : 1);
            c.src_kind = (uint8_t)side_kind(p.srcMemoryType, p.srcHost, p.srcDevice);
            c.dst_kind = (uint8_t)side_kind(p.dstMemoryType, p.dstHost, p.dstDevice);
            c.copy_kind = (uint8_t)direction(c.src_kind, c.dst_kind);
        } else if (type == 2 && H.setparams) { /* memset node */
            CUDA_MEMSET_NODE_PARAMS p;
            memset(&p, 0, sizeof p);
            if (H.setparams(nodes[i], &p) != 0) continue;
            c.op = OP_memset;
            c.bytes = (uint64_t)p.elementSize * p.width * (p.height ? p.height : 1);
            c.dst_kind = (uint8_t)kind_of(p.dst);
        } else if (type == 4 && H.childgraph) { /* child graph */
            CUgraph child = NULL;
            if (H.childgraph(nodes[i], &child) == 0 && child) info = walk(child, info, depth + 1);
            continue;
        } else {
            continue;
        }
        if (!info || info->n == info->cap) {
            uint32_t cap = info ? info->cap * 2 : 16;
            struct graph_info *bigger = (struct graph_info *)realloc(info, sizeof *info + cap * sizeof(struct crossing));
            if (!bigger) break;
            if (!info) bigger->n = 0;
            bigger->cap = cap;
            info = bigger;
        }
        info->items[info->n++] = c;
    }
    free(nodes);
    return info;
}

static void graph_instantiated(CUgraphExec exec, CUgraph graph) {
    helpers_ready();
    struct graph_info *info = walk(graph, NULL, 0);
    if (!info) {
        info = (struct graph_info *)calloc(1, sizeof *info);
        if (!info) return;
    }
    info->exec = exec;
    __sync_fetch_and_add(&g_graph_nodes, info->n);
    graph_store(exec, info);
}

static void graph_launched(struct ip_rec *r, CUgraphExec exec) {
    struct graph_info *g = graph_find(exec);
    if (!g) return;
    uint64_t total = 0;
    for (uint32_t i = 0; i < g->n; i++) total += g->items[i].bytes;
    r->bytes = total;
    r->stack_id = stk_capture(); /* the launch's stack, and so its replayed crossings' */
    commit(r);
    for (uint32_t i = 0; i < g->n; i++) {
        struct ip_rec c = *r;
        c.op = g->items[i].op;
        c.bytes = g->items[i].bytes;
        c.copy_kind = g->items[i].copy_kind;
        c.src_kind = g->items[i].src_kind;
        c.dst_kind = g->items[i].dst_kind;
        c.flags = F_REPLAYED | F_ASYNC;
        commit(&c);
    }
    r->op = OP_other; /* already committed */
}

/* ---- the wrappers ---------------------------------------------------------------------------------- */
static inline int captured(CUstream s) {
    if (!g_capturing) return 0;
    helpers_ready();
    int status = 0;
    return H.iscap && H.iscap(s, &status) == 0 && status == 1 /* CU_STREAM_CAPTURE_STATUS_ACTIVE */;
}

static CUresult not_found(void) { return CUDA_ERROR_NOT_FOUND; }

/* ---- a chained callback user: the bridge emulator acting on the interposed calls -----------------
 * cct_ip_subscribe/enable_callback/unsubscribe stand in for CUPTI's (callback ids: this library's
 * function indices, domain 1 = driver), so a tool written against CUPTI callbacks runs here without
 * CUPTI. Its callback runs inside the recorded call (what it injects is part of the call's time), with
 * the call's leading arguments laid out as CUPTI's parameter structs have them (each 8 bytes here). */
static callback_fn volatile g_chain;
static void *volatile g_chain_ud;
static volatile uint8_t g_chain_want[N_FUNCS];
static __thread uint32_t t_corr;

static void chain_call(int site, int fn, const uint64_t *params, CUresult *rc) {
    callback_fn cb = g_chain;
    if (!cb) return;
    CallbackData d;
    memset(&d, 0, sizeof d);
    d.callbackSite = site;
    d.functionName = g_fns[fn].name;
    d.functionParams = params;
    d.functionReturnValue = rc;
    d.correlationId = site == 0 ? ++t_corr : t_corr;
    cb(g_chain_ud, 1, (uint32_t)fn, &d);
}

int cct_ip_subscribe(void **subscriber, callback_fn cb, void *userdata) {
    g_chain_ud = userdata;
    g_chain = cb;
    *subscriber = (void *)&g_chain;
    return 0;
}

int cct_ip_enable_callback(uint32_t enable, void *subscriber, int domain, uint32_t cbid) {
    (void)subscriber;
    if (domain != 1 || cbid >= N_FUNCS) return 1; /* CUPTI_ERROR_INVALID_PARAMETER */
    g_chain_want[cbid] = enable ? 1 : 0;
    return 0;
}

int cct_ip_unsubscribe(void *subscriber) {
    (void)subscriber;
    g_chain = NULL;
    memset((void *)g_chain_want, 0, sizeof g_chain_want);
    return 0;
}

/* The name behind a callback id (a function index), NULL past the last. */
const char *cct_ip_function(int i) { return i >= 0 && i < N_FUNCS ? g_fns[i].name : NULL; }

#define CHAIN(a, b, c, d)                                                                                      \
    (chained = g_chain && g_chain_want[r.fn], cbp[0] = (uint64_t)(uintptr_t)(a), cbp[1] = (uint64_t)(uintptr_t)(b), \
     cbp[2] = (uint64_t)(uintptr_t)(c), cbp[3] = (uint64_t)(uintptr_t)(d))

static void *resolve(int i);

/* The frame of every wrapper: find the real entry point, time it, fill the record before (PRE) and
 * after (POST) the call, commit. Pointer-kind lookups happen after the timed window. */
#define WRAP(sym, since, pt, ftype, params, args, PRE, POST)                                                   \
    static __typeof__(ftype) volatile real_##sym##_##since;                                                    \
    CUresult sym params {                                                                                      \
        __typeof__(ftype) real = real_##sym##_##since;                                                                     \
        if (!real) {                                                                                           \
            real = (ftype)resolve(FN_##sym##_##since);                                                         \
            if (!real) return not_found();                                                                     \
        }                                                                                                      \
        if (!g_on) return real args;                                                                           \
        struct ip_rec r;                                                                                       \
        memset(&r, 0, sizeof r);                                                                               \
        r.fn = FN_##sym##_##since;                                                                             \
        r.flags = pt ? F_PTDS : 0;                                                                             \
        uint64_t cbp[4] = {0, 0, 0, 0}; /* the arguments a chained callback user reads (bridge emulator) */     \
        int chained = 0;                                                                                       \
        PRE;                                                                                                   \
        r.start = now_ns();                                                                                    \
        if (chained) chain_call(0, r.fn, cbp, NULL);                                                           \
        CUresult rc = real args;                                                                               \
        if (chained) chain_call(1, r.fn, cbp, &rc);                                                            \
        r.end = now_ns();                                                                                      \
        r.ret = rc;                                                                                            \
        POST;                                                                                                  \
        if (r.op != OP_other || r.sync_kind) {                                                                 \
            r.stack_id = stk_capture(); /* after the end time: the capture is not part of the call */           \
            commit(&r);                                                                                        \
        }                                                                                                      \
        return rc;                                                                                             \
    }

#define NOTHING (void)0
#define COPY_PRE(dst, src, n, s, ck, async)                                                                    \
    r.op = OP_copy, r.ptr = (uint64_t)(dst), r.aux = (uint64_t)(uintptr_t)(src), r.bytes = (n),                \
    r.stream = (uint64_t)(uintptr_t)(s), r.copy_kind = (ck), r.flags |= (async) ? F_ASYNC : 0,                 \
    CHAIN(dst, src, n, s);                                                                                     \
    if ((async) && captured(s)) r.flags |= F_CAPTURED
#define KINDS_POST(sk, dk) r.src_kind = (uint8_t)(sk), r.dst_kind = (uint8_t)(dk)

#define DEF_HTOD(sym, since, pt)                                                                               \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr, const void *, size_t),                                      \
         (CUdeviceptr dst, const void *src, size_t n), (dst, src, n), COPY_PRE(dst, src, n, 0, CK_HtoD, 0),    \
         KINDS_POST(kind_of((uint64_t)(uintptr_t)src), MK_device))
#define DEF_HTODA(sym, since, pt)                                                                              \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr, const void *, size_t, CUstream),                            \
         (CUdeviceptr dst, const void *src, size_t n, CUstream s), (dst, src, n, s),                           \
         COPY_PRE(dst, src, n, s, CK_HtoD, 1), KINDS_POST(kind_of((uint64_t)(uintptr_t)src), MK_device))
#define DEF_DTOH(sym, since, pt)                                                                               \
    WRAP(sym, since, pt, CUresult (*)(void *, CUdeviceptr, size_t), (void *dst, CUdeviceptr src, size_t n),    \
         (dst, src, n), COPY_PRE((uintptr_t)dst, src, n, 0, CK_DtoH, 0),                                       \
         KINDS_POST(MK_device, kind_of((uint64_t)(uintptr_t)dst)))
#define DEF_DTOHA(sym, since, pt)                                                                              \
    WRAP(sym, since, pt, CUresult (*)(void *, CUdeviceptr, size_t, CUstream),                                  \
         (void *dst, CUdeviceptr src, size_t n, CUstream s), (dst, src, n, s),                                 \
         COPY_PRE((uintptr_t)dst, src, n, s, CK_DtoH, 1), KINDS_POST(MK_device, kind_of((uint64_t)(uintptr_t)dst)))
#define DEF_DTOD(sym, since, pt)                                                                               \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr, CUdeviceptr, size_t), (CUdeviceptr dst, CUdeviceptr src, size_t n), \
         (dst, src, n), COPY_PRE(dst, src, n, 0, CK_DtoD, 0), KINDS_POST(MK_device, MK_device))
#define DEF_DTODA(sym, since, pt)                                                                              \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr, CUdeviceptr, size_t, CUstream),                             \
         (CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s), (dst, src, n, s),                           \
         COPY_PRE(dst, src, n, s, CK_DtoD, 1), KINDS_POST(MK_device, MK_device))
#define UNI_POST                                                                                               \
    do {                                                                                                       \
        int sk_ = kind_of(r.aux), dk_ = kind_of(r.ptr);                                                        \
        KINDS_POST(sk_, dk_);                                                                                  \
        r.copy_kind = (uint8_t)direction(sk_, dk_);                                                            \
    } while (0)
#define DEF_UNI(sym, since, pt)                                                                                \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr, CUdeviceptr, size_t), (CUdeviceptr dst, CUdeviceptr src, size_t n), \
         (dst, src, n), COPY_PRE(dst, src, n, 0, CK_unknown, 0), UNI_POST)
#define DEF_UNIA(sym, since, pt)                                                                               \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr, CUdeviceptr, size_t, CUstream),                             \
         (CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s), (dst, src, n, s),                           \
         COPY_PRE(dst, src, n, s, CK_unknown, 1), UNI_POST)
#define DEF_PEER(sym, since, pt)                                                                               \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, size_t),                 \
         (CUdeviceptr dst, CUcontext dc, CUdeviceptr src, CUcontext sc, size_t n), (dst, dc, src, sc, n),      \
         { COPY_PRE(dst, src, n, 0, CK_PtoP, 0); r.op = OP_p2p; }, KINDS_POST(MK_device, MK_device))
#define DEF_PEERA(sym, since, pt)                                                                              \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, size_t, CUstream),       \
         (CUdeviceptr dst, CUcontext dc, CUdeviceptr src, CUcontext sc, size_t n, CUstream s),                 \
         (dst, dc, src, sc, n, s), { COPY_PRE(dst, src, n, s, CK_PtoP, 1); r.op = OP_p2p; },                   \
         KINDS_POST(MK_device, MK_device))
#define MD_POST(p)                                                                                             \
    do {                                                                                                       \
        int sk_ = side_kind((p)->srcMemoryType, (p)->srcHost, (p)->srcDevice);                                 \
        int dk_ = side_kind((p)->dstMemoryType, (p)->dstHost, (p)->dstDevice);                                 \
        KINDS_POST(sk_, dk_);                                                                                  \
        r.copy_kind = (uint8_t)direction(sk_, dk_);                                                            \
    } while (0)
#define MD_PTR(p) ((p)->dstMemoryType == 1 ? (uint64_t)(uintptr_t)(p)->dstHost : (uint64_t)(p)->dstDevice)
#define MD_SRC(p) ((p)->srcMemoryType == 1 ? (uint64_t)(uintptr_t)(p)->srcHost : (uint64_t)(p)->srcDevice)
#define DEF_M2D(sym, since, pt)                                                                                \
    WRAP(sym, since, pt, CUresult (*)(const CUDA_MEMCPY2D *), (const CUDA_MEMCPY2D *p), (p),                   \
         COPY_PRE(MD_PTR(p), MD_SRC(p), (uint64_t)p->WidthInBytes * p->Height, 0, CK_unknown, 0), MD_POST(p))
#define DEF_M2DA(sym, since, pt)                                                                               \
    WRAP(sym, since, pt, CUresult (*)(const CUDA_MEMCPY2D *, CUstream), (const CUDA_MEMCPY2D *p, CUstream s),  \
         (p, s), COPY_PRE(MD_PTR(p), MD_SRC(p), (uint64_t)p->WidthInBytes * p->Height, s, CK_unknown, 1),      \
         MD_POST(p))
#define BYTES3D(p) ((uint64_t)(p)->WidthInBytes * ((p)->Height ? (p)->Height : 1) * ((p)->Depth ? (p)->Depth : 1))
#define DEF_M3D(sym, since, pt)                                                                                \
    WRAP(sym, since, pt, CUresult (*)(const CUDA_MEMCPY3D *), (const CUDA_MEMCPY3D *p), (p),                   \
         COPY_PRE(MD_PTR(p), MD_SRC(p), BYTES3D(p), 0, CK_unknown, 0), MD_POST(p))
#define DEF_M3DA(sym, since, pt)                                                                               \
    WRAP(sym, since, pt, CUresult (*)(const CUDA_MEMCPY3D *, CUstream), (const CUDA_MEMCPY3D *p, CUstream s),  \
         (p, s), COPY_PRE(MD_PTR(p), MD_SRC(p), BYTES3D(p), s, CK_unknown, 1), MD_POST(p))
#define SET_PRE(d, n, s, async)                                                                                \
    r.op = OP_memset, r.ptr = (d), r.bytes = (n), r.stream = (uint64_t)(uintptr_t)(s),                         \
    r.flags |= (async) ? F_ASYNC : 0;                                                                          \
    if ((async) && captured(s)) r.flags |= F_CAPTURED
#define SET_POST r.dst_kind = (uint8_t)kind_of(r.ptr)
#define DEF_SETN(sym, since, pt, T, size)                                                                      \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr, T, size_t), (CUdeviceptr d, T v, size_t n), (d, v, n),      \
         SET_PRE(d, (uint64_t)n * size, 0, 0), SET_POST)
#define DEF_SETNA(sym, since, pt, T, size)                                                                     \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr, T, size_t, CUstream), (CUdeviceptr d, T v, size_t n, CUstream s), \
         (d, v, n, s), SET_PRE(d, (uint64_t)n * size, s, 1), SET_POST)
#define DEF_SET2D(sym, since, pt, T, size)                                                                     \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr, size_t, T, size_t, size_t),                                 \
         (CUdeviceptr d, size_t pitch, T v, size_t w, size_t h), (d, pitch, v, w, h),                          \
         SET_PRE(d, (uint64_t)w * h * size, 0, 0), SET_POST)
#define DEF_SET2DA(sym, since, pt, T, size)                                                                    \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr, size_t, T, size_t, size_t, CUstream),                       \
         (CUdeviceptr d, size_t pitch, T v, size_t w, size_t h, CUstream s), (d, pitch, v, w, h, s),           \
         SET_PRE(d, (uint64_t)w * h * size, s, 1), SET_POST)
#define DEF_SET8(sym, since, pt) DEF_SETN(sym, since, pt, unsigned char, 1)
#define DEF_SET16(sym, since, pt) DEF_SETN(sym, since, pt, unsigned short, 2)
#define DEF_SET32(sym, since, pt) DEF_SETN(sym, since, pt, unsigned int, 4)
#define DEF_SET8A(sym, since, pt) DEF_SETNA(sym, since, pt, unsigned char, 1)
#define DEF_SET16A(sym, since, pt) DEF_SETNA(sym, since, pt, unsigned short, 2)
#define DEF_SET32A(sym, since, pt) DEF_SETNA(sym, since, pt, unsigned int, 4)
#define DEF_SET2D8(sym, since, pt) DEF_SET2D(sym, since, pt, unsigned char, 1)
#define DEF_SET2D16(sym, since, pt) DEF_SET2D(sym, since, pt, unsigned short, 2)
#define DEF_SET2D32(sym, since, pt) DEF_SET2D(sym, since, pt, unsigned int, 4)
#define DEF_SET2D8A(sym, since, pt) DEF_SET2DA(sym, since, pt, unsigned char, 1)
#define DEF_SET2D16A(sym, since, pt) DEF_SET2DA(sym, since, pt, unsigned short, 2)
#define DEF_SET2D32A(sym, since, pt) DEF_SET2DA(sym, since, pt, unsigned int, 4)

#define ALLOC_POST(pp, n, kind)                                                                                \
    do {                                                                                                       \
        if (rc == 0 && (pp)) {                                                                                 \
            r.ptr = (uint64_t)(uintptr_t)*(pp);                                                                \
            range_change(r.ptr, (n), (kind));                                                                  \
        }                                                                                                      \
        r.dst_kind = (uint8_t)(kind);                                                                          \
    } while (0)
#define DEF_ALLOC(sym, since, pt)                                                                              \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr *, size_t), (CUdeviceptr * p, size_t n), (p, n),            \
         (r.op = OP_alloc, r.bytes = n), ALLOC_POST(p, n, MK_device))
#define DEF_ALLOCM(sym, since, pt)                                                                             \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr *, size_t, unsigned int),                                    \
         (CUdeviceptr * p, size_t n, unsigned int fl), (p, n, fl), (r.op = OP_alloc, r.bytes = n),             \
         ALLOC_POST(p, n, MK_managed))
#define DEF_ALLOCP(sym, since, pt)                                                                             \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr *, size_t *, size_t, size_t, unsigned int),                  \
         (CUdeviceptr * p, size_t * pitch, size_t w, size_t h, unsigned int e), (p, pitch, w, h, e),           \
         r.op = OP_alloc, {                                                                                    \
             r.bytes = (uint64_t)(rc == 0 && pitch ? *pitch : w) * h;                                          \
             ALLOC_POST(p, r.bytes, MK_device);                                                                \
         })
#define DEF_ALLOCA(sym, since, pt)                                                                             \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr *, size_t, CUstream), (CUdeviceptr * p, size_t n, CUstream s), \
         (p, n, s), (r.op = OP_alloc, r.bytes = n, r.stream = (uint64_t)(uintptr_t)s, r.flags |= F_ASYNC),     \
         ALLOC_POST(p, n, MK_device))
#define DEF_ALLOCPA(sym, since, pt)                                                                            \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr *, size_t, CUmemoryPool, CUstream),                          \
         (CUdeviceptr * p, size_t n, CUmemoryPool pool, CUstream s), (p, n, pool, s),                          \
         (r.op = OP_alloc, r.bytes = n, r.stream = (uint64_t)(uintptr_t)s, r.flags |= F_ASYNC),                \
         ALLOC_POST(p, n, MK_device))
#define DEF_HALLOC(sym, since, pt)                                                                             \
    WRAP(sym, since, pt, CUresult (*)(void **, size_t), (void **p, size_t n), (p, n),                          \
         (r.op = OP_alloc, r.bytes = n), ALLOC_POST(p, n, MK_pinned))
#define DEF_HOSTALLOC(sym, since, pt)                                                                          \
    WRAP(sym, since, pt, CUresult (*)(void **, size_t, unsigned int), (void **p, size_t n, unsigned int fl),   \
         (p, n, fl), (r.op = OP_alloc, r.bytes = n), ALLOC_POST(p, n, MK_pinned))
#define DEF_HOSTREG(sym, since, pt)                                                                            \
    WRAP(sym, since, pt, CUresult (*)(void *, size_t, unsigned int), (void *p, size_t n, unsigned int fl),     \
         (p, n, fl), (r.op = OP_alloc, r.bytes = n, r.ptr = (uint64_t)(uintptr_t)p, r.dst_kind = MK_pinned),          \
         if (rc == 0) range_change(r.ptr, n, MK_pinned))
#define FREE_PRE(p, kind) r.op = OP_free, r.ptr = (uint64_t)(uintptr_t)(p), r.dst_kind = (uint8_t)kind_of(r.ptr)
#define FREE_POST                                                                                              \
    if (rc == 0) range_change(r.ptr, 0, -1)
#define DEF_FREE(sym, since, pt)                                                                               \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr), (CUdeviceptr p), (p), FREE_PRE(p, MK_device), FREE_POST)
#define DEF_FREEA(sym, since, pt)                                                                              \
    WRAP(sym, since, pt, CUresult (*)(CUdeviceptr, CUstream), (CUdeviceptr p, CUstream s), (p, s),             \
         (FREE_PRE(p, MK_device), r.stream = (uint64_t)(uintptr_t)s, r.flags |= F_ASYNC), FREE_POST)
#define DEF_HFREE(sym, since, pt)                                                                              \
    WRAP(sym, since, pt, CUresult (*)(void *), (void *p), (p), FREE_PRE(p, MK_pinned), FREE_POST)
#define DEF_HUNREG(sym, since, pt)                                                                             \
    WRAP(sym, since, pt, CUresult (*)(void *), (void *p), (p), FREE_PRE(p, MK_pinned), FREE_POST)
#define DEF_SSYNC(sym, since, pt)                                                                              \
    WRAP(sym, since, pt, CUresult (*)(CUstream), (CUstream s), (s),                                            \
         (r.op = OP_sync, r.sync_kind = SK_stream, r.stream = (uint64_t)(uintptr_t)s), NOTHING)
#define DEF_ESYNC(sym, since, pt)                                                                              \
    WRAP(sym, since, pt, CUresult (*)(CUevent), (CUevent e), (e),                                              \
         (r.op = OP_sync, r.sync_kind = SK_event, r.aux = (uint64_t)(uintptr_t)e), NOTHING)
#define DEF_CSYNC(sym, since, pt)                                                                              \
    WRAP(sym, since, pt, CUresult (*)(void), (void), (), (r.op = OP_sync, r.sync_kind = SK_context), NOTHING)
/* CUDA 13's cuCtxSynchronize_v2 names the context (NULL: the current one); the runtime asks for it */
#define DEF_CSYNC2(sym, since, pt)                                                                             \
    WRAP(sym, since, pt, CUresult (*)(CUcontext), (CUcontext c), (c),                                          \
         (r.op = OP_sync, r.sync_kind = SK_context, r.aux = (uint64_t)(uintptr_t)c), NOTHING)
#define DEF_SWAIT(sym, since, pt)                                                                              \
    WRAP(sym, since, pt, CUresult (*)(CUstream, CUevent, unsigned int), (CUstream s, CUevent e, unsigned int fl), \
         (s, e, fl),                                                                                           \
         (r.op = OP_sync, r.sync_kind = SK_stream_wait_event, r.stream = (uint64_t)(uintptr_t)s,               \
          r.aux = (uint64_t)(uintptr_t)e),                                                                     \
         NOTHING)
#define INST_POST(pe, g)                                                                                       \
    do {                                                                                                       \
        r.op = OP_graph;                                                                                       \
        if (rc == 0 && (pe)) {                                                                                 \
            r.ptr = (uint64_t)(uintptr_t)*(pe);                                                                \
            graph_instantiated(*(pe), g);                                                                      \
        }                                                                                                      \
    } while (0)
#define DEF_GINST(sym, since, pt)                                                                              \
    WRAP(sym, since, pt, CUresult (*)(CUgraphExec *, CUgraph, unsigned long long),                             \
         (CUgraphExec * e, CUgraph g, unsigned long long fl), (e, g, fl), CHAIN(e, g, fl, 0), INST_POST(e, g))
#define DEF_GINST5(sym, since, pt)                                                                             \
    WRAP(sym, since, pt, CUresult (*)(CUgraphExec *, CUgraph, CUgraphNode *, char *, size_t),                  \
         (CUgraphExec * e, CUgraph g, CUgraphNode * err, char *log, size_t n), (e, g, err, log, n),            \
         CHAIN(e, g, err, log), INST_POST(e, g))
#define DEF_GINSTP(sym, since, pt)                                                                             \
    WRAP(sym, since, pt, CUresult (*)(CUgraphExec *, CUgraph, void *), (CUgraphExec * e, CUgraph g, void *prm), \
         (e, g, prm), CHAIN(e, g, prm, 0), INST_POST(e, g))
#define DEF_GLAUNCH(sym, since, pt)                                                                            \
    WRAP(sym, since, pt, CUresult (*)(CUgraphExec, CUstream), (CUgraphExec e, CUstream s), (e, s),             \
         (r.op = OP_graph_launch, r.ptr = (uint64_t)(uintptr_t)e, r.stream = (uint64_t)(uintptr_t)s,           \
          r.flags |= F_ASYNC, CHAIN(e, s, 0, 0)),                                                              \
         graph_launched(&r, e))
#define DEF_GEXECDESTROY(sym, since, pt)                                                                       \
    WRAP(sym, since, pt, CUresult (*)(CUgraphExec), (CUgraphExec e), (e), CHAIN(e, 0, 0, 0), NOTHING)
#define DEF_CAPBEGIN(sym, since, pt)                                                                           \
    WRAP(sym, since, pt, CUresult (*)(CUstream, int), (CUstream s, int mode), (s, mode),                       \
         (r.op = OP_graph, r.stream = (uint64_t)(uintptr_t)s, CHAIN(s, mode, 0, 0)),                          \
         if (rc == 0) __sync_fetch_and_add(&g_capturing, 1))
#define DEF_CAPEND(sym, since, pt)                                                                             \
    WRAP(sym, since, pt, CUresult (*)(CUstream, CUgraph *), (CUstream s, CUgraph * g), (s, g),                 \
         (r.op = OP_graph, r.stream = (uint64_t)(uintptr_t)s, CHAIN(s, g, 0, 0)),                             \
         if (g_capturing > 0) __sync_fetch_and_sub(&g_capturing, 1))
#define LAUNCH_PRE(call, s, f)                                                                                 \
    {                                                                                                          \
        if (!g_launches) return call;                                                                          \
        (r.op = OP_launch, r.stream = (uint64_t)(uintptr_t)(s), r.ptr = (uint64_t)(uintptr_t)(f), r.flags |= F_ASYNC); \
    }
#define DEF_LAUNCH(sym, since, pt)                                                                             \
    WRAP(sym, since, pt,                                                                                       \
         CUresult (*)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream, void **, \
                      void **),                                                                                \
         (void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned sh,   \
          CUstream s, void **prm, void **ex),                                                                  \
         (f, gx, gy, gz, bx, by, bz, sh, s, prm, ex),                                                          \
         LAUNCH_PRE(real(f, gx, gy, gz, bx, by, bz, sh, s, prm, ex), s, f), NOTHING)
/* CUlaunchConfig: seven unsigned ints, then the stream at byte 32 */
#define DEF_LAUNCHEX(sym, since, pt)                                                                           \
    WRAP(sym, since, pt, CUresult (*)(const void *, void *, void **, void **),                                 \
         (const void *cfg, void *f, void **prm, void **ex), (cfg, f, prm, ex),                                 \
         LAUNCH_PRE(real(cfg, f, prm, ex), cfg ? *(void *const *)((const char *)cfg + 32) : NULL, f), NOTHING)

/* cuGetProcAddress(_v2): the real answer, swapped for this library's wrapper of the same entry point */
static void *wrap_answer(const char *symbol, void *p, int version, uint64_t flags);
#define DEF_GPA(sym, since, pt)                                                                                \
    static CUresult (*volatile real_##sym##_##since)(const char *, void **, int, uint64_t);                    \
    CUresult sym(const char *symbol, void **pfn, int version, uint64_t flags) {                                \
        CUresult (*real)(const char *, void **, int, uint64_t) = real_##sym##_##since;                         \
        if (!real) {                                                                                           \
            real = (CUresult(*)(const char *, void **, int, uint64_t))resolve(FN_##sym##_##since);             \
            if (!real) return not_found();                                                                     \
        }                                                                                                      \
        CUresult rc = real(symbol, pfn, version, flags);                                                       \
        if (rc == 0 && pfn && *pfn && symbol) *pfn = wrap_answer(symbol, *pfn, version, flags);                \
        return rc;                                                                                             \
    }
#define DEF_GPA2(sym, since, pt)                                                                               \
    static CUresult (*volatile real_##sym##_##since)(const char *, void **, int, uint64_t, void *);            \
    CUresult sym(const char *symbol, void **pfn, int version, uint64_t flags, void *status) {                  \
        CUresult (*real)(const char *, void **, int, uint64_t, void *) = real_##sym##_##since;                 \
        if (!real) {                                                                                           \
            real = (CUresult(*)(const char *, void **, int, uint64_t, void *))resolve(FN_##sym##_##since);     \
            if (!real) return not_found();                                                                     \
        }                                                                                                      \
        CUresult rc = real(symbol, pfn, version, flags, status);                                               \
        if (rc == 0 && pfn && *pfn && symbol) *pfn = wrap_answer(symbol, *pfn, version, flags);                \
        return rc;                                                                                             \
    }

/* An alias line (the same exported name under another base) defines no second function. */
#define DEFINE(fam, sym, base, since, pt) DEFINE_##fam(sym, since, pt)
#define DEFINE_GINST(sym, since, pt) DEFINE_GINST_##since(sym, since, pt)
#define DEFINE_GINST_11040(sym, since, pt) DEF_GINST(sym, since, pt)
#define DEFINE_GINST_12000(sym, since, pt)
#define DEFINE_HTOD DEF_HTOD
#define DEFINE_HTODA DEF_HTODA
#define DEFINE_DTOH DEF_DTOH
#define DEFINE_DTOHA DEF_DTOHA
#define DEFINE_DTOD DEF_DTOD
#define DEFINE_DTODA DEF_DTODA
#define DEFINE_UNI DEF_UNI
#define DEFINE_UNIA DEF_UNIA
#define DEFINE_PEER DEF_PEER
#define DEFINE_PEERA DEF_PEERA
#define DEFINE_M2D DEF_M2D
#define DEFINE_M2DA DEF_M2DA
#define DEFINE_M3D DEF_M3D
#define DEFINE_M3DA DEF_M3DA
#define DEFINE_SET8 DEF_SET8
#define DEFINE_SET16 DEF_SET16
#define DEFINE_SET32 DEF_SET32
#define DEFINE_SET8A DEF_SET8A
#define DEFINE_SET16A DEF_SET16A
#define DEFINE_SET32A DEF_SET32A
#define DEFINE_SET2D8 DEF_SET2D8
#define DEFINE_SET2D16 DEF_SET2D16
#define DEFINE_SET2D32 DEF_SET2D32
#define DEFINE_SET2D8A DEF_SET2D8A
#define DEFINE_SET2D16A DEF_SET2D16A
#define DEFINE_SET2D32A DEF_SET2D32A
#define DEFINE_ALLOC DEF_ALLOC
#define DEFINE_ALLOCM DEF_ALLOCM
#define DEFINE_ALLOCP DEF_ALLOCP
#define DEFINE_ALLOCA DEF_ALLOCA
#define DEFINE_ALLOCPA DEF_ALLOCPA
#define DEFINE_HALLOC DEF_HALLOC
#define DEFINE_HOSTALLOC DEF_HOSTALLOC
#define DEFINE_HOSTREG DEF_HOSTREG
#define DEFINE_FREE DEF_FREE
#define DEFINE_FREEA DEF_FREEA
#define DEFINE_HFREE DEF_HFREE
#define DEFINE_HUNREG DEF_HUNREG
#define DEFINE_SSYNC DEF_SSYNC
#define DEFINE_ESYNC DEF_ESYNC
#define DEFINE_CSYNC DEF_CSYNC
#define DEFINE_CSYNC2 DEF_CSYNC2
#define DEFINE_SWAIT DEF_SWAIT
#define DEFINE_GINST5 DEF_GINST5
#define DEFINE_GINSTP DEF_GINSTP
#define DEFINE_GLAUNCH DEF_GLAUNCH
#define DEFINE_GEXECDESTROY DEF_GEXECDESTROY
#define DEFINE_CAPBEGIN DEF_CAPBEGIN
#define DEFINE_CAPEND DEF_CAPEND
#define DEFINE_LAUNCH DEF_LAUNCH
#define DEFINE_LAUNCHEX DEF_LAUNCHEX
#define DEFINE_GPA DEF_GPA
#define DEFINE_GPA2 DEF_GPA2
FUNCS(DEFINE)

/* the alias entry shares the 11040 wrapper's function and real pointer */
#define real_cuGraphInstantiateWithFlags_12000 real_cuGraphInstantiateWithFlags_11040
#define ENTRY(fam, sym, base, since, pt) {#sym, #base, since, pt, (void *)sym, (void *volatile *)&real_##sym##_##since},
struct fn_entry g_fns[N_FUNCS] = {FUNCS(ENTRY)};

/* ---- resolution ------------------------------------------------------------------------------------ */
static void *resolve(int i) {
    void *p = NULL;
    if (g_libcuda) p = real_dlsym(g_libcuda, g_fns[i].name);
    if (!p) p = real_dlsym(RTLD_NEXT, g_fns[i].name);
    if (p == g_fns[i].wrapper) p = NULL;
    if (p) __atomic_store_n(g_fns[i].real, p, __ATOMIC_RELEASE);
    return p;
}

static void note_libcuda(void *p) {
    if (g_libcuda) return;
    Dl_info info;
    if (dladdr(p, &info) && info.dli_fname) {
        void *h = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
        if (h) g_libcuda = h;
    }
}

static void *wrapper_for(int i, void *p) {
    void *volatile *slot = g_fns[i].real;
    void *none = NULL;
    if (__atomic_compare_exchange_n(slot, &none, p, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE) || none == p)
        return g_fns[i].wrapper;
    return NULL; /* this wrapper already forwards to another implementation: leave the answer alone */
}

static int is_wrapper(void *p) {
    for (int i = 0; i < N_FUNCS; i++)
        if (g_fns[i].wrapper == p) return 1;
    return 0;
}

static void *wrap_answer(const char *symbol, void *p, int version, uint64_t flags) {
    if (is_wrapper(p)) return p; /* a driver that answers with the global symbol: already ours */
    note_libcuda(p);
    for (int i = 0; i < N_FUNCS; i++) /* the answer is an exported entry point this library wraps */
        if (*g_fns[i].real == p) return g_fns[i].wrapper;
    static void *addr[N_FUNCS]; /* the driver's exported entry points, looked up once */
    static void *volatile addr_of;
    if (g_libcuda && addr_of != g_libcuda) {
        for (int i = 0; i < N_FUNCS; i++) addr[i] = real_dlsym(g_libcuda, g_fns[i].name);
        addr_of = g_libcuda;
    }
    for (int i = 0; addr_of && i < N_FUNCS; i++) {
        if (addr[i] == p) {
            void *w = wrapper_for(i, p);
            if (w) return w;
        }
    }
    int best = -1; /* else by name: the newest signature this version asks for, in the asked stream mode */
    int want_pt = (flags & PTDS_FLAG) ? 1 : 0;
    for (int i = 0; i < N_FUNCS; i++)
        if (!strcmp(g_fns[i].base, symbol) && g_fns[i].since <= version && g_fns[i].pt == want_pt &&
            (best < 0 || g_fns[i].since > g_fns[best].since))
            best = i;
    if (best >= 0) {
        void *w = wrapper_for(best, p);
        if (w) return w;
        __sync_fetch_and_add(&g_unmatched, 1);
        size_t used = strlen(g_unmatched_names);
        if (used + strlen(symbol) + 2 < sizeof g_unmatched_names)
            snprintf(g_unmatched_names + used, sizeof g_unmatched_names - used, "%s%s", used ? " " : "", symbol);
    }
    return p;
}

/* RTLD_NEXT means "after the object that called dlsym", which glibc finds from its caller's address:
 * called from here it would mean "after this library" (and a library loaded after it that wraps a
 * libc function would find itself). So it is resolved here for the real caller: the objects in load
 * order after the one holding `caller`, each asked in turn. */
#define MAX_OBJECTS 1024
struct objects {
    const void *caller;
    int caller_at, n;
    char *paths[MAX_OBJECTS];
};

static int list_object(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    struct objects *o = (struct objects *)data;
    if (o->n == MAX_OBJECTS) return 1;
    for (int i = 0; i < info->dlpi_phnum && o->caller_at < 0; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && (uintptr_t)o->caller >= lo && (uintptr_t)o->caller < lo + ph->p_memsz)
            o->caller_at = o->n;
    }
    o->paths[o->n++] = strdup(info->dlpi_name ? info->dlpi_name : "");
    return 0;
}

static void *next_after(const void *caller, const char *name) {
    struct objects o;
    o.caller = caller;
    o.caller_at = -1;
    o.n = 0;
    dl_iterate_phdr(list_object, &o); /* paths first: dlopen is not called under the loader's lock */
    void *p = NULL;
    for (int i = o.caller_at + 1; o.caller_at >= 0 && i < o.n && !p; i++) {
        if (!o.paths[i][0]) continue;
        void *h = dlopen(o.paths[i], RTLD_LAZY | RTLD_NOLOAD);
        if (!h) continue;
        p = real_dlsym(h, name);
        dlclose(h);
    }
    for (int i = 0; i < o.n; i++) free(o.paths[i]);
    return p;
}

/* dlsym on the driver (frameworks, the runtime's loader): a wrapped name gets its wrapper. */
void *dlsym(void *handle, const char *name) {
    void *p = handle == RTLD_NEXT ? next_after(__builtin_return_address(0), name) : real_dlsym(handle, name);
    if (!p || name[0] != 'c' || name[1] != 'u') return p;
    for (int i = 0; i < N_FUNCS; i++) {
        if (strcmp(g_fns[i].name, name) != 0) continue;
        if (is_wrapper(p)) return p;
        if (handle != RTLD_DEFAULT && handle != RTLD_NEXT && !g_libcuda) g_libcuda = handle;
        void *w = wrapper_for(i, p);
        return w ? w : p;
    }
    return p;
}

/* ---- life cycle ------------------------------------------------------------------------------------ */
static void after_fork_child(void) {
    for (struct tbuf *b = g_bufs; b; b = b->next) {
        pthread_mutex_init(&b->lock, NULL);
        b->head = b->tail = 0;
        b->state = 0;
    }
    t_buf = NULL; /* the first record claims a ring again, which opens this process's own file */
    pthread_mutex_init(&g_file_lock, NULL);
    pthread_mutex_init(&g_range_lock, NULL);
    pthread_mutex_init(&g_graph_lock, NULL);
    if (g_rseq & 1) g_rseq++;
    stk_after_fork_child(); /* the parent's stacks are in the parent's file: ids start again here */
    t_tid = 0;
    g_flusher = 0;
    g_records = g_lost = 0;
    if (g_fd >= 0) {
        close(g_fd);
        g_fd = -1; /* the child opens its own file at its first record */
    }
}

static void resolve_exec(void); /* below, with the exec wrappers */

__attribute__((constructor)) static void start(void) {
    resolve_exec(); /* first: the exec wrappers are exported whether or not this process records */
    pthread_key_create(&g_key, thread_gone);
    /* the names are cctrace/trace/handoff.py's DIR, INTERPOSE, FLUSH_S and INTERPOSE_LAUNCHES */
    const char *dir = getenv("CCTRACE_DIR"), *mode = getenv("CCTRACE_INTERPOSE");
    if (!mode || (strcmp(mode, "on") && strcmp(mode, "standby") && strcmp(mode, "windowed"))) return;
    if (!dir || !*dir || strlen(dir) >= sizeof g_dir) return;
    strcpy(g_dir, dir);
    const char *f = getenv("CCTRACE_FLUSH_S");
    if (f) {
        double s = atof(f);
        if (s >= 0.01 && s <= 3600) g_flush_ns = (long)(s * 1e9);
    }
    g_launches = getenv("CCTRACE_INTERPOSE_LAUNCHES") != NULL;
    pthread_atfork(NULL, NULL, after_fork_child);
    g_armed = 1;
    /* standby: the in-process tracer switches it on when CUPTI cannot run; windowed: inside tracing windows */
    g_on = !strcmp(mode, "on");
}

__attribute__((destructor)) static void finish(void) {
    if (g_fd >= 0) flush_all(1);
}

/* ---- exec: the new image runs no destructor of this one, so what this one recorded is appended first ---- */
/* (a failed exec goes on recording: the next final flush writes the counters again, and the last counts).
   The real functions are found at load (resolve_exec): a vfork child (posix_spawn, subprocess) calls exec
   too, and must not take the loader's lock there, nor flush the parent's rings (it is not g_fd_pid). An
   exec from a signal handler that interrupted this library holding a lock skips the flush (held_locks.h).
   glibc's execl/execle/execlp reach its internal execve, not this one, so they are wrapped as well. */
typedef int (*execve_fn)(const char *, char *const[], char *const[]);
typedef int (*execv_fn)(const char *, char *const[]);
typedef int (*fexecve_fn)(int, char *const[], char *const[]);
static execve_fn g_execve, g_execvpe;
static execv_fn g_execv, g_execvp;
static fexecve_fn g_fexecve;

static void resolve_exec(void) {
    g_execve = (execve_fn)real_dlsym(RTLD_NEXT, "execve");
    g_execvpe = (execve_fn)real_dlsym(RTLD_NEXT, "execvpe");
    g_execv = (execv_fn)real_dlsym(RTLD_NEXT, "execv");
    g_execvp = (execv_fn)real_dlsym(RTLD_NEXT, "execvp");
    g_fexecve = (fexecve_fn)real_dlsym(RTLD_NEXT, "fexecve");
}

static void before_exec(void) {
    if (g_fd >= 0 && g_fd_pid == getpid() && !t_held) flush_all(1);
}

/* exec through `real`; found now if another library's constructor execs before this one's ran */
#define EXEC_WRAPPER(real, ...)                                                                                \
    do {                                                                                                       \
        if (!real) resolve_exec();                                                                             \
        if (!real) {                                                                                           \
            errno = ENOSYS;                                                                                    \
            return -1;                                                                                         \
        }                                                                                                      \
        before_exec();                                                                                         \
        return real(__VA_ARGS__);                                                                              \
    } while (0)

int execve(const char *path, char *const argv[], char *const envp[]) { EXEC_WRAPPER(g_execve, path, argv, envp); }
int execvpe(const char *file, char *const argv[], char *const envp[]) { EXEC_WRAPPER(g_execvpe, file, argv, envp); }
int execv(const char *path, char *const argv[]) { EXEC_WRAPPER(g_execv, path, argv); }
int execvp(const char *file, char *const argv[]) { EXEC_WRAPPER(g_execvp, file, argv); }
int fexecve(int fd, char *const argv[], char *const envp[]) { EXEC_WRAPPER(g_fexecve, fd, argv, envp); }

/* The list forms: the arguments up to the NULL into an array on the stack (as glibc does), then the
   vector form above; execle's environment follows the NULL. */
#define LIST_ARGV(arg0, argv, ap)                                                                              \
    size_t n = 1;                                                                                              \
    va_start(ap, arg0);                                                                                        \
    while (va_arg(ap, const char *)) n++;                                                                      \
    va_end(ap);                                                                                                \
    char *argv[n + 1];                                                                                         \
    argv[0] = (char *)(arg0);                                                                                  \
    va_start(ap, arg0);                                                                                        \
    for (size_t i = 1; i <= n; i++) argv[i] = va_arg(ap, char *) /* argv[n] is the NULL */

int execl(const char *path, const char *arg, ...) {
    va_list ap;
    LIST_ARGV(arg, argv, ap);
    va_end(ap);
    return execv(path, argv);
}

int execlp(const char *file, const char *arg, ...) {
    va_list ap;
    LIST_ARGV(arg, argv, ap);
    va_end(ap);
    return execvp(file, argv);
}

int execle(const char *path, const char *arg, ...) {
    va_list ap;
    LIST_ARGV(arg, argv, ap);
    char *const *envp = va_arg(ap, char *const *);
    va_end(ap);
    return execve(path, argv, envp);
}

/* ---- for cctrace's own process (tests, the tracer's exit path, doctor) ----------------------------- */
/* Append everything recorded so far; `last` also writes the counters block. */
void cct_ip_flush(int last) {
    if (g_fd >= 0) flush_all(last);
}

/* 1 when this process records (CCTRACE_DIR was set at start and the file could be opened). */
int cct_ip_active(void) { return g_on; }

/* Recording on or off in this process: standby -> on when the tracer found CUPTI refused, and both ways
   at a tracing window's edges (off: every wrapper calls straight through). 0 when done, -1 if not armed. */
int cct_ip_set(int on) {
    if (!g_armed) return -1;
    g_on = on ? 1 : 0;
    return 0;
}

/* The real entry point behind a wrapped name (benchmarks call both in one process); NULL if not wrapped. */
void *cct_ip_real(const char *name) {
    for (int i = 0; i < N_FUNCS; i++)
        if (!strcmp(g_fns[i].name, name)) return *g_fns[i].real ? *g_fns[i].real : resolve(i);
    return NULL;
}

void cct_ip_stats(uint64_t out[5]) {
    out[0] = g_records;
    out[1] = g_lost;
    out[2] = g_unmatched;
    out[3] = g_attr_queries;
    out[4] = g_graph_nodes;
}
