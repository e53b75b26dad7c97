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

#define CCT_MAGIC 0x3130425554504343ULL /* "CCPTUB01" little-endian */

typedef int CUptiResult;
typedef void (*req_fn)(uint8_t **buffer, size_t *size, size_t *max_records);
typedef void (*done_fn)(void *ctx, uint32_t stream_id, uint8_t *buffer, size_t size, size_t valid);
typedef CUptiResult (*register_fn)(req_fn, done_fn);

static size_t g_size = 8u << 20;
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
