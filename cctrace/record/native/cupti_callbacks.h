/* The parts of CUPTI's callback API that cctrace's C helpers (the buffer shim, the bridge emulator) use,
 * declared once, so that no CUDA headers are needed to build them. CallbackData's layout must match
 * CUpti_CallbackData of the CUPTI that runs. */
#ifndef CCTRACE_CUPTI_CALLBACKS_H
#define CCTRACE_CUPTI_CALLBACKS_H
#include <stdint.h>

typedef struct {
    int callbackSite; /* 0 enter, 1 exit */
    const char *functionName;
    const void *functionParams;
    void *functionReturnValue;
    const char *symbolName;
    void *context;
    uint32_t contextUid;
    uint64_t *correlationData;
    uint32_t correlationId;
} CallbackData;

typedef void (*callback_fn)(void *userdata, int domain, uint32_t cbid, const void *cbdata);
typedef int (*subscribe_fn)(void **subscriber, callback_fn cb, void *userdata);
typedef int (*enable_fn)(uint32_t enable, void *subscriber, int domain, uint32_t cbid);
typedef int (*unsubscribe_fn)(void *subscriber);

#endif
