"""Host probes: eBPF (bcc) at the CUDA driver boundary, for CUPTI-less (CC "on") or deeper views.

uprobes on libcuda's copy/memset/alloc/free/register/sync/launch entry points record each call of a
traced process with its arguments; sched_switch gives the time a thread spent off-CPU inside a
call, and NVIDIA ioctls (magic 'F') are timed. Events come through a ring buffer to this process,
which writes them as shards (api_calls with source='ebpf', host_waits, ioctls). Times are
bpf_ktime_get_ns, i.e. CLOCK_MONOTONIC, the clock of every other table.
"""

from __future__ import annotations

import ctypes as ct
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from cctrace.resources import data_dir
from cctrace.trace import handoff as H
from cctrace.trace import schema as S
from cctrace.trace.shards import ShardWriter

PROBE_SOURCE = data_dir("probes") / "cuda_boundary.c"
DIST_PACKAGES = ("/usr/lib/python3/dist-packages",)
HEADER_TREES = ("/opt/cctrace/kheaders/build", "/opt/kheaders/build")

P = {i: f"PT_REGS_PARM{i}(ctx)" for i in range(1, 7)}
# name: (copy kind or None, bytes, stream, ptr, out_ptr) as C expressions over the call's arguments
FUNCS: dict[str, tuple[str | None, str, str, str, str]] = {
    "cuMemcpyHtoD_v2": ("HtoD", P[3], "0", P[1], "0"),
    "cuMemcpyHtoDAsync_v2": ("HtoD", P[3], P[4], P[1], "0"),
    "cuMemcpyDtoH_v2": ("DtoH", P[3], "0", P[2], "0"),
    "cuMemcpyDtoHAsync_v2": ("DtoH", P[3], P[4], P[2], "0"),
    "cuMemcpyDtoD_v2": ("DtoD", P[3], "0", P[1], "0"),
    "cuMemcpyDtoDAsync_v2": ("DtoD", P[3], P[4], P[1], "0"),
    "cuMemcpy": ("unknown", P[3], "0", P[1], "0"),
    "cuMemcpyAsync": ("unknown", P[3], P[4], P[1], "0"),
    "cuMemcpyPeer": ("PtoP", P[5], "0", P[1], "0"),
    "cuMemcpyPeerAsync": ("PtoP", P[5], P[6], P[1], "0"),
    "cuMemsetD8_v2": (None, P[3], "0", P[1], "0"),
    "cuMemsetD8Async": (None, P[3], P[4], P[1], "0"),
    "cuMemsetD32_v2": (None, f"{P[3]} * 4", "0", P[1], "0"),
    "cuMemsetD32Async": (None, f"{P[3]} * 4", P[4], P[1], "0"),
    "cuMemAlloc_v2": (None, P[2], "0", "0", P[1]),
    "cuMemAllocAsync": (None, P[2], P[3], "0", P[1]),
    "cuMemAllocManaged": (None, P[2], "0", "0", P[1]),
    "cuMemAllocHost_v2": (None, P[2], "0", "0", P[1]),
    "cuMemHostAlloc": (None, P[2], "0", "0", P[1]),
    "cuMemFree_v2": (None, "0", "0", P[1], "0"),
    "cuMemFreeAsync": (None, "0", P[2], P[1], "0"),
    "cuMemFreeHost": (None, "0", "0", P[1], "0"),
    "cuMemHostRegister_v2": (None, P[2], "0", P[1], "0"),
    "cuMemHostUnregister": (None, "0", "0", P[1], "0"),
    "cuStreamSynchronize": (None, "0", P[1], "0", "0"),
    "cuEventSynchronize": (None, "0", "0", P[1], "0"),
    "cuCtxSynchronize": (None, "0", "0", "0", "0"),
    "cuStreamWaitEvent": (None, "0", P[1], P[2], "0"),
    "cuLaunchKernel": (None, "0", "stack_arg(ctx, 9)", P[1], "0"),
    "cuLaunchKernelEx": (None, "0", f"read_u64({P[1]} + 32)", P[2], "0"),
    "cuGraphLaunch": (None, "0", P[2], P[1], "0"),
}
VARIANTS = ("", "_ptsz", "_ptds")
# Kernel launches are most of a decode step's driver calls (serve.py: ~24 of ~34 per step), and every
# probed call pays the kernel's uprobe trap (its cost: benchmarks/README.md): probed only when asked.
LAUNCHES = ("cuLaunchKernel", "cuLaunchKernelEx", "cuGraphLaunch")
EV_CALL, EV_OFFCPU, EV_IOCTL = 1, 2, 3
EVENT_COUNTS = {"api_calls": "calls", "host_waits": "offcpu", "ioctls": "ioctls"}  # table -> health key
RINGBUF_PAGES_LOG2 = 11  # 8 MiB of events (~75k) absorbs bursts while this process drains them


