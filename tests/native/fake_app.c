/* Drives the stand-in libcuda the three ways programs reach a driver: linked directly ("direct"), through
 * dlsym on the library ("dlsym"), and through cuGetProcAddress_v2 ("gpa", the CUDA 12+ runtime's way).
 * The same calls each way; the interposer test checks the rows they leave. */
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

typedef int CUresult;
typedef uint64_t CUdeviceptr;
static CUresult (*MemAlloc)(CUdeviceptr *, size_t);
static CUresult (*MemFree)(CUdeviceptr);
static CUresult (*HostAlloc)(void **, size_t, unsigned);
static CUresult (*FreeHost)(void *);
static CUresult (*HtoD)(CUdeviceptr, const void *, size_t);
static CUresult (*HtoDAsync)(CUdeviceptr, const void *, size_t, void *);
static CUresult (*HtoDAsyncPt)(CUdeviceptr, const void *, size_t, void *);
static CUresult (*DtoHAsync)(void *, CUdeviceptr, size_t, void *);
static CUresult (*MemcpyAsync)(CUdeviceptr, CUdeviceptr, size_t, void *);
static CUresult (*SetD32Async)(CUdeviceptr, unsigned, size_t, void *);
static CUresult (*StreamSync)(void *);
static CUresult (*CtxSync)(void);
static CUresult (*CtxSync2)(void *);
static CUresult (*EventSync)(void *);
static CUresult (*BeginCapture)(void *, int);
static CUresult (*EndCapture)(void *, void **);
static CUresult (*Instantiate)(void **, void *, unsigned long long);
static CUresult (*GraphLaunch)(void *, void *);

#ifdef DIRECT
CUresult cuMemAlloc_v2(CUdeviceptr *, size_t);
CUresult cuMemFree_v2(CUdeviceptr);
CUresult cuMemHostAlloc(void **, size_t, unsigned);
CUresult cuMemFreeHost(void *);
CUresult cuMemcpyHtoD_v2(CUdeviceptr, const void *, size_t);
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr, const void *, size_t, void *);
CUresult cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr, const void *, size_t, void *);
CUresult cuMemcpyDtoHAsync_v2(void *, CUdeviceptr, size_t, void *);
CUresult cuMemcpyAsync(CUdeviceptr, CUdeviceptr, size_t, void *);
CUresult cuMemsetD32Async(CUdeviceptr, unsigned, size_t, void *);
CUresult cuStreamSynchronize(void *);
CUresult cuCtxSynchronize(void);
CUresult cuCtxSynchronize_v2(void *);
CUresult cuEventSynchronize(void *);
CUresult cuStreamBeginCapture_v2(void *, int);
CUresult cuStreamEndCapture(void *, void **);
CUresult cuGraphInstantiateWithFlags(void **, void *, unsigned long long);
CUresult cuGraphLaunch(void *, void *);
static void bind(const char *how, const char *lib) {
    (void)how; (void)lib;
    MemAlloc = cuMemAlloc_v2; MemFree = cuMemFree_v2; HostAlloc = cuMemHostAlloc; FreeHost = cuMemFreeHost;
    HtoD = cuMemcpyHtoD_v2; HtoDAsync = cuMemcpyHtoDAsync_v2; HtoDAsyncPt = cuMemcpyHtoDAsync_v2_ptsz;
    DtoHAsync = cuMemcpyDtoHAsync_v2; MemcpyAsync = cuMemcpyAsync; SetD32Async = cuMemsetD32Async;
    StreamSync = cuStreamSynchronize; CtxSync = cuCtxSynchronize; EventSync = cuEventSynchronize;
    CtxSync2 = cuCtxSynchronize_v2;
    BeginCapture = cuStreamBeginCapture_v2; EndCapture = cuStreamEndCapture;
    Instantiate = cuGraphInstantiateWithFlags; GraphLaunch = cuGraphLaunch;
}
#else
static void *must(void *p, const char *name) {
    if (!p) { fprintf(stderr, "no %s\n", name); exit(3); }
    return p;
}
static void bind(const char *how, const char *lib) {
    void *h = must(dlopen(lib, RTLD_NOW | RTLD_LOCAL), lib);
    if (!strcmp(how, "dlsym")) {
#define D(var, name) var = must(dlsym(h, #name), #name)
        D(MemAlloc, cuMemAlloc_v2); D(MemFree, cuMemFree_v2); D(HostAlloc, cuMemHostAlloc); D(FreeHost, cuMemFreeHost);
        D(HtoD, cuMemcpyHtoD_v2); D(HtoDAsync, cuMemcpyHtoDAsync_v2); D(HtoDAsyncPt, cuMemcpyHtoDAsync_v2_ptsz);
        D(DtoHAsync, cuMemcpyDtoHAsync_v2); D(MemcpyAsync, cuMemcpyAsync); D(SetD32Async, cuMemsetD32Async);
        D(StreamSync, cuStreamSynchronize); D(CtxSync, cuCtxSynchronize); D(EventSync, cuEventSynchronize);
        D(CtxSync2, cuCtxSynchronize_v2);
        D(BeginCapture, cuStreamBeginCapture_v2); D(EndCapture, cuStreamEndCapture);
        D(Instantiate, cuGraphInstantiateWithFlags); D(GraphLaunch, cuGraphLaunch);
        return;
    }
    CUresult (*gpa0)(const char *, void **, int, unsigned long long, int *) = must(dlsym(h, "cuGetProcAddress_v2"), "gpa");
    CUresult (*gpa)(const char *, void **, int, unsigned long long, int *) = NULL;
    gpa0("cuGetProcAddress", (void **)&gpa, 12000, 0, NULL); /* as the runtime does: the driver's own answer */
    must(gpa, "cuGetProcAddress via itself");
#define G(var, name, fl) do { void *p_ = NULL; gpa(#name, &p_, 12000, fl, NULL); var = must(p_, #name); } while (0)
    G(MemAlloc, cuMemAlloc, 0); G(MemFree, cuMemFree, 0); G(HostAlloc, cuMemHostAlloc, 0); G(FreeHost, cuMemFreeHost, 0);
    G(HtoD, cuMemcpyHtoD, 0); G(HtoDAsync, cuMemcpyHtoDAsync, 0); G(HtoDAsyncPt, cuMemcpyHtoDAsync, 2);
    G(DtoHAsync, cuMemcpyDtoHAsync, 0); G(MemcpyAsync, cuMemcpyAsync, 0); G(SetD32Async, cuMemsetD32Async, 0);
    G(StreamSync, cuStreamSynchronize, 0); G(CtxSync, cuCtxSynchronize, 0); G(EventSync, cuEventSynchronize, 0);
    { void *p_ = NULL; gpa("cuCtxSynchronize", &p_, 13000, 0, NULL); CtxSync2 = must(p_, "cuCtxSynchronize@13000"); }
    G(BeginCapture, cuStreamBeginCapture, 0); G(EndCapture, cuStreamEndCapture, 0);
    G(Instantiate, cuGraphInstantiate, 0); G(GraphLaunch, cuGraphLaunch, 0);
}
#endif

