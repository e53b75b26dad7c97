// Host-side probes at the CUDA driver boundary (bcc). Loaded by cctrace/record/sources/host_probes.py,
// which appends one entry/return handler pair per probed function (see FUNCS there).
//
// For threads of traced processes it records every probed call (enter/exit time, return value,
// byte count, stream, pointer), the time the thread spent off-CPU inside it (sched_switch) and
// the ioctls to the NVIDIA driver it made ('F' is the driver's ioctl magic).
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

#define EV_CALL 1
#define EV_OFFCPU 2
#define EV_IOCTL 3

struct call_t {
    u64 start;
    u64 bytes;
    u64 stream;
    u64 ptr;
    u64 out_ptr;      // where the function writes an allocated pointer (read on return)
    u64 off_cpu_ns;
    u64 ioctl_ns;
    u64 switched_out; // when the thread last left the CPU inside this call
    u32 func;
    u32 tgid;
};

struct event_t {
    u32 type;
    u32 func;
    u32 pid;
    u32 tid;
    u64 start;
    u64 end;
    u64 bytes;
    u64 stream;
    u64 ptr;
    s64 ret;
    u64 off_cpu_ns;
    u64 ioctl_ns;
    u64 request;
    s64 fd;
};

struct ioctl_t {
    u64 start;
    u64 request;
    s64 fd;
};

BPF_HASH(traced, u32, u8, 65536);        // tgids being traced (filled by user space and fork)
BPF_HASH(roots, u32, u8, 64);            // tgids whose new processes are traced, themselves not (the launcher)
BPF_HASH(inflight, u32, struct call_t, 65536);
BPF_HASH(ioctl_inflight, u32, struct ioctl_t, 65536);
BPF_ARRAY(lost, u64, 1);
BPF_RINGBUF_OUTPUT(events, 1 << RINGBUF_PAGES_LOG2);

static __always_inline int is_traced(u32 tgid) { return traced.lookup(&tgid) != NULL; }

static __always_inline void emit(struct event_t *ev) {
    // no wakeup per event: user space drains the ring every few ms (a wakeup per event costs microseconds)
    if (events.ringbuf_output(ev, sizeof(*ev), BPF_RB_NO_WAKEUP) != 0) {
        int zero = 0;
        u64 *n = lost.lookup(&zero);
        if (n) __sync_fetch_and_add(n, 1);
    }
}

static __always_inline u64 stack_arg(struct pt_regs *ctx, int n) {  // x86-64: args 7+ are on the stack
    u64 v = 0;
    bpf_probe_read_user(&v, sizeof(v), (void *)(PT_REGS_SP(ctx) + 8 * (n - 6)));
    return v;
}

static __always_inline u64 read_u64(u64 addr) {
    u64 v = 0;
    if (addr) bpf_probe_read_user(&v, sizeof(v), (void *)addr);
    return v;
}

static __always_inline int enter_call(struct pt_regs *ctx, u32 func, u64 bytes, u64 stream, u64 ptr, u64 out_ptr) {
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32)) return 0;
    u32 tid = (u32)id;
    struct call_t c = {};
    c.start = bpf_ktime_get_ns();
    c.bytes = bytes;
    c.stream = stream;
    c.ptr = ptr;
    c.out_ptr = out_ptr;
    c.func = func;
    c.tgid = id >> 32;
    inflight.update(&tid, &c);
    return 0;
}

static __always_inline int exit_call(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct call_t *c = inflight.lookup(&tid);
    if (!c) return 0;
    struct event_t ev = {};
    ev.type = EV_CALL;
    ev.func = c->func;
    ev.pid = id >> 32;
    ev.tid = tid;
    ev.start = c->start;
    ev.end = bpf_ktime_get_ns();
    ev.bytes = c->bytes;
    ev.stream = c->stream;
    ev.ptr = c->ptr;
    if (c->out_ptr) {
        u64 p = 0;
        bpf_probe_read_user(&p, sizeof(p), (void *)c->out_ptr);
        ev.ptr = p;
    }
    ev.ret = PT_REGS_RC(ctx);
    ev.off_cpu_ns = c->off_cpu_ns;
    ev.ioctl_ns = c->ioctl_ns;
    emit(&ev);
    inflight.delete(&tid);
    return 0;
}

