/* A stand-in libcuda for the interposer tests: the driver's names and signatures, known behaviour, no GPU.
 * Device memory is a counter of fake addresses; pinned memory is real memory remembered as pinned;
 * cuPointerGetAttributes answers from those tables (anything else is pageable); stream capture turns
 * async copies/memsets into graph nodes that cuGraph* walk. cuGetProcAddress answers from a name
 * table (never through dlsym), picking _v2 and the per-thread-stream variant as the real driver does. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int CUresult;
typedef uint64_t CUdeviceptr;
typedef struct {
    size_t srcXInBytes, srcY, srcZ, srcLOD;
    int srcMemoryType;
    const void *srcHost;
    CUdeviceptr srcDevice;
    void *srcArray, *reserved0;
    size_t srcPitch, srcHeight, dstXInBytes, dstY, dstZ, dstLOD;
    int dstMemoryType;
    void *dstHost;
    CUdeviceptr dstDevice;
    void *dstArray, *reserved1;
    size_t dstPitch, dstHeight, WidthInBytes, Height, Depth;
} M3D;
typedef struct {
    CUdeviceptr dst;
    size_t pitch;
    unsigned value, elementSize;
    size_t width, height;
} MSET;

struct alloc { uint64_t start, size; int type; }; /* type: 1 host (pinned), 2 device */
static struct alloc allocs[256];
static int nallocs;
static uint64_t next_dev = 0x7f0000000000ULL;

struct node { int type; M3D cpy; MSET set; };
struct graph { int n; struct node nodes[64]; };
static void *capturing; /* the stream being captured */
static struct graph *capture_graph;

static void remember(uint64_t p, uint64_t n, int type) { allocs[nallocs++] = (struct alloc){p, n, type}; }
static void forget(uint64_t p) {
    for (int i = 0; i < nallocs; i++)
        if (allocs[i].start == p) allocs[i] = allocs[--nallocs];
}

CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) { *p = next_dev; next_dev += (n + 4095) & ~4095ULL; remember(*p, n, 2); return 0; }
CUresult cuMemFree_v2(CUdeviceptr p) { forget(p); return 0; }
CUresult cuMemHostAlloc(void **p, size_t n, unsigned fl) { (void)fl; *p = malloc(n); remember((uint64_t)(uintptr_t)*p, n, 1); return 0; }
CUresult cuMemAllocHost_v2(void **p, size_t n) { return cuMemHostAlloc(p, n, 0); }
CUresult cuMemFreeHost(void *p) { forget((uint64_t)(uintptr_t)p); free(p); return 0; }
CUresult cuPointerGetAttributes(unsigned n, int *attrs, void **data, CUdeviceptr p) {
    struct alloc *a = NULL;
    for (int i = 0; i < nallocs; i++)
        if (p >= allocs[i].start && p < allocs[i].start + allocs[i].size) a = &allocs[i];
    for (unsigned i = 0; i < n; i++) {
        switch (attrs[i]) {
        case 2: *(unsigned *)data[i] = a ? (unsigned)a->type : 0; break;
        case 8: *(int *)data[i] = 0; break;
        case 11: *(uint64_t *)data[i] = a ? a->start : 0; break;
        case 12: *(size_t *)data[i] = a ? a->size : 0; break;
        }
    }
    return 0;
}

static void add_copy(int srctype, const void *src, int dsttype, CUdeviceptr dst, size_t n) {
    struct node *x = &capture_graph->nodes[capture_graph->n++];
    memset(x, 0, sizeof *x);
    x->type = 1;
    x->cpy.srcMemoryType = srctype;
    if (srctype == 1) x->cpy.srcHost = src; else x->cpy.srcDevice = (CUdeviceptr)(uintptr_t)src;
    x->cpy.dstMemoryType = dsttype;
    if (dsttype == 1) x->cpy.dstHost = (void *)(uintptr_t)dst; else x->cpy.dstDevice = dst;
    x->cpy.WidthInBytes = n; x->cpy.Height = 1; x->cpy.Depth = 1;
}

