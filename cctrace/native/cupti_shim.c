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
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

static int write_all(int fd, const void *data, size_t n) {
    const uint8_t *p = (const uint8_t *)data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

struct sbuf {
    uint8_t *p;
    size_t n, cap;
};

static int sbuf_put(struct sbuf *b, const void *data, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + n) cap *= 2;
        uint8_t *q = (uint8_t *)realloc(b->p, cap);
        if (!q) return -1;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
    return 0;
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
        uint64_t hdr[2] = {CCT_MAGIC, (uint64_t)valid};
        /* one writev-like pair; O_APPEND keeps buffers whole against concurrent completions */
        uint8_t *block = (uint8_t *)malloc(sizeof hdr + valid);
        int bad;
        if (block) {
            memcpy(block, hdr, sizeof hdr);
            memcpy(block + sizeof hdr, buffer, valid);
            bad = write_all(g_fd, block, sizeof hdr + valid);
            free(block);
        } else {
            bad = write_all(g_fd, hdr, sizeof hdr) || write_all(g_fd, buffer, valid);
        }
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
    g_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (g_fd < 0) return -errno;
    return ((register_fn)reg)(on_request, on_complete);
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
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
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
