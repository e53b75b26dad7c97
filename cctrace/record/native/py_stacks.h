/* The calling thread's Python stack, read from C inside a recorded CUDA call, without the GIL.
 * Included by the CUPTI shim (cupti_shim.c: inside the callback) and by the driver interposer
 * (interpose.c: inside each wrapped call), each of which stays one compiled file.
 *
 * Why no GIL: a thread inside a CUDA call that waits for the GIL while the GIL holder waits on a
 * CUDA lock is a deadlock, and torch lets go of the GIL around its copies anyway. Why it is safe:
 * the thread is inside the CUDA call, so its own frames cannot change while the callback runs; each
 * frame holds a strong reference to its code object; code objects, their line tables and their
 * name/filename strings are immutable. Only this thread's frames are read.
 *
 * No Python headers are needed (a recording host may lack them): the few struct offsets read are
 * in PY_LAYOUTS below, per CPython minor version (tests/test_py_stacks.py checks them against the
 * real internal headers), and cctrace checks them at start against the interpreter's own view of a
 * stack before turning stacks on. A stack is interned by its (code object, instruction offset)
 * sequence; a new one is resolved to (file, line, function) per frame on the spot, on the calling
 * thread, and queued as a CCT_STK_MAGIC block that the includer's flush writes (stk_flush) before
 * the records that use it.
 */
#ifndef CCTRACE_PY_STACKS_H
#define CCTRACE_PY_STACKS_H
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "held_locks.h"
#include "sbuf.h"
#include "write_all.h"

#define CCT_STK_MAGIC 0x31304b5453544343ULL /* "CCTSTK01": a block of interned stacks */
#define STK_MAX_FRAMES 128
#define STK_MAX_STACKS (1u << 20)
#define STK_STR_MAX 1024

struct py_layout { /* byte offsets into CPython's internal structs; -1: none in this version */
    int minor;
    int ts_cframe, cframe_current;                  /* PyThreadState.cframe, _PyCFrame.current_frame */
    int f_code, f_previous, f_prev_instr, f_owner;  /* _PyInterpreterFrame */
    int owner_generator, owner_cstack;              /* enum _frameowner values */
    int co_filename, co_qualname, co_firsttraceable, co_code_adaptive; /* PyCodeObject */
    int str_ascii_size, str_compact_size;           /* sizeof PyASCIIObject, PyCompactUnicodeObject */
};

static const struct py_layout PY_LAYOUTS[] = {
    {11, 56, 8, 32, 48, 56, 69, 1, -1, 112, 128, 168, 184, 48, 72},
    {12, 56, 0, 0, 8, 56, 70, 1, 3, 112, 128, 176, 192, 40, 56},
};
#define N_PY_LAYOUTS (int)(sizeof PY_LAYOUTS / sizeof PY_LAYOUTS[0])

typedef void *(*get_tstate_fn)(void);
typedef int (*addr2line_fn)(void *code, int byte_offset);

static const struct py_layout *g_py; /* the running interpreter's layout; NULL: stacks unavailable */
static get_tstate_fn g_get_tstate;   /* PyGILState_GetThisThreadState: a TSS read, no GIL needed */
static addr2line_fn g_addr2line;     /* PyCode_Addr2Line: reads the immutable line table only */
static volatile int g_stk_on;
static const void *g_code_type, *g_str_type; /* &PyCode_Type, &PyUnicode_Type: the start-up check's */

struct stk_entry {
    uint64_t hash;
    uint32_t id, n;
    uintptr_t *key; /* n (code, offset) pairs */
};
static struct stk_entry *g_stk_tab;
static uint32_t g_stk_cap, g_stk_count;
static pthread_mutex_t g_stk_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sbuf g_stk_out; /* resolved stacks not yet written (under g_stk_lock) */
static volatile uint64_t g_stk_with, g_stk_without, g_stk_dropped;

static inline uintptr_t rd_ptr(const char *base, int off) { return *(const uintptr_t *)(base + off); }

/* The (code, byte offset) pairs of this thread's Python frames, innermost first, and their hash
 * (mixed in on the way: it overlaps the walk's loads); returns how many. */