class Event(ct.Structure):
    _fields_ = [
        ("type", ct.c_uint32),
        ("func", ct.c_uint32),
        ("pid", ct.c_uint32),
        ("tid", ct.c_uint32),
        ("start", ct.c_uint64),
        ("end", ct.c_uint64),
        ("bytes", ct.c_uint64),
        ("stream", ct.c_uint64),
        ("ptr", ct.c_uint64),
        ("ret", ct.c_int64),
        ("off_cpu_ns", ct.c_uint64),
        ("ioctl_ns", ct.c_uint64),
        ("request", ct.c_uint64),
        ("fd", ct.c_int64),
    ]


EVENT_SIZE = ct.sizeof(Event)
# the same struct as numpy sees it: events are decoded in bulk, not one Python object each
EVENT_DTYPE = np.dtype(
    [(name, "<u4" if typ is ct.c_uint32 else "<i8" if typ is ct.c_int64 else "<u8") for name, typ in Event._fields_]
)
assert EVENT_DTYPE.itemsize == EVENT_SIZE


class ProbesUnavailable(RuntimeError):
    """Host probes cannot run here; the message says why and what to do."""


def import_bcc():
    """bcc comes from the distribution (python3-bpfcc), also when cctrace runs in a virtualenv."""
    try:
        import bcc
    except ImportError:
        for d in DIST_PACKAGES:
            if os.path.isdir(os.path.join(d, "bcc")) and d not in sys.path:
                sys.path.append(d)
        try:
            import bcc
        except ImportError as e:
            raise ProbesUnavailable(
                f"bcc is not importable ({e}); install it with `apt-get install python3-bpfcc` (as root)"
            ) from None
    import bcc

    return bcc


def header_tree() -> str | None:
    """A kernel header tree bcc can compile against: the running kernel's, or BCC_KERNEL_SOURCE."""
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env and os.path.isdir(env):
        return env
    running = f"/lib/modules/{os.uname().release}/build"
    if os.path.isdir(os.path.join(running, "include")):
        return running
    for t in HEADER_TREES:
        if os.path.isdir(os.path.join(t, "include")):
            return t
    return None


def check_ready() -> None:
    if os.geteuid() != 0:
        raise ProbesUnavailable("host probes need root (run cctrace with sudo; the program still runs as you)")
    import_bcc()
    tree = header_tree()
    if tree is None:
        raise ProbesUnavailable(
            f"no kernel headers for {os.uname().release}: install linux-headers-$(uname -r), or a recent "
            "distribution header tree and point BCC_KERNEL_SOURCE at it (bash scripts/setup.sh does this)"
        )
    os.environ.setdefault("BCC_KERNEL_SOURCE", tree)
    if not os.path.isdir("/sys/kernel/tracing/events") and not os.path.isdir("/sys/kernel/debug/tracing/events"):
        raise ProbesUnavailable("tracefs is not mounted: mount -t tracefs none /sys/kernel/tracing")


def find_libcuda(pid: int | None = None, env: dict[str, str] | None = None) -> str | None:
    """The libcuda a process mapped (attach), else the one the dynamic loader would load for a program
    started with `env`: LD_LIBRARY_PATH first (a container's forward-compatible driver), then the
    loader cache, then the usual directories."""
    if lib := H.LIBCUDA.get():
        return lib
    if pid:
        try:
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    path = line.rstrip("\n").split(None, 5)[-1].removesuffix(" (deleted)")
                    if re.search(r"/libcuda\.so", path):
                        return path
        except OSError:
            pass
    for d in ((env if env is not None else os.environ).get("LD_LIBRARY_PATH") or "").split(":"):
        candidate = os.path.join(d or ".", LIBCUDA_SONAME)
        if d and os.path.isfile(candidate):
            return os.path.realpath(candidate)
    try:
        cached = from_loader_cache(subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout)
    except OSError:
        cached = None
    if cached:
        return os.path.realpath(cached)
    arch = f"{os.uname().machine}-linux-gnu"
    for d in (
        "/lib64",
        "/usr/lib64",
        f"/lib/{arch}",
        f"/usr/lib/{arch}",
        "/lib",
        "/usr/lib",
        "/usr/local/nvidia/lib64",
    ):
        candidate = os.path.join(d, LIBCUDA_SONAME)
        if os.path.isfile(candidate):
            return os.path.realpath(candidate)
    return None


