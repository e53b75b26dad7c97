"""CUPTI activity records (through cupti-python) -> rows of the shared tables.

Only the kinds that describe crossings are on by default (copies, memsets, allocations, the runtime
calls that move/allocate/free/synchronize, and CUPTI's overhead records). With the C shim
(cctrace/record/native/cupti_shim.c, the normal case) CUPTI's buffers go to a raw file without touching
Python, and the runtime calls come from CUPTI callbacks on just those calls rather than from the
RUNTIME activity kind, which wraps every runtime call; both are decoded here after the run. Without
the shim, cupti-python's Python buffer callbacks only queue the records and the flusher thread
converts them, so a CUPTI thread never does I/O or waits on the traced program.
"""

from __future__ import annotations

import ctypes
import os
import re
import time
from collections import deque
from itertools import groupby
from operator import attrgetter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cctrace.record.native import address, api_stats, chain_hooks, detach_stats, shim_stats
from cctrace.record.sources import py_stacks
from cctrace.trace import handoff as H
from cctrace.trace import schema as S
from cctrace.trace.clock import measure_offset
from cctrace.trace.shards import ShardWriter

# runtime calls kept when RUNTIME records are on; everything else is switched off by callback id
RUNTIME_KEEP = re.compile(
    H.RUNTIME_KEEP.get()  # a diagnostic knob for benchmarks/cupti_cost.py
    or r"^cuda(Memcpy|Memset|Malloc|Free|HostAlloc|HostRegister|HostUnregister|MemPrefetch|"
    r"StreamSynchronize|DeviceSynchronize|EventSynchronize|StreamWaitEvent|MemcpyBatch)"
)
# launches are many per step; their records come with the 'kernel' kind, where they pair with kernels
RUNTIME_LAUNCH = re.compile(r"^cuda(LaunchKernel|LaunchCooperativeKernel|LaunchKernelExC|GraphLaunch)")
# driver calls kept (frameworks that bypass the runtime: JAX/XLA, CuPy paths, Triton, custom C++): the
# same copies, memsets, allocations, frees, syncs and stream waits, and graph launches (a replayed
# step: one call each). A driver call inside a recorded runtime call is that call: recorded once.
DRIVER_KEEP = re.compile(
    r"^cu(Memcpy|Memset|MemAlloc|MemFree|MemHostAlloc|MemHostRegister|MemHostUnregister|MemPrefetch|"
    r"StreamSynchronize|EventSynchronize|CtxSynchronize|StreamWaitEvent|GraphLaunch)"
)
DRIVER_LAUNCH = re.compile(r"^cu(LaunchKernel|LaunchCooperativeKernel|LaunchKernelEx)")
# cupti-python builds one Python object per record while holding the GIL, so buffers stay modest
BUFFER_BYTES = int(H.CUPTI_BUFFER_KB.get() or H.CUPTI_BUFFER_KB.default) * 1024
# How records reach us between full buffers: 'period' (CUPTI's worker flushes every interval),
# 'manual' (our flusher calls activity_flush_all(0) every interval) or 'none' (full buffers and exit only).
FLUSH_MODE = H.CUPTI_FLUSH.get()
RAW_SUFFIX = ".cuptiraw"
# diagnostics only (benchmarks/cupti_cost.py): drop delivered buffers unconverted
DISCARD = H.CUPTI_DISCARD.on()
# With the C shim, runtime calls are recorded through CUPTI's callback API for the kept calls only;
# this diagnostic knob (benchmarks) asks for CUPTI's RUNTIME activity kind instead.
RUNTIME_ACTIVITY = H.RUNTIME_ACTIVITY.on()

# one record of the shim's callback-recorded API calls (struct api_rec in native/cupti_shim.c)
API_DTYPE = np.dtype(
    [
        ("start", "<u8"),
        ("end", "<u8"),
        ("domain", "<u4"),
        ("cbid", "<u4"),
        ("correlation_id", "<u4"),
        ("tid", "<u4"),
        ("ret", "<i4"),
        ("stack_id", "<u4"),
    ]
)

COPY_KIND = {
    "HTOD": "HtoD",
    "DTOH": "DtoH",
    "DTOD": "DtoD",
    "HTOH": "HtoH",
    "PTOP": "PtoP",
    "HTOA": "HtoA",
    "ATOH": "AtoH",
    "ATOA": "AtoA",
    "ATOD": "AtoD",
    "DTOA": "DtoA",
}
MEM_KIND = {
    "PAGEABLE": "pageable",
    "PINNED": "pinned",
    "DEVICE": "device",
    "ARRAY": "array",
    "MANAGED": "managed",
    "DEVICE_STATIC": "device_static",
    "MANAGED_STATIC": "managed",
}
SYNC_TYPE = {
    "STREAM_SYNCHRONIZE": "stream",
    "EVENT_SYNCHRONIZE": "event",
    "CONTEXT_SYNCHRONIZE": "context",
    "STREAM_WAIT_EVENT": "stream_wait_event",
}


def _kept(name: str, launches: bool) -> bool:
    """A runtime call cctrace records."""
    return bool(RUNTIME_KEEP.match(name) or (launches and RUNTIME_LAUNCH.match(name)))