#define PT(name, params, body) CUresult name params body CUresult name##_ptsz params body
#define PD(name, params, body) CUresult name params body CUresult name##_ptds params body
PD(cuMemcpyHtoD_v2, (CUdeviceptr d, const void *s, size_t n), { (void)d; (void)s; (void)n; return 0; })
PD(cuMemcpyDtoH_v2, (void *d, CUdeviceptr s, size_t n), { (void)d; (void)s; (void)n; return 0; })
PD(cuMemcpy, (CUdeviceptr d, CUdeviceptr s, size_t n), { (void)d; (void)s; (void)n; return 0; })
PT(cuMemcpyHtoDAsync_v2, (CUdeviceptr d, const void *s, size_t n, void *st), {
    if (capturing && st == capturing) add_copy(1, s, 2, d, n);
    return 0;
})
PT(cuMemcpyDtoHAsync_v2, (void *d, CUdeviceptr s, size_t n, void *st), {
    if (capturing && st == capturing) add_copy(2, (void *)(uintptr_t)s, 1, (CUdeviceptr)(uintptr_t)d, n);
    return 0;
})
PT(cuMemcpyAsync, (CUdeviceptr d, CUdeviceptr s, size_t n, void *st), { (void)d; (void)s; (void)n; (void)st; return 0; })
PT(cuMemsetD32Async, (CUdeviceptr d, unsigned v, size_t n, void *st), {
    if (capturing && st == capturing) {
        struct node *x = &capture_graph->nodes[capture_graph->n++];
        memset(x, 0, sizeof *x);
        x->type = 2; x->set.dst = d; x->set.value = v; x->set.elementSize = 4; x->set.width = n; x->set.height = 1;
    }
    return 0;
})
PT(cuStreamSynchronize, (void *s), { if (s != (void *)0x5) usleep(1000); return 0; }) /* the bench's stream: at once */
CUresult cuCtxSynchronize(void) { return 0; }
CUresult cuCtxSynchronize_v2(void *ctx) { (void)ctx; return 0; } /* CUDA 13: the runtime asks for it by version */
/* what benchmarks/interpose_cost.py's loop sets up (--stand-in): nothing to do here */
CUresult cuInit(unsigned fl) { (void)fl; return 0; }
CUresult cuDeviceGet(int *d, int i) { *d = i; return 0; }
CUresult cuDevicePrimaryCtxRetain(void **c, int d) { (void)d; *c = (void *)0x1; return 0; }
CUresult cuCtxSetCurrent(void *c) { (void)c; return 0; }
CUresult cuEventCreate(void **e, unsigned fl) { (void)fl; *e = (void *)0xE0; return 0; }
CUresult cuEventRecord(void *e, void *s) { (void)e; (void)s; return 0; }
CUresult cuStreamCreate(void **s, unsigned fl) { (void)fl; *s = (void *)0x5; return 0; }
PT(cuMemsetD8Async, (CUdeviceptr d, unsigned char v, size_t n, void *st), { (void)d; (void)v; (void)n; (void)st; return 0; })
CUresult cuEventSynchronize(void *e) { (void)e; return 0; }
PT(cuStreamBeginCapture_v2, (void *s, int mode), { (void)mode; capturing = s; capture_graph = calloc(1, sizeof *capture_graph); return 0; })
PT(cuStreamEndCapture, (void *s, void **g), { (void)s; *g = capture_graph; capturing = NULL; return 0; })
PT(cuStreamIsCapturing, (void *s, int *status), { *status = capturing && s == capturing; return 0; })
CUresult cuGraphGetNodes(void *g, void **nodes, size_t *n) {
    struct graph *gr = g;
    if (nodes) for (int i = 0; i < gr->n && (size_t)i < *n; i++) nodes[i] = &gr->nodes[i];
    *n = (size_t)gr->n;
    return 0;
}
CUresult cuGraphNodeGetType(void *node, int *type) { *type = ((struct node *)node)->type; return 0; }
CUresult cuGraphMemcpyNodeGetParams(void *node, M3D *p) { *p = ((struct node *)node)->cpy; return 0; }
CUresult cuGraphMemsetNodeGetParams(void *node, MSET *p) { *p = ((struct node *)node)->set; return 0; }
CUresult cuGraphInstantiateWithFlags(void **exec, void *g, unsigned long long fl) { (void)fl; *exec = g; return 0; }
PT(cuGraphLaunch, (void *exec, void *s), { (void)exec; (void)s; return 0; })
CUresult cuGraphExecDestroy(void *exec) { (void)exec; return 0; }

