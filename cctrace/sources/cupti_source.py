"""CUPTI activity records (through cupti-python) -> rows of the shared tables.

Only the kinds that describe crossings are on by default (copies, memsets, allocations,
synchronizations, the runtime calls that move/allocate/free/synchronize/launch, and CUPTI's
overhead records). The buffer callback runs on CUPTI's worker thread: it converts records to
plain tuples and hands them to the shard writer under a short lock, never doing I/O and never
calling into CUDA, so it cannot deadlock with the traced program's threads.
"""

from __future__ import annotations

import ctypes
import os
import re
import time

from cctrace.clock import measure_offset
from cctrace.shards import ShardWriter

# runtime calls kept when RUNTIME records are on; everything else is switched off by callback id
RUNTIME_KEEP = re.compile(
    r"^cuda(Memcpy|Memset|Malloc|Free|HostAlloc|HostRegister|HostUnregister|MemPrefetch|"
    r"StreamSynchronize|DeviceSynchronize|EventSynchronize|StreamWaitEvent|StreamQuery|EventQuery|"
    r"LaunchKernel|LaunchCooperativeKernel|LaunchKernelExC|GraphLaunch|MemcpyBatch)"
)
BUFFER_BYTES = 8 * 1024 * 1024

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

COPY_COLS = (
    "pid",
    "op",
    "copy_kind",
    "src_kind",
    "dst_kind",
    "bytes",
    "start_ns",
    "end_ns",
    "device_id",
    "context_id",
    "stream_id",
    "correlation_id",
    "is_async",
    "src_device_id",
    "dst_device_id",
    "source",
)
ALLOC_COLS = (
    "pid",
    "op",
    "memory_kind",
    "bytes",
    "address",
    "ts_ns",
    "device_id",
    "context_id",
    "stream_id",
    "correlation_id",
    "is_async",
    "source",
)
API_COLS = ("pid", "tid", "name", "domain", "start_ns", "end_ns", "correlation_id", "return_value", "source")
SYNC_COLS = (
    "pid",
    "sync_type",
    "start_ns",
    "end_ns",
    "context_id",
    "stream_id",
    "correlation_id",
    "event_id",
    "source",
)
KERNEL_COLS = ("pid", "name", "start_ns", "end_ns", "device_id", "context_id", "stream_id", "correlation_id", "source")
MARKER_COLS = ("pid", "tid", "name", "domain", "start_ns", "end_ns", "source")
OVERHEAD_COLS = ("pid", "kind", "start_ns", "end_ns", "source")


class CuptiUnavailable(RuntimeError):
    """CUPTI cannot trace this process; the message says why in one line."""


def _enum_map(enum_cls, names: dict[str, str], default: str = "unknown") -> dict[int, str]:
    out: dict[int, str] = {}
    for member in enum_cls:
        out[int(member)] = names.get(member.name, default)
    return out


