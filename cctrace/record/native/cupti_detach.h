/* Detaching CUPTI from the traced process and attaching it again (record --duration/--delay,
 * --toggle-signal; benchmarks/cupti_inprocess.py's "detached" blocks).
 * Included once, by cupti_shim.c, right before on_api (a header so the shim stays one compiled file).
 *
 * Switching activity kinds off leaves CUPTI attached: its hooks in the driver, its worker thread, the
 * callback subscription. Only cuptiFinalize removes them, and CUPTI asks for it to be called at the
 * exit of a CUDA runtime or driver call (its cupti_finalize sample; called from another thread it races
 * with threads inside CUPTI). So a detach asks for it: the whole runtime and driver domains are turned
 * on for our subscription (a subscription of our own is made when none is held), and the first call of
 * any thread to return runs cuptiFinalize inside our callback, then wakes the detaching thread. The
 * caller waits a bounded time; a program that makes no CUDA call meanwhile has its CUPTI finalized at
 * its next call. Attaching again is any CUPTI call (CUPTI initializes lazily): the buffer callbacks are
 * registered again here, the kinds and the subscription by the caller.
 */
#ifndef CCTRACE_CUPTI_DETACH_H
#define CCTRACE_CUPTI_DETACH_H
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

typedef int (*finalize_fn)(void);
typedef int (*enable_domain_fn)(uint32_t enable, void *subscriber, int domain);

static void on_api(void *ud, int domain, uint32_t cbid, const void *cbdata);

static finalize_fn g_finalize;
static enable_domain_fn g_enable_domain;
static subscribe_fn g_det_subscribe;
static volatile int g_detach_req;        /* 1: finalize at the next API exit */
static volatile uint64_t g_generation;   /* bumps at each finalize: enters seen before it are void */
static volatile uint64_t g_finalizes, g_finalize_rc;
static pthread_mutex_t g_det_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_det_cond = PTHREAD_COND_INITIALIZER;
static __thread uint64_t t_generation;

/* cuptiFinalize, cuptiEnableDomain and cuptiSubscribe's addresses. */
int cct_detach_init(void *finalize, void *enable_domain, void *subscribe) {
    g_finalize = (finalize_fn)finalize;
    g_enable_domain = (enable_domain_fn)enable_domain;
    g_det_subscribe = (subscribe_fn)subscribe;
    return 0;
}

/* In on_api, first: 1 when this callback was the detach (the caller returns at once). Also voids a
 * thread's open enters from before a finalize, whose exits CUPTI never delivered. */
static inline int detach_hook(int domain, const CallbackData *d) {
    if (t_generation != g_generation) {
        t_generation = g_generation;
        t_depth = 0;
        t_rt_open = 0;
        t_outer_corr = 0;
    }
    if (!g_detach_req || d->callbackSite != 1 || (domain != 1 && domain != 2)) return 0;
    pthread_mutex_lock(&g_det_lock);
    if (g_detach_req) {
        g_api_on = 0;
        g_finalize_rc = (uint64_t)g_finalize();
        g_api_sub = NULL; /* finalize ended the subscription */
        memset(g_want, 0, sizeof g_want);
        g_generation++;
        t_generation = g_generation;
        t_depth = 0;
        t_rt_open = 0;
        t_outer_corr = 0;
        g_finalizes++;
        g_detach_req = 0;
        pthread_cond_broadcast(&g_det_cond);
    }
    pthread_mutex_unlock(&g_det_lock);
    return 1;
}

/* Stop recording, write out what was gathered, and have CUPTI finalized at the next API exit; wait up
 * to timeout_ms for it. 0: finalized; 1: still pending (no CUDA call returned meanwhile); <0 or a
 * CUPTI status: no subscription to finalize from (activity kinds are the caller's to switch off). */
int cct_detach(int timeout_ms) {
    if (!g_finalize || !g_enable_domain) return -1;
    g_api_on = 0;
    api_flush();
    if (!g_api_sub) {
        int rc = g_det_subscribe ? g_det_subscribe(&g_api_sub, on_api, NULL) : -1;
        if (rc != 0) {
            g_api_sub = NULL;
            return rc;
        }
    }
    pthread_mutex_lock(&g_det_lock);
    uint64_t before = g_finalizes;
    g_detach_req = 1;
    int rc = g_enable_domain(1, g_api_sub, 1);
    if (rc == 0) rc = g_enable_domain(1, g_api_sub, 2);
    if (rc != 0) {
        g_detach_req = 0;
        pthread_mutex_unlock(&g_det_lock);
        return rc;
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    while (g_finalizes == before && g_detach_req) {
        if (pthread_cond_timedwait(&g_det_cond, &g_det_lock, &until) == ETIMEDOUT) break;
    }
    int pending = g_finalizes == before;
    pthread_mutex_unlock(&g_det_lock);
    return pending ? 1 : 0;
}

/* Attach while a finalize is still pending: call it off. 1: it was pending (CUPTI is still attached;
 * the domains are off again, the caller selects its calls); 0: CUPTI was finalized already. */
int cct_detach_cancel(void) {
    pthread_mutex_lock(&g_det_lock);
    int was = g_detach_req;
    if (was) {
        g_detach_req = 0;
        if (g_api_sub) {
            g_enable_domain(0, g_api_sub, 1);
            g_enable_domain(0, g_api_sub, 2);
            memset(g_want, 0, sizeof g_want);
        }
    }
    pthread_mutex_unlock(&g_det_lock);
    return was;
}

/* After a finalize: the same buffer callbacks again (the raw file stays open). */
int cct_reattach(void) {
    if (!g_register) return -1;
    return g_register(on_request, on_complete);
}

/* Record again through a subscription that outlived a cancelled detach. */
void cct_api_resume(void) { g_api_on = g_api_sub != NULL; }

void cct_detach_stats(uint64_t out[2]) {
    out[0] = g_finalizes;
    out[1] = g_finalize_rc;
}

#endif