static int stk_walk(uintptr_t *key, uint64_t *hash) {
    const struct py_layout *L = g_py;
    const char *ts = (const char *)g_get_tstate();
    if (!ts) return 0;
    const char *cf = (const char *)rd_ptr(ts, L->ts_cframe);
    if (!cf) return 0;
    const char *f = (const char *)rd_ptr(cf, L->cframe_current);
    int n = 0;
    uint64_t h = 0;
    for (; f && n < STK_MAX_FRAMES; f = (const char *)rd_ptr(f, L->f_previous)) {
        int owner = *(const signed char *)(f + L->f_owner);
        if (owner == L->owner_cstack) continue; /* 3.12's entry frames: no code of their own */
        const char *code = (const char *)rd_ptr(f, L->f_code);
        const char *instr = (const char *)rd_ptr(f, L->f_prev_instr);
        const char *first = code + L->co_code_adaptive;
        if (owner != L->owner_generator && instr < first + 2 * *(const int *)(code + L->co_firsttraceable))
            continue; /* a frame still being set up (CPython's _PyFrame_IsIncomplete) */
        key[2 * n] = (uintptr_t)code;
        key[2 * n + 1] = (uintptr_t)(instr - first);
        h = ((h << 7) | (h >> 57)) ^ (uint64_t)(uintptr_t)code ^ ((uint64_t)(instr - first) << 40);
        n++;
    }
    h *= 0x9E3779B97F4A7C15ULL;
    *hash = (h ^ (h >> 31)) | 1;
    return n;
}

/* Copy n bytes from src, or fail (-1) if src is not readable, through a pipe: write() reports EFAULT
 * where a plain read would crash. Only the start-up check uses it: a layout that is wrong for this
 * interpreter must turn stacks off, never crash the traced program. */
static int safe_read(const void *src, void *dst, size_t n) {
    int fd[2];
    if (pipe(fd) != 0) return -1;
    int ok = write(fd[1], src, n) == (ssize_t)n && read(fd[0], dst, n) == (ssize_t)n;
    close(fd[0]);
    close(fd[1]);
    return ok ? 0 : -1;
}

static int is_type(const void *obj, const void *type) {
    const void *t = NULL;
    return obj && safe_read((const char *)obj + 8, &t, sizeof t) == 0 && t == type; /* ob_type */
}

/* stk_walk with every read checked and every code object and name checked for its type: 0 when the
 * layout reads this thread's frames as they are, -1 otherwise. */
static int stk_walk_checked(void) {
    const struct py_layout *L = g_py;
    const char *ts = (const char *)g_get_tstate(), *cf = NULL, *f = NULL;
    if (!ts || safe_read(ts + L->ts_cframe, &cf, sizeof cf) || !cf ||
        safe_read(cf + L->cframe_current, &f, sizeof f))
        return -1;
    for (int n = 0; f && n < STK_MAX_FRAMES; n++) {
        const char *code = NULL, *name = NULL, *file = NULL;
        signed char owner = 0;
        if (safe_read(f + L->f_owner, &owner, 1)) return -1;
        if (owner != L->owner_cstack) {
            if (safe_read(f + L->f_code, &code, sizeof code) || !is_type(code, g_code_type) ||
                safe_read(code + L->co_filename, &file, sizeof file) || !is_type(file, g_str_type) ||
                safe_read(code + L->co_qualname, &name, sizeof name) || !is_type(name, g_str_type))
                return -1;
        }
        if (safe_read(f + L->f_previous, &f, sizeof f)) return -1;
    }
    return 0;
}

/* A str's text as UTF-8 (at most STK_STR_MAX bytes) read in place: compact strings only, which
 * code objects' names and filenames are. */
