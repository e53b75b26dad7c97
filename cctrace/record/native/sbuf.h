/* A growing byte buffer, filled in memory and written out whole (the CUPTI shim's string blocks, the
 * interned Python stacks of py_stacks.h in the shim and in the driver interposer). */
#ifndef CCTRACE_SBUF_H
#define CCTRACE_SBUF_H
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

#endif