class CuptiSource:
    def __init__(self, writer: ShardWriter, kinds: tuple[str, ...], flush_s: float = 1.0) -> None:
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
        self._api_names: dict[tuple[int, int], str] = {}

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
        self._cupti = cupti
        self._pid = self.writer.pid
        A = cupti.ActivityKind
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

        self._handlers = {
            int(A.MEMCPY): self._memcpy,
            int(A.MEMCPY2): self._p2p,
            int(A.MEMSET): self._memset,
            int(A.MEMORY2): self._memory,
            int(A.SYNCHRONIZATION): self._sync,
            int(A.RUNTIME): self._api,
            int(A.DRIVER): self._api,
            int(A.CONCURRENT_KERNEL): self._kernel,
            int(A.MARKER): self._marker,
            int(A.OVERHEAD): self._overhead,
        }
        kind_of = {
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
        unknown = [k for k in self.kinds if k not in kind_of]
        if unknown:
            raise CuptiUnavailable(f"unknown activity kind(s) {', '.join(unknown)}; known: {', '.join(kind_of)}")
        try:
            cupti.set_thread_id_type(cupti.ActivityThreadIdType.SYSTEM)
            cupti.activity_register_callbacks(self._buffer_requested, self._buffer_completed)
        except Exception as e:  # noqa: BLE001 - cuptiError and friends
            raise CuptiUnavailable(f"CUPTI refused to start ({e}); another profiler may hold it") from None
        for name in self.kinds:
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
        if "runtime" in self.enabled:
            self._restrict_runtime()
        if "nvtx" in self.enabled:
            self._inject_nvtx()
        try:
            cupti.activity_flush_period(max(1, int(self.flush_s * 1000)))
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"flush period not set: {e}")
        self.clock = measure_offset(cupti.get_timestamp)
        self._offset = self.clock["offset_ns"]

    def _restrict_runtime(self) -> None:
        """Keep RUNTIME records only for the calls that move, allocate, free, sync or launch."""
        cupti = self._cupti
        kept = off = 0
        misses = 0
        for cbid in range(1, 2000):
            try:
                name = cupti.get_callback_name(self._runtime_domain, cbid)
            except Exception:  # noqa: BLE001 - past the last id, or a retired id
                misses += 1
                if misses > 50:
                    break
                continue
            misses = 0
            name = name.decode() if isinstance(name, bytes) else str(name)
            self._api_names[(self._runtime_domain, cbid)] = _clean_name(name)
            keep = bool(RUNTIME_KEEP.match(name))
            try:
                cupti.activity_enable_runtime_api(cbid, 1 if keep else 0)
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

    def stop(self) -> None:
        cupti = self._cupti
        if cupti is None:
            return
        try:
            cupti.activity_flush_all(1)
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"final flush failed: {e}")
        self._count_dropped()
        end = measure_offset(cupti.get_timestamp)
        self.clock["drift_ns"] = end["offset_ns"] - self._offset
        self.clock["end_measured_at_ns"] = end["measured_at_ns"]

    def after_fork_child(self) -> None:
        """CUPTI's worker thread does not survive fork; what the child records is reported as-is."""
        self._pid = self.writer.pid
        self.records = {}
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
            "clock": self.clock,
        }

    # ---- callbacks ------------------------------------------------------------------------
    def _buffer_requested(self):
        return BUFFER_BYTES, 0

    def _buffer_completed(self, activities: list) -> None:
        t0 = time.thread_time_ns()  # CPU time: wall time would count GIL waits
        out: dict[str, list] = {}
        handlers = self._handlers
        try:
            for a in activities:
                h = handlers.get(a.kind)
                if h is not None:
                    h(a, out)
            cols = _COLS
            for table, rows in out.items():
                self.writer.extend(table, cols[table], rows)
                self.records[table] = self.records.get(table, 0) + len(rows)
        except Exception as e:  # noqa: BLE001 - never raise into CUPTI's thread
            if len(self.errors) < 20:
                self.errors.append(f"buffer callback: {type(e).__name__}: {e}")
        self.records["_callback_cpu_ns"] = self.records.get("_callback_cpu_ns", 0) + time.thread_time_ns() - t0

    def _memcpy(self, a, out) -> None:
        off = self._offset
        out.setdefault("copies", []).append(
            (
                self._pid,
                "memcpy",
                self._copy_kind.get(a.copy_kind, "unknown"),
                self._mem_kind.get(a.src_kind, "unknown"),
                self._mem_kind.get(a.dst_kind, "unknown"),
                a.bytes,
                a.start + off,
                a.end + off,
                a.device_id,
                a.context_id,
                a.stream_id,
                a.correlation_id,
                bool(a.flags_ & self._memcpy_async),
                a.device_id,
                a.device_id,
                "cupti",
            )
        )

    def _p2p(self, a, out) -> None:
        off = self._offset
        out.setdefault("copies", []).append(
            (
                self._pid,
                "p2p",
                self._copy_kind.get(a.copy_kind, "PtoP"),
                self._mem_kind.get(a.src_kind, "unknown"),
                self._mem_kind.get(a.dst_kind, "unknown"),
                a.bytes,
                a.start + off,
                a.end + off,
                a.device_id,
                a.context_id,
                getattr(a, "stream_id", -1),
                a.correlation_id,
                True,
                a.src_device_id,
                a.dst_device_id,
                "cupti",
            )
        )

    def _memset(self, a, out) -> None:
        off = self._offset
        kind = self._mem_kind.get(a.memory_kind, "unknown")
        out.setdefault("copies", []).append(
            (
                self._pid,
                "memset",
                "memset",
                kind,
                kind,
                a.bytes,
                a.start + off,
                a.end + off,
                a.device_id,
                a.context_id,
                a.stream_id,
                a.correlation_id,
                bool(a.flags_ & self._memset_async),
                a.device_id,
                a.device_id,
                "cupti",
            )
        )

    def _memory(self, a, out) -> None:
        out.setdefault("allocs", []).append(
            (
                self._pid,
                self._alloc_op.get(a.memory_operation_type, "unknown"),
                self._mem_kind.get(a.memory_kind, "unknown"),
                a.bytes,
                a.address,
                a.timestamp + self._offset,
                a.device_id,
                a.context_id,
                a.stream_id,
                a.correlation_id,
                bool(a.is_async),
                "cupti",
            )
        )

    def _sync(self, a, out) -> None:
        off = self._offset
        out.setdefault("syncs", []).append(
            (
                self._pid,
                self._sync_type.get(a.type, "unknown"),
                a.start + off,
                a.end + off,
                a.context_id,
                _u32(a.stream_id),
                a.correlation_id,
                _u32(a.cuda_event_id),
                "cupti",
            )
        )

    def _api(self, a, out) -> None:
        off = self._offset
        domain = self._runtime_domain if a.kind == self._runtime_kind else self._driver_domain
        key = (domain, a.cbid)
        name = self._api_names.get(key)
        if name is None:
            try:
                raw = self._cupti.get_callback_name(domain, a.cbid)
                name = _clean_name(raw.decode() if isinstance(raw, bytes) else str(raw))
            except Exception:  # noqa: BLE001
                name = f"cbid{a.cbid}"
            self._api_names[key] = name
        out.setdefault("api_calls", []).append(
            (
                self._pid,
                a.thread_id,
                name,
                "runtime" if domain == self._runtime_domain else "driver",
                a.start + off,
                a.end + off,
                a.correlation_id,
                a.return_value,
                "cupti",
            )
        )

    def _kernel(self, a, out) -> None:
        off = self._offset
        out.setdefault("kernels", []).append(
            (
                self._pid,
                a.name,
                a.start + off,
                a.end + off,
                a.device_id,
                a.context_id,
                a.stream_id,
                a.correlation_id,
                "cupti",
            )
        )

    def _marker(self, a, out) -> None:
        flags = a.flags_
        ts = a.timestamp + self._offset
        if flags & self._marker_start:
            self._open_markers[a.id] = (a.name, a.domain, ts, _marker_tid(a))
        elif flags & self._marker_end:
            opened = self._open_markers.pop(a.id, None)
            if opened is not None:
                name, domain, start, tid = opened
                out.setdefault("markers", []).append((self._pid, tid, name, domain or "", start, ts, "nvtx"))
        elif flags & self._marker_instant:
            out.setdefault("markers", []).append((self._pid, _marker_tid(a), a.name, a.domain or "", ts, ts, "nvtx"))

    def _overhead(self, a, out) -> None:
        off = self._offset
        out.setdefault("overheads", []).append(
            (
                self._pid,
                self._overhead_kind.get(a.overhead_kind, str(a.overhead_kind)),
                a.start + off,
                a.end + off,
                "cupti",
            )
        )


_COLS = {
    "copies": COPY_COLS,
    "allocs": ALLOC_COLS,
    "api_calls": API_COLS,
    "syncs": SYNC_COLS,
    "kernels": KERNEL_COLS,
    "markers": MARKER_COLS,
    "overheads": OVERHEAD_COLS,
}
_VERSION_SUFFIX = re.compile(r"_v\d+$")


def _clean_name(name: str) -> str:
    """`cudaMemcpyAsync_v3020` -> `cudaMemcpyAsync`; driver names keep their `_v2` (the symbol)."""
    return _VERSION_SUFFIX.sub("", name) if name.startswith("cuda") else name


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


def _marker_tid(a) -> int:
    try:
        return int(a.object_id.pt.thread_id)
    except Exception:  # noqa: BLE001
        return -1