LIBCUDA_SONAME = "libcuda.so.1"
# how `ldconfig -p` names this machine's ABI in its entries, e.g. "(libc6,x86-64)"
LOADER_ABI = {"x86_64": "x86-64", "aarch64": "AArch64"}


def from_loader_cache(listing: str, machine: str | None = None) -> str | None:
    """libcuda.so.1 in `ldconfig -p`'s listing, for this machine's ABI when the cache holds several."""
    abi = LOADER_ABI.get(machine or os.uname().machine)
    found = re.findall(rf"^\s*{re.escape(LIBCUDA_SONAME)} \(([^)]*)\) => (\S+)", listing, re.M)
    for flags, path in found:
        if abi is None or abi in flags.split(","):
            return path
    return None


def probe_names(symbols: set[str] | None, launches: bool) -> list[str]:
    """The entry points probed: each of FUNCS (launches only when asked) in each variant `symbols` has."""
    names = [n + v for n in FUNCS if launches or n not in LAUNCHES for v in VARIANTS]
    return [n for n in names if symbols is None or n in symbols]


def dump_program(libcuda: str | None = None, launches: bool = False) -> str:
    """The eBPF program as bcc would compile it (`cctrace doctor --dump-bpf`): for the entry points
    the libcuda found exports, or for every one cctrace knows when there is none."""
    lib = libcuda or find_libcuda()
    symbols = _exported_symbols(lib) if lib and os.path.exists(lib) else None
    return _program(probe_names(symbols, launches))


def _program(names: list[str], ringbuf_pages_log2: int = RINGBUF_PAGES_LOG2) -> str:
    """The eBPF program: the shared part, then an entry/return handler pair per probed entry point;
    without any (the interposer records the calls) only what the kernel sees, for every traced thread."""
    src = PROBE_SOURCE.read_text().replace("RINGBUF_PAGES_LOG2", str(ringbuf_pages_log2))
    parts = [src if names else "#define KERNEL_ONLY 1\n" + src]
    for i, name in enumerate(names):
        _kind, nbytes, stream, ptr, out = FUNCS[_base(name)]
        parts.append(
            f"int enter_{i}(struct pt_regs *ctx) {{ return enter_call(ctx, {i}, (u64)({nbytes}), "
            f"(u64)({stream}), (u64)({ptr}), (u64)({out})); }}\n"
            f"int exit_{i}(struct pt_regs *ctx) {{ return exit_call(ctx); }}\n"
        )
    return "\n".join(parts)


def _base(name: str) -> str:
    for v in ("_ptsz", "_ptds"):
        if name.endswith(v):
            return name[: -len(v)]
    return name