def kept_driver(name: str, launches: bool) -> bool:
    """A driver call cctrace records (when the runtime call around it, if any, is not recorded)."""
    return bool(DRIVER_KEEP.match(name) or (launches and DRIVER_LAUNCH.match(name)))


def activity_kinds(cupti) -> dict[str, object]:
    """cctrace's kind names (--kinds) -> CUPTI activity kinds."""
    A = cupti.ActivityKind
    return {
        "memcpy": A.MEMCPY,
        "memcpy2": A.MEMCPY2,
        "memset": A.MEMSET,
        "memory": A.MEMORY2,
        "sync": A.SYNCHRONIZATION,
        "runtime": A.RUNTIME,
        "overhead": A.OVERHEAD,
        "kernel": A.CONCURRENT_KERNEL,
        "driver": A.DRIVER,
        "nvtx": A.MARKER,
    }


class CuptiUnavailable(RuntimeError):
    """CUPTI cannot trace this process; the message says why in one line."""


def _enum_map(enum_cls, names: dict[str, str], default: str = "unknown") -> dict[int, str]:
    out: dict[int, str] = {}
    for member in enum_cls:
        out[int(member)] = names.get(member.name, default)
    return out


class CuptiSource:
    def __init__(
        self, writer: ShardWriter, kinds: tuple[str, ...], flush_s: float = 1.0, stacks: dict | None = None
    ) -> None:
        self.writer = writer
        self.kinds = kinds
        self.flush_s = flush_s
        self.records: dict[str, int] = {}
        self.errors: list[str] = []
        self.dropped = 0
        self.clock: dict = {}
        self.runtime_filter = "not applied"
        self.enabled: list[str] = []
        self._enabled_kinds: list = []
        self._cupti = None
        self._open_markers: dict[int, tuple] = {}
        self._pending: deque[list] = deque()
        self.convert_cpu_ns = 0
        self._shim = None
        self._flush_completed = None  # cuptiActivityFlushAll through ctypes (shim delivery)
        self.forked = False  # a fork child of a CUPTI-traced process: CUPTI must not be touched
        self.incomplete: dict[str, int] = {}  # records dropped because a forced flush cut them short
        self.delivery = "none"
        self._api_names: dict[tuple[int, int], str] = {}
        self.api_hub = False  # runtime calls come through the shim's callback subscription
        self.detached = False  # detach(): kinds off, buffers handed over, CUPTI finalized (or pending)
        self.detach_state = "attached"
        self.detaches = 0
        self._finalize_fns: bool | None = None
        # Python stacks of recorded calls: the manifest's account, and the decoder's patterns
        self.stacks = py_stacks.account(stacks, "off: runtime calls not recorded by the shim")

    # ---- start / stop ---------------------------------------------------------------------
    def start(self) -> None:
        try:
            ctypes.CDLL("libcuda.so.1")
        except OSError:
            raise CuptiUnavailable("no NVIDIA driver here (libcuda.so.1 cannot be loaded)") from None
        try:
            from cupti import cupti
        except ImportError as e:
            raise CuptiUnavailable(f"cupti-python is not importable ({e}); pip install 'cctrace[gpu]'") from None
        except OSError as e:
            raise CuptiUnavailable(f"libcupti could not be loaded ({e})") from None
        self.bind(cupti)
        self._enable()
        self.clock = measure_offset(cupti.get_timestamp)
        self._offset = self.clock["offset_ns"]

    def bind(self, cupti) -> None:
        """Read the enum values this CUPTI build uses and prepare the per-kind converters."""
        self._cupti = cupti
        self._copy_kind = _enum_map(cupti.ActivityMemcpyKind, COPY_KIND)
        self._mem_kind = _enum_map(cupti.ActivityMemoryKind, MEM_KIND)
        self._sync_type = _enum_map(cupti.ActivitySynchronizationType, SYNC_TYPE)
        self._overhead_kind = {int(m): m.name.lower() for m in cupti.ActivityOverheadKind}
        self._alloc_op = {
            int(cupti.ActivityMemoryOperationType.ALLOCATION): "alloc",
            int(cupti.ActivityMemoryOperationType.RELEASE): "free",
        }
        flag = cupti.ActivityFlag
        self._memcpy_async = int(getattr(flag, "MEMCPY_ASYNC", 1))
        self._memset_async = int(getattr(flag, "MEMSET_ASYNC", 1))
        self._marker_start = int(getattr(flag, "MARKER_START", 2))
        self._marker_end = int(getattr(flag, "MARKER_END", 4))
        self._marker_instant = int(getattr(flag, "MARKER_INSTANTANEOUS", 1))
        self._runtime_domain = int(cupti.CallbackDomain.RUNTIME_API)
        self._runtime_kind = int(cupti.ActivityKind.RUNTIME)
        self._driver_domain = int(cupti.CallbackDomain.DRIVER_API)
        self._driver_kind = int(cupti.ActivityKind.DRIVER)
        self._offset = 0
        self._setup_specs()

    def _enable(self) -> None:
        cupti = self._cupti
        kind_of = activity_kinds(cupti)
        unknown = [k for k in self.kinds if k not in kind_of]
        if unknown:
            raise CuptiUnavailable(f"unknown activity kind(s) {', '.join(unknown)}; known: {', '.join(kind_of)}")
        try:
            cupti.set_thread_id_type(cupti.ActivityThreadIdType.SYSTEM)
            self._register_callbacks()
        except Exception as e:  # noqa: BLE001 - cuptiError and friends
            raise CuptiUnavailable(f"CUPTI refused to start ({e}); another profiler may hold it") from None
        self._enable_kinds()

    def _enable_kinds(self) -> None:
        """Each asked-for kind on, the runtime calls through the shim's subscription."""
        cupti = self._cupti
        kind_of = activity_kinds(cupti)
        for name in self.kinds:
            if name == "runtime" and self._shim is not None and not RUNTIME_ACTIVITY:
                if self.api_hub:  # attach() after a detach that kept the subscription
                    self.enabled.append("runtime")
                else:
                    self._start_api_hub()
                continue
            try:
                cupti.activity_enable(kind_of[name])
                self.enabled.append(name)
                self._enabled_kinds.append(kind_of[name])
            except Exception as e:  # noqa: BLE001
                if name in ("memcpy",):
                    self._disable_all()
                    raise CuptiUnavailable(
                        f"CUPTI activity {name} could not be enabled ({e}); another profiler "
                        "(torch.profiler, nsys, ncu) may already be subscribed"
                    ) from None
                self.errors.append(f"activity kind {name} not enabled: {e}")
        if "runtime" in self.enabled and not self.api_hub:  # the hub selected its calls at start
            self.restrict_runtime("kernel" in self.kinds)
        if "nvtx" in self.enabled:
            self._inject_nvtx()
        if FLUSH_MODE == "period" and self._flush_completed is None:
            # with the shim the flusher forces a flush each interval already (CUPTI's own period
            # delivered only full buffers): no second, periodic wake-up of CUPTI's worker
            try:
                cupti.activity_flush_period(max(1, int(self.flush_s * 1000)))
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"flush period not set: {e}")

    def _start_api_hub(self) -> None:
        """Runtime calls through the shim's callbacks: CUPTI then wraps only the kept calls."""
        lib = loaded_libcupti(self._cupti)
        libcupti = ctypes.CDLL(lib) if lib else None
        if libcupti is None:
            self.errors.append("libcupti not found in this process; runtime calls not recorded")
            return
        selection = self._runtime_selection("kernel" in self.kinds, self.driver_calls)
        rc = self._shim.cct_api_start(
            address(libcupti.cuptiSubscribe),
            address(libcupti.cuptiEnableCallback),
            address(libcupti.cuptiGetTimestamp),
            *selection,
        )
        if rc != 0:
            why = " (another tool holds CUPTI's callback subscription)" if rc == 39 else ""
            self.errors.append(f"runtime calls not recorded: CUPTI callback subscription failed ({rc}){why}")
            return
        self.api_hub = True
        if self.stacks["state"] not in ("on", py_stacks.NO_STACKS):
            self.stacks.update(py_stacks.start(self._shim))
        self.enabled.append("runtime")
        self.runtime_filter = (
            f"{selection[2]} runtime and driver calls recorded through callbacks (a driver call inside a "
            "recorded runtime call once, as that call), all others untouched"
        )

    def _runtime_selection(self, launches: bool, driver: bool = True) -> tuple:
        """(domains, callback ids, count) of the runtime calls cctrace reads, and with `driver` the
        driver calls, as the shim takes them."""
        keep = [(self._runtime_domain, cbid) for cbid, name in self._runtime_names() if _kept(name, launches)]
        if driver:
            dom = self._driver_domain
            keep += [(dom, cbid) for cbid, name in self._callback_names(dom) if kept_driver(name, launches)]
        n = len(keep)
        return (ctypes.c_int * n)(*[d for d, _ in keep]), (ctypes.c_uint32 * n)(*[c for _, c in keep]), n

    def callback_hooks(self) -> tuple[int, int, int] | None:
        """While this source holds CUPTI's one callback subscription, the stand-ins through which a
        second callback user (the bridge emulator) shares it; else None."""
        return chain_hooks(self._shim) if self.api_hub else None

    def _runtime_names(self) -> list[tuple[int, str]]:
        return self._callback_names(self._runtime_domain)

    def _callback_names(self, domain: int) -> list[tuple[int, str]]:
        """(callback id, name) of every call of a CUPTI callback domain."""
        out, misses = [], 0
        for cbid in range(1, 2000):
            try:
                name = self._cupti.get_callback_name(domain, cbid)
            except Exception:  # noqa: BLE001 - past the last id, or a retired id
                misses += 1
                if misses > 50:
                    break
                continue
            misses = 0
            name = name.decode() if isinstance(name, bytes) else str(name)
            self._api_names[(domain, cbid)] = _clean_name(name)
            out.append((cbid, name))
        return out

    def runtime_off(self) -> None:
        """No runtime call recorded (benchmarks/cupti_inprocess.py switches it per block)."""
        if self.api_hub:
            self._shim.cct_api_select(None, None, 0)
        else:
            self._cupti.activity_disable(self._cupti.ActivityKind.RUNTIME)

    @property
    def driver_calls(self) -> bool:
        """Kept driver calls through the shim's callbacks, unless the DRIVER activity kind records all."""
        return "driver" not in self.kinds

    def runtime_on(self, launches: bool, driver: bool = True) -> None:
        if not self.api_hub:
            self._cupti.activity_enable(self._cupti.ActivityKind.RUNTIME)
        self.restrict_runtime(launches, driver)

    def restrict_runtime(self, launches: bool, driver: bool = True) -> None:
        """Record only the runtime calls that move, allocate, free, sync (and, with `launches`,
        launch); with the shim and `driver`, also the driver calls made outside them."""
        if self.api_hub:
            rc = self._shim.cct_api_select(*self._runtime_selection(launches, driver and self.driver_calls))
            if rc != 0:
                self.errors.append(f"runtime call selection failed ({rc})")
            return
        kept = off = 0
        for cbid, name in self._runtime_names():
            keep = _kept(name, launches)
            try:
                self._cupti.activity_enable_runtime_api(cbid, 1 if keep else 0)
            except Exception as e:  # noqa: BLE001
                self.runtime_filter = f"failed ({e}); all runtime calls recorded"
                return
            kept += keep
            off += not keep
        self.runtime_filter = f"{kept} runtime calls recorded, {off} switched off"

    def _inject_nvtx(self) -> None:
        """NVTX ranges reach CUPTI only if libcupti is NVTX's injection library, named before the
        program's first NVTX call (we run at interpreter start, so that holds)."""
        if os.environ.get("NVTX_INJECTION64_PATH"):
            return
        lib = _mapped_library("libcupti")
        if lib is None:
            self.errors.append("NVTX: libcupti not found in this process's mappings; ranges not recorded")
            return
        os.environ["NVTX_INJECTION64_PATH"] = lib

    def _disable_all(self) -> None:
        for kind in self._enabled_kinds:
            try:
                self._cupti.activity_disable(kind)
            except Exception:  # noqa: BLE001
                pass

    def _register_callbacks(self) -> None:
        """C callbacks through the shim when it is available; else cupti-python's Python callbacks."""
        cupti = self._cupti
        shim_path = H.CUPTI_SHIM.get()
        if shim_path:
            from cctrace.record.native import load_shim

            lib = loaded_libcupti(cupti)
            if lib is None:
                self.errors.append("libcupti not found in this process; using Python buffer callbacks")
            else:
                self._shim = load_shim(shim_path)
                register = address(ctypes.CDLL(lib).cuptiActivityRegisterCallbacks)
                path = str(raw_path(self.writer.directory, self.writer.pid)).encode()
                self._set_string_fields(ctypes.CDLL(lib))
                rc = self._shim.cct_start(register, path, BUFFER_BYTES)
                if rc != 0:
                    raise CuptiUnavailable(f"CUPTI refused the buffer callbacks (status {rc})")
                # CUPTI's flush period and an unforced flush deliver only full buffers (seen on the
                # H100): the flusher thread forces a flush each interval instead, through ctypes,
                # which lets go of the GIL for the call, and the shim takes the buffers in C
                self._flush_completed = ctypes.CDLL(lib).cuptiActivityFlushAll
                self._flush_completed.argtypes = [ctypes.c_uint32]
                self._flush_completed.restype = ctypes.c_int
                self.delivery = "c-shim"
                return
        else:
            self.errors.append((H.CUPTI_SHIM_ERROR.get() or "no buffer shim") + "; using Python buffer callbacks")
        cupti.activity_register_callbacks(self._buffer_requested, self._buffer_completed)
        self.delivery = "python-callbacks"

    def _set_string_fields(self, libcupti: ctypes.CDLL) -> None:
        """Tell the shim where kernel and NVTX names sit, so it copies them out with each buffer."""
        fields = string_fields(self._cupti)
        kinds = (ctypes.c_uint32 * len(fields))(*[k for k, _, _ in fields])
        offsets = (ctypes.c_uint32 * len(fields))(*[o for _, _, o in fields])
        nxt = address(libcupti.cuptiActivityGetNextRecord)
        if self._shim.cct_set_string_fields(nxt, kinds, offsets, len(fields)) != 0:
            self.errors.append("string fields not registered with the shim; kernel/NVTX names will be missing")

    def stop(self) -> None:
        cupti = self._cupti
        if self.detached and self.detach_state.startswith("finalize pending") and self._shim.cct_detach_cancel():
            self.detach_state = "kinds off; CUPTI stays attached (the program ended before its next CUDA call)"
        if cupti is None or self.forked or self.detached:
            return  # a detach handed everything over already
        try:
            cupti.activity_flush_all(1)
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"final flush failed: {e}")
        if self.api_hub:
            self._shim.cct_api_flush(1)
        self.drain()
        self._count_dropped()
        end = measure_offset(cupti.get_timestamp)
        self.clock["drift_ns"] = end["offset_ns"] - self._offset
        self.clock["end_measured_at_ns"] = end["measured_at_ns"]

    # ---- detach / attach (bounded tracing; benchmarks/cupti_inprocess.py) ----------------
    def detach(self, wait_s: float = 2.0) -> str:
        """Take CUPTI out of the process: recording stops, every activity kind goes off, the buffers
        are handed over, then CUPTI is finalized at the next CUDA call's exit (the shim's
        cupti_detach.h). Until attach() no CUPTI function is called. Returns the state reached."""
        if self._cupti is None or self.forked or self.detached:
            return self.detach_state
        if self.api_hub:
            self._shim.cct_api_flush(1)  # stops recording, writes the calls gathered so far
        self._disable_all()
        try:
            self._cupti.activity_flush_all(1)  # forced: half-full buffers too
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"flush at detach failed: {e}")
        self.detached = True  # drain() from here on makes no CUPTI call
        self._drain_python()
        self._count_dropped()
        self.detaches += 1
        if self._shim is None or not self._finalize_ready():
            self.detach_state = "kinds off; CUPTI stays attached (no C shim to finalize it at a CUDA call's exit)"
            return self.detach_state
        rc = self._shim.cct_detach(max(1, int(wait_s * 1000)))
        self.detach_state = {
            0: "finalized",
            1: "finalize pending: done at the program's next CUDA call (none returned while waiting)",
        }.get(rc, f"kinds off; CUPTI stays attached (no callback subscription to finalize from: {rc})")
        return self.detach_state

    def attach(self) -> str:
        """Back after detach(): CUPTI attached again (it initializes lazily), the same kinds on."""
        if not self.detached:
            return self.detach_state
        cupti = self._cupti
        pending = self.detach_state.startswith("finalize pending")
        cancelled = pending and self._shim.cct_detach_cancel() == 1
        finalized = self.detach_state == "finalized" or (pending and not cancelled)
        self.detached = False
        self.enabled, self._enabled_kinds = [], []
        try:
            if finalized:
                cupti.set_thread_id_type(cupti.ActivityThreadIdType.SYSTEM)
                rc = self._shim.cct_reattach()
                if rc != 0:
                    self.errors.append(f"buffer callbacks not registered again after a detach (status {rc})")
                self.api_hub = False
            elif self.api_hub:  # the subscription outlived the detach: select the calls again
                self.restrict_runtime("kernel" in self.kinds)
                self._shim.cct_api_resume()
            self._enable_kinds()
        except Exception as e:  # noqa: BLE001 - a failed attach leaves the program untraced, not broken
            self.errors.append(f"attach failed: {e}")
        self.detach_state = "attached"
        return self.detach_state

    def detach_health(self) -> dict:
        out = {"state": self.detach_state, "detaches": self.detaches}
        if self._shim is not None and self.detaches:
            out.update(detach_stats(self._shim))
        return out

    def _finalize_ready(self) -> bool:
        """Hand the shim cuptiFinalize & co. once; False when this libcupti lacks them."""
        if self._finalize_fns is None:
            lib = loaded_libcupti(self._cupti)
            try:
                cu = ctypes.CDLL(lib) if lib else None
                fns = (cu.cuptiFinalize, cu.cuptiEnableDomain, cu.cuptiSubscribe) if cu else None
            except AttributeError:
                fns = None
            self._finalize_fns = bool(fns) and self._shim.cct_detach_init(*map(address, fns)) == 0
        return bool(self._finalize_fns)

    def after_fork_child(self) -> None:
        """CUPTI does not survive fork(): in a forked child its buffers are never delivered and a
        flush blocks forever (seen on the H100: the child hung at exit). So a forked child makes
        no CUPTI call at all; it is recorded as untraced by CUPTI (host probes still see it)."""
        self.forked = True
        self.records = {}
        self._pending = deque()
        self.errors = []
        self._open_markers = {}

    def _count_dropped(self) -> None:
        try:
            n = ctypes.c_size_t(0)
            self._cupti.activity_get_num_dropped_records(0, 0, ctypes.addressof(n))
            self.dropped += int(n.value)
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"dropped-record count unavailable: {e}")

    def health(self) -> dict:
        return {
            "records": dict(self.records),
            "dropped": self.dropped,
            "errors": list(self.errors),
            "enabled": list(self.enabled),
            "runtime_filter": self.runtime_filter,
            "convert_cpu_ns": self.convert_cpu_ns,
            "delivery": self.delivery,
            "shim": {**shim_stats(self._shim), **api_stats(self._shim)} if self._shim is not None else None,
            "stacks": {**self.stacks, **(py_stacks.stats(self._shim) if self.api_hub else {})},
            "incomplete_dropped": dict(self.incomplete),
            "clock": self.clock,
            "detach": self.detach_health(),
        }

    # ---- callbacks ----------------------------------------------------------------------
    def _buffer_requested(self):
        return BUFFER_BYTES, 0

    def _buffer_completed(self, activities: list) -> None:
        """On CUPTI's thread, holding the GIL: only queue the list; conversion happens in drain()."""
        if not DISCARD:
            self._pending.append(activities)

    def drain(self) -> None:
        """Convert queued records to Arrow batches for the writer (called by the flusher thread).

        Records are grouped by kind and their fields read with C-level attrgetters; all per-column
        work (clock offset, enum names, flags) is vectorised in pyarrow. Between buffers the GIL is
        handed back (sleep(0)) so the traced program's main thread never waits behind a long drain.
        """
        if self.forked or self.detached:
            return  # detached: no CUPTI call at all (one would attach CUPTI again)
        if self.api_hub:
            self._shim.cct_api_flush(0)  # through ctypes, which lets go of the GIL for the write
        if self._flush_completed is not None and FLUSH_MODE != "none":
            rc = self._flush_completed(1)  # CUPTI_ACTIVITY_FLAG_FLUSH_FORCED: half-full buffers too
            if rc != 0 and len(self.errors) < 20:
                self.errors.append(f"periodic flush: CUPTI status {rc}")
        elif FLUSH_MODE == "manual" and self._cupti is not None and self.enabled:
            try:
                self._cupti.activity_flush_all(0)
            except Exception as e:  # noqa: BLE001
                if len(self.errors) < 20:
                    self.errors.append(f"periodic flush: {e}")
        self._drain_python()

    def _drain_python(self) -> None:
        """Convert what cupti-python's buffer callbacks queued (no C shim)."""
        pending = self._pending
        while pending:
            activities = pending.popleft()
            t0 = time.thread_time_ns()
            try:
                self._convert(activities)
            except Exception as e:  # noqa: BLE001 - never lose the tracer over one bad buffer
                if len(self.errors) < 20:
                    self.errors.append(f"converting records: {type(e).__name__}: {e}")
            self.convert_cpu_ns += time.thread_time_ns() - t0
            time.sleep(0)

    def _drop_incomplete(self, table: str, batch: pa.RecordBatch) -> pa.RecordBatch:
        """A forced flush may hand over records whose end CUPTI had not written yet (end < start):
        they are dropped and counted, never stored with a made-up duration."""
        ok = pc.fill_null(pc.greater_equal(batch.column("end_ns"), batch.column("start_ns")), False)
        kept = batch.filter(ok)
        if kept.num_rows < batch.num_rows:
            self.incomplete[table] = self.incomplete.get(table, 0) + batch.num_rows - kept.num_rows
        return kept

    def _convert(self, activities: list) -> None:
        activities.sort(key=_KIND)
        for kind, group in groupby(activities, _KIND):
            spec = self._specs.get(kind)
            if spec is None:
                continue
            table, getter, attrs, build = spec
            rows = list(map(getter, group))
            if not rows:
                continue
            columns = zip(attrs, zip(*rows, strict=True), strict=True)
            if build == self._marker:  # object_id is a struct object: stays Python
                raw = dict(columns)
            else:
                raw = {name: pa.array(col, _RAW_TYPES.get(name)) for name, col in columns}
            self._emit(table, build(raw, len(rows), kind))

    def _emit(self, table: str, cols: dict | None) -> None:
        if cols is None:
            return
        n = len(next(iter(cols.values())))
        if not n:
            return
        batch = _batch(table, cols, n, self.writer.pid)
        if "end_ns" in cols and "start_ns" in cols and table != "markers":
            batch = self._drop_incomplete(table, batch)
            if not batch.num_rows:
                return
        self.writer.add_batch(table, batch)
        self.records[table] = self.records.get(table, 0) + batch.num_rows

    def convert_api(self, data: bytes) -> None:
        """A block of the shim's callback records (API_DTYPE) -> api_calls rows, as RUNTIME gives."""
        recs = np.frombuffer(data, API_DTYPE, count=len(data) // API_DTYPE.itemsize)
        for domain in np.unique(recs["domain"]).tolist():
            sel = recs[recs["domain"] == domain]
            raw = {
                "cbid": pa.array(sel["cbid"]),
                "thread_id": pa.array(sel["tid"]),
                "start": pa.array(sel["start"]),
                "end": pa.array(sel["end"]),
                "correlation_id": pa.array(sel["correlation_id"]),
                "return_value": pa.array(sel["ret"]),
                "stack_id": pa.array(sel["stack_id"].astype(np.int64), mask=sel["stack_id"] == 0),
            }
            kind = self._runtime_kind if domain == self._runtime_domain else self._driver_kind
            self._emit("api_calls", self._api(raw, len(sel), kind))

    def _setup_specs(self) -> None:
        A = self._cupti.ActivityKind
        # the fields a memcpy and a memset record share (both are stream-ordered byte operations)
        byte_op_attrs = ("bytes", "start", "end", "device_id", "context_id", "stream_id", "correlation_id", "flags_")
        copy_attrs = ("copy_kind", "src_kind", "dst_kind", *byte_op_attrs)
        api_attrs = ("cbid", "thread_id", "start", "end", "correlation_id", "return_value")
        # MemcpyPtoP records have no stream id but name both devices
        p2p_attrs = (*(x for x in copy_attrs if x != "stream_id"), "src_device_id", "dst_device_id")
        specs = {
            A.MEMCPY: ("copies", copy_attrs, self._memcpy),
            A.MEMCPY2: ("copies", p2p_attrs, self._p2p),
            A.MEMSET: ("copies", ("memory_kind", *byte_op_attrs), self._memset),
            A.MEMORY2: (
                "allocs",
                (
                    "memory_operation_type",
                    "memory_kind",
                    "bytes",
                    "address",
                    "timestamp",
                    "device_id",
                    "context_id",
                    "stream_id",
                    "correlation_id",
                    "is_async",
                ),
                self._memory,
            ),
            A.SYNCHRONIZATION: (
                "syncs",
                ("type", "start", "end", "context_id", "stream_id", "correlation_id", "cuda_event_id"),
                self._sync,
            ),
            A.RUNTIME: ("api_calls", api_attrs, self._api),
            A.DRIVER: ("api_calls", api_attrs, self._api),
            A.CONCURRENT_KERNEL: (
                "kernels",
                ("name", "start", "end", "device_id", "context_id", "stream_id", "correlation_id"),
                self._kernel,
            ),
            A.MARKER: ("markers", ("flags_", "id", "name", "domain", "timestamp", "object_id"), self._marker),
            A.OVERHEAD: ("overheads", ("overhead_kind", "start", "end"), self._overhead),
        }
        self._specs = {int(k): (t, attrgetter(*attrs), attrs, b) for k, (t, attrs, b) in specs.items()}

    # ---- per-kind column builders: raw attribute arrays -> table columns ----------------------
    def _t(self, arr: pa.Array) -> pa.Array:
        return pc.add(arr.cast(pa.int64()), self._offset)

    def _on_stream(self, r: dict) -> dict:
        """The columns every stream-ordered GPU row (kernel, memcpy, memset) has, in table order."""
        return {
            "start_ns": self._t(r["start"]),
            "end_ns": self._t(r["end"]),
            "device_id": r["device_id"],
            "context_id": r["context_id"],
            "stream_id": r["stream_id"],
            "correlation_id": r["correlation_id"],
        }

    def _byte_op(self, r: dict, async_flag: int) -> dict:
        """The columns a memcpy and a memset row share, from the fields in `byte_op_attrs`."""
        return {
            "bytes": r["bytes"],
            **self._on_stream(r),
            "is_async": _flag(r["flags_"], async_flag),
        }

    def _memcpy(self, r: dict, n: int, _kind: int) -> dict:
        return {
            "op": _const("memcpy", n),
            "copy_kind": _names(r["copy_kind"], self._copy_kind),
            "src_kind": _names(r["src_kind"], self._mem_kind),
            "dst_kind": _names(r["dst_kind"], self._mem_kind),
            **self._byte_op(r, self._memcpy_async),
            "src_device_id": r["device_id"],
            "dst_device_id": r["device_id"],
        }

    def _p2p(self, r: dict, n: int, _kind: int) -> dict:
        cols = self._memcpy({**r, "stream_id": pa.nulls(n, pa.int64())}, n, _kind)
        cols.update(op=_const("p2p", n), src_device_id=r["src_device_id"], dst_device_id=r["dst_device_id"])
        return cols

    def _memset(self, r: dict, n: int, _kind: int) -> dict:
        kind = _names(r["memory_kind"], self._mem_kind)
        return {
            "op": _const("memset", n),
            "copy_kind": _const("memset", n),
            "src_kind": kind,
            "dst_kind": kind,
            **self._byte_op(r, self._memset_async),
        }

    def _memory(self, r: dict, n: int, _kind: int) -> dict:  # noqa: ARG002
        return {
            "op": _names(r["memory_operation_type"], self._alloc_op),
            "memory_kind": _names(r["memory_kind"], self._mem_kind),
            "bytes": r["bytes"],
            "address": r["address"],
            "ts_ns": self._t(r["timestamp"]),
            "device_id": r["device_id"],
            "context_id": r["context_id"],
            "stream_id": r["stream_id"],
            "correlation_id": r["correlation_id"],
            "is_async": pc.not_equal(r["is_async"], 0),
        }

    def _sync(self, r: dict, n: int, _kind: int) -> dict:  # noqa: ARG002
        return {
            "sync_type": _names(r["type"], self._sync_type),
            "start_ns": self._t(r["start"]),
            "end_ns": self._t(r["end"]),
            "context_id": r["context_id"],
            "stream_id": _invalid_u32(r["stream_id"]),
            "correlation_id": r["correlation_id"],
            "event_id": _invalid_u32(r["cuda_event_id"]),
        }

    def _api(self, r: dict, n: int, kind: int) -> dict:
        runtime = kind == self._runtime_kind
        domain = self._runtime_domain if runtime else self._driver_domain
        uniq = pc.unique(r["cbid"])
        names = pa.array([self._api_name(domain, int(c)) for c in uniq.to_pylist()], pa.string())
        return {
            "tid": r["thread_id"],
            "name": pc.take(names, pc.index_in(r["cbid"], value_set=uniq)),
            "domain": _const("runtime" if runtime else "driver", n),
            "start_ns": self._t(r["start"]),
            "end_ns": self._t(r["end"]),
            "correlation_id": r["correlation_id"],
            "return_value": r["return_value"],
            "stack_id": r.get("stack_id"),
        }

    def convert_stacks(self, data: bytes) -> None:
        """A block of the shim's interned stacks -> `stacks` rows, each with its call site marked."""
        cols = py_stacks.stack_rows(py_stacks.parse_stacks(data), self.stacks["skip"], self.stacks["keep"])
        self._emit("stacks", cols)

    def stacks_on(self, on: bool) -> None:
        """Stack capture on or off (benchmarks/cupti_inprocess.py switches it between blocks)."""
        if self.api_hub and self.stacks.get("state") == "on":
            self._shim.cct_stacks_enable(1 if on else 0)

    def _api_name(self, domain: int, cbid: int) -> str:
        key = (domain, cbid)
        name = self._api_names.get(key)
        if name is None:
            try:
                raw = self._cupti.get_callback_name(domain, cbid)
                name = _clean_name(raw.decode() if isinstance(raw, bytes) else str(raw))
            except Exception:  # noqa: BLE001
                name = f"cbid{cbid}"
            self._api_names[key] = name
        return name

    def _kernel(self, r: dict, n: int, _kind: int) -> dict:  # noqa: ARG002
        return {
            "name": r["name"],
            **self._on_stream(r),
        }

    def _marker(self, r: dict, n: int, _kind: int) -> dict | None:  # noqa: ARG002
        """NVTX start/end records pair up by id (few per step, so plain Python)."""
        out: dict[str, list] = {"tid": [], "name": [], "domain": [], "start_ns": [], "end_ns": []}
        off = self._offset
        for flags, mid, name, domain, ts, obj in zip(
            r["flags_"], r["id"], r["name"], r["domain"], r["timestamp"], r["object_id"], strict=True
        ):
            t = ts + off
            if flags & self._marker_start:
                self._open_markers[mid] = (name, domain, t, _marker_tid(obj))
            elif flags & self._marker_end:
                opened = self._open_markers.pop(mid, None)
                if opened is not None:
                    self._add_marker(out, opened[3], opened[0], opened[1], opened[2], t)
            elif flags & self._marker_instant:
                self._add_marker(out, _marker_tid(obj), name, domain, t, t)
        return out

    @staticmethod
    def _add_marker(out: dict, tid: int, name, domain, start: int, end: int) -> None:
        out["tid"].append(tid)
        out["name"].append(name or "")
        out["domain"].append(domain or "")
        out["start_ns"].append(start)
        out["end_ns"].append(end)

    def _overhead(self, r: dict, n: int, _kind: int) -> dict:  # noqa: ARG002
        return {
            "kind": _names(r["overhead_kind"], self._overhead_kind),
            "start_ns": self._t(r["start"]),
            "end_ns": self._t(r["end"]),
        }


_VERSION_SUFFIX = re.compile(r"_v\d+$")


_KIND = attrgetter("kind")
_RAW_TYPES = {"address": pa.uint64()}  # the rest infer as int64 / string


def _const(value, n: int) -> pa.Array:
    return pa.array([value] * n)


def _names(codes: pa.Array, mapping: dict[int, str]) -> pa.Array:
    """Enum codes -> names, vectorised; codes outside the map become 'unknown'."""
    keys = pa.array(list(mapping), pa.int64())
    names = pa.array([*mapping.values(), "unknown"], pa.string())
    idx = pc.fill_null(pc.index_in(codes.cast(pa.int64()), value_set=keys), len(mapping))
    return pc.take(names, idx)


def _flag(flags: pa.Array, mask: int) -> pa.Array:
    return pc.not_equal(pc.bit_wise_and(flags.cast(pa.int64()), mask), 0)


def _invalid_u32(arr: pa.Array) -> pa.Array:
    arr = arr.cast(pa.int64())
    return pc.if_else(pc.equal(arr, 0xFFFFFFFF), -1, arr)


def _batch(table: str, cols: dict, n: int, pid: int) -> pa.RecordBatch:
    sch = S.schema(table)
    arrays = []
    for field in sch:
        v = cols.get(field.name)
        if v is None:
            const = {"pid": pid, "source": "cupti"}.get(field.name)
            v = pa.nulls(n, field.type) if const is None else pa.array([const] * n, field.type)
        elif not isinstance(v, pa.Array):
            v = pa.array(v, field.type)
        arrays.append(v.cast(field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=sch)


def _clean_name(name: str) -> str:
    """`cudaMemcpyAsync_v3020` -> `cudaMemcpyAsync`; driver names keep their `_v2` (the symbol)."""
    return _VERSION_SUFFIX.sub("", name) if name.startswith("cuda") else name


# string-pointer fields: (activity kind, cupti-python dtype, field)
STRING_FIELDS = (
    ("CONCURRENT_KERNEL", "activity_kernel10_dtype", "name"),
    ("MARKER", "activity_marker2_dtype", "name"),
    ("MARKER", "activity_marker2_dtype", "domain"),
)


def string_fields(cupti) -> list[tuple[int, str, int]]:
    """(kind value, field name, byte offset) of each string pointer, from cupti-python's dtypes."""
    out = []
    for kind, dtype_name, field in STRING_FIELDS:
        dtype = getattr(cupti, dtype_name, None)
        if dtype is not None and field in (dtype.fields or {}):
            out.append((int(getattr(cupti.ActivityKind, kind)), field, int(dtype.fields[field][1])))
    return out


def raw_path(directory, pid: int):
    """Where the shim appends this process's completed CUPTI buffers."""
    from pathlib import Path

    return Path(directory) / f"cupti.{pid}{RAW_SUFFIX}"


def loaded_libcupti(cupti) -> str | None:
    """The path of the libcupti cupti-python uses, for the C helpers that call it directly."""
    cupti.get_timestamp()  # makes cupti-python load libcupti, so it shows in our mappings
    return _mapped_library("libcupti")


def _mapped_library(prefix: str) -> str | None:
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(" ", 1)[-1].strip()
                if os.path.basename(path).startswith(prefix) and ".so" in path:
                    return path
    except OSError:
        return None
    return None


def _u32(v: int) -> int:
    return -1 if v == 0xFFFFFFFF else v


def _marker_tid(obj) -> int:
    try:
        return int(obj.pt.thread_id)
    except Exception:  # noqa: BLE001
        return -1