/* cuGetProcAddress: the versioned, stream-mode-specific entry point for a base name, from this table */
#define E(n) {#n, (void *)n}
static const struct { const char *name; void *fn; } table[] = {
    E(cuMemAlloc_v2), E(cuMemFree_v2), E(cuMemHostAlloc), E(cuMemAllocHost_v2), E(cuMemFreeHost),
    E(cuPointerGetAttributes), E(cuMemcpyHtoD_v2), E(cuMemcpyHtoD_v2_ptds), E(cuMemcpyDtoH_v2),
    E(cuMemcpyDtoH_v2_ptds), E(cuMemcpy), E(cuMemcpy_ptds), E(cuMemcpyHtoDAsync_v2), E(cuMemcpyHtoDAsync_v2_ptsz),
    E(cuMemcpyDtoHAsync_v2), E(cuMemcpyDtoHAsync_v2_ptsz), E(cuMemcpyAsync), E(cuMemcpyAsync_ptsz),
    E(cuMemsetD32Async), E(cuMemsetD32Async_ptsz), E(cuStreamSynchronize), E(cuStreamSynchronize_ptsz),
    E(cuCtxSynchronize), E(cuCtxSynchronize_v2), E(cuEventSynchronize), E(cuStreamBeginCapture_v2), E(cuStreamBeginCapture_v2_ptsz),
    E(cuStreamEndCapture), E(cuStreamEndCapture_ptsz), E(cuStreamIsCapturing), E(cuStreamIsCapturing_ptsz),
    E(cuGraphGetNodes), E(cuGraphNodeGetType), E(cuGraphMemcpyNodeGetParams), E(cuGraphMemsetNodeGetParams),
    {"cuGraphInstantiate", (void *)cuGraphInstantiateWithFlags}, E(cuGraphInstantiateWithFlags),
    E(cuGraphLaunch), E(cuGraphLaunch_ptsz), E(cuGraphExecDestroy),
};
static void *lookup(const char *name) {
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (!strcmp(table[i].name, name)) return table[i].fn;
    return NULL;
}
CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, unsigned long long flags, int *status);
CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, unsigned long long flags) {
    return cuGetProcAddress_v2(symbol, pfn, version, flags, NULL);
}
CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, unsigned long long flags, int *status) {
    char name[128];
    const char *suffix = (flags & 2) ? (strstr(symbol, "Async") || strstr(symbol, "Stream") || strstr(symbol, "Launch") ? "_ptsz" : "_ptds") : "";
    *pfn = NULL;
    if (!strcmp(symbol, "cuGetProcAddress")) *pfn = version >= 12000 ? (void *)cuGetProcAddress_v2 : (void *)cuGetProcAddress;
    for (int v = 2; v >= 1 && !*pfn; v--) {
        if (v == 2 && version < 13000 && !strcmp(symbol, "cuCtxSynchronize")) continue; /* _v2 is CUDA 13's */
        if (v == 2) snprintf(name, sizeof name, "%s_v2%s", symbol, suffix);
        else snprintf(name, sizeof name, "%s%s", symbol, suffix);
        *pfn = lookup(name);
    }
    if (status) *status = *pfn ? 0 : 1;
    return *pfn ? 0 : 500;
}