#ifdef KERNEL_ONLY
// No uprobes (the driver interposer records the calls): every off-CPU interval of a traced thread is
// recorded, and joined to the interposed call it fell in when the trace is decoded.
struct off_t {
    u64 since;
    u32 tgid;
};
BPF_HASH(offcpu, u32, struct off_t, 65536);
#endif

// a thread inside a probed call (KERNEL_ONLY: any traced thread) leaves or returns to the CPU
TRACEPOINT_PROBE(sched, sched_switch) {
    u64 now = bpf_ktime_get_ns();
    u32 prev = args->prev_pid, next = args->next_pid;
#ifdef KERNEL_ONLY
    u64 id = bpf_get_current_pid_tgid();  // the task leaving the CPU
    if (prev && is_traced(id >> 32)) {
        struct off_t o = {now, id >> 32};
        offcpu.update(&prev, &o);
    }
    struct off_t *o = offcpu.lookup(&next);
    if (o) {
        struct event_t ev = {};
        ev.type = EV_OFFCPU;
        ev.func = 0xffffffff;
        ev.tid = next;
        ev.pid = o->tgid;
        ev.start = o->since;
        ev.end = now;
        emit(&ev);
        offcpu.delete(&next);
    }
    return 0;
#endif
    struct call_t *c = inflight.lookup(&prev);
    if (c) c->switched_out = now;
    c = inflight.lookup(&next);
    if (c && c->switched_out) {
        u64 off = now - c->switched_out;
        c->off_cpu_ns += off;
        struct event_t ev = {};
        ev.type = EV_OFFCPU;
        ev.func = c->func;
        ev.tid = next;
        ev.pid = c->tgid;
        ev.start = c->switched_out;
        ev.end = now;
        emit(&ev);
        c->switched_out = 0;
    }
    return 0;
}

// new processes of traced processes (and of the roots) are traced too; the parent is the current task,
// whose tgid is the process (args->parent_pid is the forking thread's id)
TRACEPOINT_PROBE(sched, sched_process_fork) {
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    if (!is_traced(parent) && roots.lookup(&parent) == NULL) return 0;
    u32 child = args->child_pid;
    u8 one = 1;
    traced.update(&child, &one);
    return 0;
}

// an exiting task leaves the map: a process (its leader: pid == tgid), or a thread that the fork
// tracepoint added under its own id; so the map does not fill up, and a reused id is not traced
TRACEPOINT_PROBE(sched, sched_process_exit) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    traced.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_ioctl) {
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32)) return 0;
    u64 req = args->cmd;
    if (((req >> 8) & 0xff) != 'F') return 0;  // _IOC_TYPE: NVIDIA's NV_IOCTL_MAGIC
    u32 tid = (u32)id;
    struct ioctl_t io = {bpf_ktime_get_ns(), req, (s64)args->fd};
    ioctl_inflight.update(&tid, &io);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_ioctl) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct ioctl_t *io = ioctl_inflight.lookup(&tid);
    if (!io) return 0;
    u64 now = bpf_ktime_get_ns();
    struct call_t *c = inflight.lookup(&tid);
    struct event_t ev = {};
    ev.type = EV_IOCTL;
    ev.func = c ? c->func : 0xffffffff;
    if (c) c->ioctl_ns += now - io->start;
    ev.pid = id >> 32;
    ev.tid = tid;
    ev.start = io->start;
    ev.end = now;
    ev.request = io->request;
    ev.fd = io->fd;
    ev.ret = args->ret;
    emit(&ev);
    ioctl_inflight.delete(&tid);
    return 0;
}

// ---- per-function handlers are appended here by host_probes.py ----
