/* Which of this library's locks the calling thread holds, counted per thread.
 * exec() may be called from a signal handler (it is async-signal-safe), and the interposer's exec
 * wrapper flushes the rings first: that flush takes these locks, so if the interrupted code of the same
 * thread held one, it would wait on itself forever. held_lock/held_unlock count around every such lock, and the
 * flush is skipped while the count is not zero (that thread's last records are then lost, not the process).
 */
#ifndef CCTRACE_HELD_LOCKS_H
#define CCTRACE_HELD_LOCKS_H
#include <pthread.h>

static __thread volatile int t_held;

static inline void held_lock(pthread_mutex_t *m) {
    t_held++; /* first: a signal between the two sees the lock as held (the safe side) */
    pthread_mutex_lock(m);
}

static inline void held_unlock(pthread_mutex_t *m) {
    pthread_mutex_unlock(m);
    t_held--;
}
#endif