static size_t stk_utf8(const char *s, char *out) {
    if (!s) return 0;
    const struct py_layout *L = g_py;
    int64_t len = *(const int64_t *)(s + 16);
    uint32_t state = *(const uint32_t *)(s + 32);
    unsigned kind = (state >> 2) & 7, compact = (state >> 5) & 1, ascii = (state >> 6) & 1;
    if (!compact || len < 0) return 0;
    if (ascii) {
        size_t n = (size_t)len < STK_STR_MAX ? (size_t)len : STK_STR_MAX;
        memcpy(out, s + L->str_ascii_size, n);
        return n;
    }
    const uint8_t *data = (const uint8_t *)(s + L->str_compact_size);
    size_t o = 0;
    for (int64_t i = 0; i < len; i++) {
        uint32_t c = kind == 1 ? data[i] : kind == 2 ? ((const uint16_t *)data)[i] : ((const uint32_t *)data)[i];
        uint8_t b[4];
        int m;
        if (c < 0x80) b[0] = (uint8_t)c, m = 1;
        else if (c < 0x800) b[0] = 0xC0 | (c >> 6), b[1] = 0x80 | (c & 63), m = 2;
        else if (c < 0x10000) b[0] = 0xE0 | (c >> 12), b[1] = 0x80 | ((c >> 6) & 63), b[2] = 0x80 | (c & 63), m = 3;
        else
            b[0] = 0xF0 | (c >> 18), b[1] = 0x80 | ((c >> 12) & 63), b[2] = 0x80 | ((c >> 6) & 63),
            b[3] = 0x80 | (c & 63), m = 4;
        if (o + (size_t)m > STK_STR_MAX) break;
        memcpy(out + o, b, (size_t)m);
        o += (size_t)m;
    }
    return o;
}

/* One stack as written: [u32 id][u32 frames] then per frame [i32 line][u16 file len][u16 function
 * len][file][function] (StackDecoder in cctrace/record/sources/py_stacks.py reads it). */
static int stk_resolve(struct sbuf *b, uint32_t id, const uintptr_t *key, int n) {
    uint32_t head[2] = {id, (uint32_t)n};
    if (sbuf_put(b, head, sizeof head)) return -1;
    char file[STK_STR_MAX], func[STK_STR_MAX];
    for (int i = 0; i < n; i++) {
        const char *code = (const char *)key[2 * i];
        int32_t line = g_addr2line((void *)code, (int)key[2 * i + 1]);
        uint16_t lens[2];
        lens[0] = (uint16_t)stk_utf8((const char *)rd_ptr(code, g_py->co_filename), file);
        lens[1] = (uint16_t)stk_utf8((const char *)rd_ptr(code, g_py->co_qualname), func);
        if (sbuf_put(b, &line, 4) || sbuf_put(b, lens, 4) || sbuf_put(b, file, lens[0]) ||
            sbuf_put(b, func, lens[1]))
            return -1;
    }
    return 0;
}

static int stk_grow(void) {
    uint32_t cap = g_stk_cap ? g_stk_cap * 2 : 1024;
    struct stk_entry *t = (struct stk_entry *)calloc(cap, sizeof *t);
    if (!t) return -1;
    for (uint32_t i = 0; i < g_stk_cap; i++) {
        if (!g_stk_tab[i].id) continue;
        uint32_t j = (uint32_t)g_stk_tab[i].hash & (cap - 1);
        while (t[j].id) j = (j + 1) & (cap - 1);
        t[j] = g_stk_tab[i];
    }
    free(g_stk_tab);
    g_stk_tab = t;
    g_stk_cap = cap;
    return 0;
}

/* The id of the calling thread's current Python stack (interning it if new), or 0 if none. */
static uint32_t stk_capture(void) {
    if (!g_stk_on) return 0;
    uintptr_t key[2 * STK_MAX_FRAMES];
    uint64_t h;
    int n = stk_walk(key, &h);
    if (n == 0) {
        __sync_fetch_and_add(&g_stk_without, 1);
        return 0;
    }
    uint32_t id = 0;
    held_lock(&g_stk_lock);
    if (g_stk_count * 2 >= g_stk_cap && stk_grow()) goto out;
    uint32_t j = (uint32_t)h & (g_stk_cap - 1);
    for (; g_stk_tab[j].id; j = (j + 1) & (g_stk_cap - 1)) {
        struct stk_entry *e = &g_stk_tab[j];
        if (e->hash == h && e->n == (uint32_t)n && !memcmp(e->key, key, sizeof(uintptr_t) * 2 * n)) {
            id = e->id;
            goto out;
        }
    }
    if (g_stk_count >= STK_MAX_STACKS) goto out;
    uintptr_t *k = (uintptr_t *)malloc(sizeof(uintptr_t) * 2 * n);
    if (!k) goto out;
    memcpy(k, key, sizeof(uintptr_t) * 2 * n);
    size_t mark = g_stk_out.n;
    if (stk_resolve(&g_stk_out, g_stk_count + 1, key, n)) {
        g_stk_out.n = mark;
        free(k);
        goto out;
    }
    id = ++g_stk_count;
    g_stk_tab[j] = (struct stk_entry){h, id, (uint32_t)n, k};
out:
    held_unlock(&g_stk_lock);
    if (id) __sync_fetch_and_add(&g_stk_with, 1);
    else __sync_fetch_and_add(&g_stk_dropped, 1);
    return id;
}

