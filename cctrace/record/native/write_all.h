/* One write of a whole buffer to a file (retrying short writes and EINTR), shared by the C helpers that
 * append blocks to their raw files (the CUPTI shim, the driver interposer). */
#ifndef CCTRACE_WRITE_ALL_H
#define CCTRACE_WRITE_ALL_H
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

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

#endif
