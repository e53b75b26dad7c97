/* CUDA calls from a thread that has never run Python (a framework's own C++ worker): loaded by
 * callsites_app.py, it makes `n` cuEventSynchronize calls from a new pthread, through dlsym as such
 * code does, so the interposer records them with no Python thread state at hand (stack 0). */
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

struct job {
    const char *lib;
    int n, rc;
};

static void *run(void *arg) {
    struct job *j = (struct job *)arg;
    void *h = dlopen(j->lib, RTLD_NOW);
    int (*sync)(void *) = h ? (int (*)(void *))dlsym(h, "cuEventSynchronize") : NULL;
    j->rc = sync ? 0 : -1;
    for (int i = 0; sync && i < j->n; i++) j->rc |= sync((void *)0xE2);
    return NULL;
}

int call_from_native_thread(const char *lib, int n) {
    struct job j = {lib, n, 0};
    pthread_t t;
    if (pthread_create(&t, NULL, run, &j) != 0 || pthread_join(t, NULL) != 0) return -1;
    return j.rc;
}
