/* One write of a whole buffer to a file (retrying short writes and EINTR), shared by the C helpers that
 * append blocks to their raw files (the CUPTI shim, the driver interposer, the stack reader); and a
 * [u64 magic][u64 bytes][payload] block in one writev, so nothing (a signal whose handler execs, a
 * SIGKILL) can land between its header and its payload and leave a torn block. */
#ifndef CCTRACE_WRITE_ALL_H
#define CCTRACE_WRITE_ALL_H
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <unistd.h>

static inline int write_all(int fd, const void *data, size_t n) {
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

static inline int writev_all(int fd, struct iovec *iov, int n) {
    while (n > 0) {
        ssize_t w = writev(fd, iov, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        while (n > 0 && (size_t)w >= iov->iov_len) { /* a short write (rare): go on from there */
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

static inline int write_block_all(int fd, uint64_t magic, const void *data, size_t n) {
    uint64_t hdr[2] = {magic, (uint64_t)n};
    struct iovec iov[2] = {{hdr, sizeof hdr}, {(void *)(uintptr_t)data, n}};
    return writev_all(fd, iov, 2);
}

#endif