/* Expected rows (the test holds the same numbers): copies HtoD 3x4096 pinned (one through the _ptsz
 * entry point), 2x8192 pageable, 1x512 pageable (cuMemcpyAsync), 5 graph launches x 2048 pinned replayed;
 * DtoH 1x1000 pinned; memsets 1x1024 direct + 5 replayed x 256; one captured H2D (no copies row). */
static void work(void) {
    CUdeviceptr d = 0;
    void *h = NULL, *g = NULL, *e = NULL;
    char *pg = malloc(8192);
    void *s = (void *)0xAB, *s2 = (void *)0xCD;
    MemAlloc(&d, 1 << 20);
    HostAlloc(&h, 4096, 0);
    HtoDAsync(d, h, 4096, s);
    HtoDAsync(d, (char *)h + 100, 4096, s);
    HtoDAsyncPt(d, h, 4096, s);
    HtoD(d, pg, 8192);
    HtoD(d + 8192, pg + 4, 8192);
    DtoHAsync(h, d, 1000, s);
    MemcpyAsync(d + 100, (CUdeviceptr)(uintptr_t)pg, 512, s);
    SetD32Async(d, 0, 256, s);
    StreamSync(s);
    CtxSync();
    CtxSync2((void *)0xC7); /* CUDA 13's versioned context sync, naming a context (not an event) */
    EventSync((void *)0xE1);
    BeginCapture(s2, 0);
    HtoDAsync(d, h, 2048, s2);
    SetD32Async(d, 7, 64, s2);
    EndCapture(s2, &g);
    Instantiate(&e, g, 0);
    for (int i = 0; i < 5; i++) GraphLaunch(e, s2);
    FreeHost(h);
    MemFree(d);
    free(pg);
}

static void *spin(void *arg) { /* 10000 records per thread: past a full ring (4096) more than once */
    (void)arg;
    for (int i = 0; i < 10000; i++) CtxSync();
    return NULL;
}

static void exec_true(int sig) { /* exec from a signal handler: async-signal-safe, so allowed */
    (void)sig;
    execl("/bin/true", "true", (char *)NULL);
    _exit(9);
}

/* After work(): exec /bin/true through one of the list forms (glibc's reach its internal execve), or from
 * a signal handler that lands while the loop records (and so, at times, while its ring is being drained). */
static void exec_after_work(const char *how) {
    if (!strcmp(how, "execl")) execl("/bin/true", "true", (char *)NULL);
    if (!strcmp(how, "execlp")) execlp("true", "true", (char *)NULL);
    if (!strcmp(how, "execle")) {
        char *envp[] = {NULL};
        execle("/bin/true", "true", (char *)NULL, envp);
    }
    if (!strncmp(how, "signal:", 7)) { /* signal:USEC: the handler runs that long into the loop */
        signal(SIGALRM, exec_true);
        struct itimerval t = {{0, 0}, {0, atol(how + 7)}};
        setitimer(ITIMER_REAL, &t, NULL);
        for (;;) CtxSync();
    }
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    bind(argv[1], argv[2]);
    work();
    if (argc > 3 && !strncmp(argv[3], "exec", 4)) exec_after_work(argv[3] + 5); /* exec:HOW */
    if (argc > 3 && !strcmp(argv[3], "fork")) { /* the child records into its own file */
        pid_t pid = fork();
        if (pid == 0) {
            CUdeviceptr d = 0;
            MemAlloc(&d, 4096);
            StreamSync((void *)0x11);
            exit(0); /* its own file, written by its destructor */
        }
        int st;
        waitpid(pid, &st, 0);
    }
    if (argc > 3 && !strcmp(argv[3], "threads")) {
        pthread_t th[4];
        for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, spin, NULL);
        for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    }
    printf("done %s\n", argv[1]);
    return 0;
}