class HostProbes:
    def __init__(
        self,
        trace_dir: Path,
        libcuda: str | None = None,
        flush_s: float = 1.0,
        launches: bool = False,
        uprobes: bool = True,
    ) -> None:
        self.trace_dir = Path(trace_dir)
        self.libcuda = libcuda
        self.launches = launches
        self.uprobes = uprobes  # False: the interposer records the calls; only off-CPU and ioctls here
        self.flush_s = flush_s
        self.writer = ShardWriter(self.trace_dir, os.getpid())
        self.attached: list[str] = []
        self.events = {"calls": 0, "offcpu": 0, "ioctls": 0}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._raw: list[bytes] = []
        self._thread: threading.Thread | None = None
        self.bpf = None

    def start(self, pids: list[int] | None = None) -> None:
        check_ready()
        bcc = import_bcc()
        names: list[str] = []
        if self.uprobes:
            lib = self.libcuda or find_libcuda(pids[0] if pids else None)
            if lib is None or not os.path.exists(lib):
                raise ProbesUnavailable(f"no libcuda found to probe (set {H.LIBCUDA.name}=/path/to/libcuda.so.1)")
            self.libcuda = lib
            names = probe_names(_exported_symbols(lib), self.launches)
            if not names:
                raise ProbesUnavailable(f"{lib} exports none of the CUDA driver entry points cctrace probes")
        self.names = names
        self._kinds = np.array([FUNCS[_base(n)][0] for n in names] + [None], dtype=object)
        self._has_bytes = np.array([FUNCS[_base(n)][1] != "0" for n in names] + [False])
        try:
            self.bpf = bcc.BPF(text=_program(names), cflags=["-Wno-macro-redefined", "-Wno-duplicate-decl-specifier"])
        except Exception as e:  # noqa: BLE001 - bcc raises plain Exception on compile errors
            raise ProbesUnavailable(f"the eBPF program did not compile/load: {str(e)[:300]}") from None
        for i, name in enumerate(names):
            try:
                self.bpf.attach_uprobe(name=self.libcuda, sym=name, fn_name=f"enter_{i}")
                self.bpf.attach_uretprobe(name=self.libcuda, sym=name, fn_name=f"exit_{i}")
                self.attached.append(name)
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"{name}: {e}")
        for pid in pids or []:
            self.trace_pid(pid)
        self.bpf[b"events"].open_ring_buffer(self._on_event)
        self._thread = threading.Thread(target=self._poll, name="cctrace-probes", daemon=True)
        self._thread.start()

    def trace_pid(self, pid: int) -> None:
        self.bpf[b"traced"][ct.c_uint32(pid)] = ct.c_uint8(1)

    def trace_children(self, pid: int, on: bool = True) -> None:
        """While on, every process `pid` starts is traced from its first instruction (the launcher sets
        it around starting the command, so nothing the command does comes before its tracing)."""
        if self.bpf is None:  # stopped already
            return
        key = ct.c_uint32(pid)
        if on:
            self.bpf[b"roots"][key] = ct.c_uint8(1)
        else:
            self.bpf[b"roots"].pop(key, None)

    def _poll(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.01):  # events come without wakeups: drain every 10 ms
            self.bpf.ring_buffer_consume()  # raw bytes only; decoded in bulk once per flush interval
            if time.monotonic() - last >= self.flush_s:
                self._decode()
                self.writer.flush()
                last = time.monotonic()

    def _on_event(self, _ctx, data, _size) -> None:
        # called once per event: only copy its bytes; _decode turns them into columns in bulk
        self._raw.append(ct.string_at(data, EVENT_SIZE))

    def _decode(self) -> None:
        """The events received so far -> shard batches."""
        raw, self._raw = self._raw, []
        if raw:
            for table, batch in self._batches(np.frombuffer(b"".join(raw), dtype=EVENT_DTYPE)):
                self.writer.add_batch(table, batch)
                self.events[EVENT_COUNTS[table]] += batch.num_rows

    def _batches(self, ev: np.ndarray) -> list[tuple[str, pa.RecordBatch]]:
        """Raw event structs -> a record batch per table (numpy over the structs, no per-event Python)."""
        out = []
        func = np.minimum(ev["func"], len(self.names))  # index len(names): no call (None)
        names = np.array([*self.names, None], dtype=object)
        for etype, table in ((EV_CALL, "api_calls"), (EV_OFFCPU, "host_waits"), (EV_IOCTL, "ioctls")):
            sel = ev["type"] == etype
            n = int(sel.sum())
            if not n:
                continue
            e, f = ev[sel], func[sel]
            cols: dict[str, object] = {
                "pid": e["pid"].astype(np.int64),
                "tid": e["tid"].astype(np.int64),
                "start_ns": e["start"].astype(np.int64),
                "end_ns": e["end"].astype(np.int64),
                "source": pa.array(["ebpf"] * n, pa.string()),
            }
            if etype == EV_CALL:
                off = e["off_cpu_ns"].astype(np.int64)
                cols |= {
                    "name": pa.array(names[f], pa.string()),
                    "domain": pa.array(["driver"] * n, pa.string()),
                    "return_value": e["ret"],
                    "bytes": pa.array(e["bytes"].astype(np.int64), pa.int64(), mask=~self._has_bytes[f]),
                    "copy_kind": pa.array(self._kinds[f], pa.string()),
                    "stream": e["stream"],
                    "ptr": e["ptr"],
                    "on_cpu_ns": cols["end_ns"] - cols["start_ns"] - off,
                    "off_cpu_ns": off,
                    "ioctl_ns": e["ioctl_ns"].astype(np.int64),
                }
            elif etype == EV_OFFCPU:
                cols["in_call"] = pa.array(names[f], pa.string())
            else:
                cols |= {
                    "fd": e["fd"],
                    "request": e["request"],
                    "return_value": e["ret"],
                    "in_call": pa.array(names[f], pa.string()),
                }
            out.append((table, S.rows_to_batch(table, cols)))
        return out

    def stop(self) -> dict:
        if self.bpf is None:
            return self.health()
        time.sleep(0.05)
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.bpf.ring_buffer_consume()
        self._decode()
        self.writer.close()
        lost = sum(v.value for v in self.bpf[b"lost"].values())
        self.lost = int(lost)
        self.bpf.cleanup()
        self.bpf = None
        return self.health()

    def health(self) -> dict:
        return {
            "libcuda": self.libcuda,
            "attached": len(self.attached),
            "launches": self.launches,
            "uprobes": self.uprobes,
            "events": dict(self.events),
            "lost": getattr(self, "lost", 0),
            "errors": self.errors[:20],
        }