/* Write the stacks resolved since the last call (before the records that name them). */
static int stk_flush(int fd) {
    held_lock(&g_stk_lock);
    struct sbuf b = g_stk_out;
    g_stk_out = (struct sbuf){0, 0, 0};
    held_unlock(&g_stk_lock);
    if (!b.n) {
        free(b.p);
        return 0;
    }
    int bad = fd < 0 || write_block_all(fd, CCT_STK_MAGIC, b.p, b.n);
    free(b.p);
    return bad ? -1 : 0;
}

static void stk_forget(void) {
    g_stk_tab = NULL;
    g_stk_cap = g_stk_count = 0;
    g_stk_out = (struct sbuf){0, 0, 0};
    g_stk_with = g_stk_without = g_stk_dropped = 0;
}

/* An empty table: a new recording's stacks start again. */
static void stk_reset(void) {
    for (uint32_t i = 0; i < g_stk_cap; i++) free(g_stk_tab[i].key);
    free(g_stk_tab);
    free(g_stk_out.p);
    stk_forget();
}

/* A fork child's stacks go to its own file: an empty table. The parent's is left, not freed: another
 * thread may have been growing it when fork() was called (the memory stays shared copy-on-write). */
static void stk_after_fork_child(void) {
    pthread_mutex_init(&g_stk_lock, NULL);
    stk_forget();
}

/* Choose the layout of CPython 3.`minor`; the functions' and types' addresses come from ctypes.pythonapi.
 * Returns 0, or -1 when this version's layout is not known (stacks stay off). */
int cct_stacks_init(int minor, void *get_tstate, void *addr2line, void *code_type, void *str_type) {
    for (int i = 0; i < N_PY_LAYOUTS; i++)
        if (PY_LAYOUTS[i].minor == minor) {
            g_stk_on = 0;
            held_lock(&g_stk_lock);
            stk_reset();
            held_unlock(&g_stk_lock);
            g_py = &PY_LAYOUTS[i];
            g_get_tstate = (get_tstate_fn)get_tstate;
            g_addr2line = (addr2line_fn)addr2line;
            g_code_type = code_type;
            g_str_type = str_type;
            return 0;
        }
    return -1;
}

/* Turn capture on or off (benchmarks switch it between blocks); needs cct_stacks_init first. */
int cct_stacks_enable(int on) {
    if (on && !g_py) return -1;
    g_stk_on = on;
    return 0;
}

/* The layout the shim uses for 3.`minor`, as ints in struct order (tests compare it with the headers). */
int cct_stacks_layout(int minor, int *out, int cap) {
    for (int i = 0; i < N_PY_LAYOUTS; i++)
        if (PY_LAYOUTS[i].minor == minor) {
            int n = (int)(sizeof(struct py_layout) / sizeof(int));
            memcpy(out, &PY_LAYOUTS[i], sizeof(int) * (size_t)(n < cap ? n : cap));
            return n;
        }
    return -1;
}

/* The caller's stack, resolved, into `out` as one stack record (as stk_resolve writes it), without
 * interning: the start-up check compares it with what the interpreter itself reports. */
int cct_stacks_probe(uint8_t *out, size_t cap) {
    if (!g_py) return -1;
    if (stk_walk_checked()) return -3; /* the layout does not fit: reading on would crash */
    uintptr_t key[2 * STK_MAX_FRAMES];
    uint64_t h;
    int n = stk_walk(key, &h);
    struct sbuf b = {0, 0, 0};
    if (stk_resolve(&b, 0, key, n) || b.n > cap) {
        free(b.p);
        return -2;
    }
    memcpy(out, b.p, b.n);
    int len = (int)b.n;
    free(b.p);
    return len;
}

void cct_stacks_stats(uint64_t out[4]) {
    out[0] = g_stk_with;
    out[1] = g_stk_without;
    out[2] = g_stk_dropped;
    out[3] = g_stk_count;
}
#endif