def _exported_symbols(lib: str) -> set[str]:
    """Dynamic symbols of a shared library (pyelftools, no binutils needed)."""
    from elftools.elf.elffile import ELFFile

    out = set()
    with open(lib, "rb") as f:
        elf = ELFFile(f)
        dynsym = elf.get_section_by_name(".dynsym")
        if dynsym is None:
            return out
        for sym in dynsym.iter_symbols():
            if sym["st_shndx"] != "SHN_UNDEF" and sym["st_info"]["type"] == "STT_FUNC":
                out.add(sym.name.split("@")[0])
    return out


# The trap cost bench: a stand-in libcuda whose copy call returns at once, and a loop that calls it N
# times (after a line on stdin, so probes can attach to the running process) and prints ns per call.
TRAP_LIB = "#include <stddef.h>\n#include <stdint.h>\nint cuMemcpyHtoDAsync_v2(uint64_t d, const void *s, size_t n, void *st) { return 0; }\n"
TRAP_APP = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <stddef.h>
#include <time.h>
int cuMemcpyHtoDAsync_v2(uint64_t, const void *, size_t, void *);
int main(int argc, char **argv) {
    long n = atol(argv[1]); char line[8];
    if (!fgets(line, sizeof line, stdin)) return 1;
    struct timespec a, b; clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) cuMemcpyHtoDAsync_v2(0x1000, line, 128, (void *)1);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
"""


def build_trap_bench(d: Path) -> tuple[Path, Path]:
    """The trap-cost stand-in library and its loop, compiled into `d`; (library, program)."""
    (d / "lib.c").write_text(TRAP_LIB)
    (d / "app.c").write_text(TRAP_APP)
    lib, app = d / "libcuda.so.1", d / "app"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(d / "lib.c")], check=True)
    subprocess.run(["cc", "-O2", "-o", str(app), str(d / "app.c"), str(lib), f"-Wl,-rpath,{d}"], check=True)
    return lib, app


def run_trap_bench(app: Path, calls: int) -> float:
    """ns per call of one run of the loop."""
    return float(subprocess.run([str(app), str(calls)], input="go\n", capture_output=True, text=True).stdout)


def uprobe_trap_cost(calls: int = 200_000) -> float:
    """This machine's added ns per call for an empty uprobe + uretprobe pair: the kernel's trap, the
    floor of what every probed call pays (and what `attach` adds to each call it sees)."""
    import tempfile

    check_ready()
    bcc = import_bcc()
    with tempfile.TemporaryDirectory() as tmp:
        lib, app = build_trap_bench(Path(tmp))
        plain = run_trap_bench(app, calls)
        b = bcc.BPF(text="int e(struct pt_regs *ctx) { return 0; }")
        try:
            b.attach_uprobe(name=str(lib).encode(), sym=b"cuMemcpyHtoDAsync_v2", fn_name=b"e")
            b.attach_uretprobe(name=str(lib).encode(), sym=b"cuMemcpyHtoDAsync_v2", fn_name=b"e")
            probed = run_trap_bench(app, calls)
        finally:
            b.cleanup()
    return probed - plain
