"""Decoding the CUPTI buffers that the C shim appended to `cupti.<pid>.cuptiraw` into Arrow shards.

This runs after the traced process (in `cctrace record` once the command ends, or in `cctrace load`),
on a host with cupti-python and libcupti: libcupti's cuptiActivityGetNextRecord walks each buffer and
cupti-python's record classes read the fields in place (`from_ptr`), so no record layout is
hard-coded here. A truncated last buffer (SIGKILL mid-write) is skipped and reported.
"""

from __future__ import annotations

import ctypes
import json
import struct
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from cctrace.record.sources.cupti_source import RAW_SUFFIX, CuptiSource
from cctrace.record.sources.py_stacks import STK_MAGIC
from cctrace.record.sources.raw_blocks import read_blocks
from cctrace.trace.manifest import proc_record_path
from cctrace.trace.shards import ShardWriter

MAGIC = 0x3130425554504343
STR_MAGIC = 0x3130525453544343
API_MAGIC = 0x3130495041544343  # runtime calls the shim recorded through CUPTI callbacks
PROGRESS_EVERY_S = 3.0
STR_ENTRY = struct.Struct("<QI")

# record class per activity kind name, as cupti-python 13.0 names them
RECORD_CLASSES = {
    "MEMCPY": ("ActivityMemcpy6", "activity_memcpy6_dtype"),
    "MEMCPY2": ("ActivityMemcpyPtoP4", "activity_memcpy_pto_p4_dtype"),
    "MEMSET": ("ActivityMemset4", "activity_memset4_dtype"),
    "MEMORY2": ("ActivityMemory4", "activity_memory4_dtype"),
    "SYNCHRONIZATION": ("ActivitySynchronization2", "activity_synchronization2_dtype"),
    "RUNTIME": ("ActivityAPI", "activity_api_dtype"),
    "DRIVER": ("ActivityAPI", "activity_api_dtype"),
    "CONCURRENT_KERNEL": ("ActivityKernel10", "activity_kernel10_dtype"),
    "MARKER": ("ActivityMarker2", "activity_marker2_dtype"),
    "OVERHEAD": ("ActivityOverhead3", "activity_overhead3_dtype"),
}


class RawDecodeUnavailable(RuntimeError):
    pass


def raw_files(trace_dir: Path) -> list[Path]:
    return sorted(Path(trace_dir).glob(f"cupti.*{RAW_SUFFIX}"))


def parse_strings(data: bytes) -> dict[int, str]:
    out, pos = {}, 0
    while pos + STR_ENTRY.size <= len(data):
        ptr, n = STR_ENTRY.unpack_from(data, pos)
        pos += STR_ENTRY.size
        out[ptr] = data[pos : pos + n].decode("utf-8", "replace")
        pos += n
    return out


def iter_buffers(path: Path) -> Iterator[tuple[bytes | None, str | None]]:
    """Yield each whole buffer of a raw file; a damaged tail yields (None, problem) and stops."""
    for data, _strings, problem in iter_buffers_with_strings(path):
        yield data, problem


def iter_buffers_with_strings(
    path: Path, on_api: Callable[[bytes], None] | None = None, on_stacks: Callable[[bytes], None] | None = None
) -> Iterator[tuple[bytes | None, dict, str | None]]:
    """Each buffer with the strings (pointer -> text) of its records; the strings follow it. The
    shim's blocks of callback-recorded API calls go to `on_api` on the way (whole ones only), its
    blocks of interned Python stacks to `on_stacks`."""
    pending: bytes | None = None
    strings: dict[int, str] = {}
    for magic, data, problem in read_blocks(path, (MAGIC, STR_MAGIC, API_MAGIC, STK_MAGIC)):
        if problem:
            if pending is not None:
                yield pending, strings, None
            yield None, {}, problem
            return
        if magic == STR_MAGIC:
            strings = parse_strings(data or b"")
            continue
        if magic == API_MAGIC:
            if on_api is not None and data:
                on_api(data)
            continue
        if magic == STK_MAGIC:
            if on_stacks is not None and data:
                on_stacks(data)
            continue
        if pending is not None:
            yield pending, strings, None
        pending, strings = data, {}
    if pending is not None:
        yield pending, strings, None


class _Walker:
    """libcupti's record iterator plus cupti-python's record classes."""

    def __init__(self) -> None:
        try:
            from cupti import cupti
        except ImportError as e:
            raise RawDecodeUnavailable(f"cupti-python is needed to decode CUPTI buffers ({e})") from None
        self.cupti = cupti
        cupti.get_timestamp()
        from cctrace.record.sources.cupti_source import _mapped_library

        lib = _mapped_library("libcupti")
        if lib is None:
            raise RawDecodeUnavailable("libcupti is not loaded; cannot walk CUPTI buffers")
        self.next_record = ctypes.CDLL(lib).cuptiActivityGetNextRecord
        self.next_record.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]
        self.next_record.restype = ctypes.c_int
        from cctrace.record.sources.cupti_source import string_fields

        self.string_fields: dict[int, list[tuple[str, int]]] = {}
        for kind, field, offset in string_fields(cupti):
            self.string_fields.setdefault(kind, []).append((field, offset))
        self.classes = {}
        for kind, (cls, dtype) in RECORD_CLASSES.items():
            k = getattr(cupti.ActivityKind, kind, None)
            c = getattr(cupti, cls, None)
            if k is not None and c is not None:
                self.classes[int(k)] = [c, getattr(cupti, dtype, None)]

    def records(self, data: bytes, strings: dict[int, str]) -> tuple[list, object]:
        """Record objects of one buffer. String fields point into the recording process, so for
        records that have them a plain copy is made with the strings the shim saved."""
        mem = bytearray(data)
        buf = (ctypes.c_char * len(mem)).from_buffer(mem)
        base = ctypes.addressof(buf)
        rec = ctypes.c_void_p(None)
        out = []
        classes, with_strings = self.classes, self.string_fields
        while self.next_record(buf, len(mem), ctypes.byref(rec)) == 0:
            addr = rec.value
            kind = ctypes.c_uint32.from_address(addr).value
            entry = classes.get(kind)
            if entry is None:
                continue
            cls, dtype = entry
            obj = None
            if dtype is not None:  # a numpy view: cupti-python's buffer manager never sees our memory
                try:
                    obj = cls.from_data(np.frombuffer(mem, dtype=dtype, count=1, offset=addr - base))
                except (TypeError, ValueError):
                    entry[1] = None
            if obj is None:
                obj = cls.from_ptr(addr, True)
            fields = with_strings.get(kind)
            if fields:
                obj = _WithStrings(
                    obj, {f: strings.get(ctypes.c_uint64.from_address(addr + off).value, "") for f, off in fields}
                )
            out.append(obj)
        return out, (mem, buf)  # the memory must outlive the records that point into it


class _WithStrings:
    """A record whose string fields come from the saved strings, everything else from the record."""

    __slots__ = ("_rec", "_strings")

    def __init__(self, rec, strings: dict[str, str]) -> None:
        self._rec = rec
        self._strings = strings

    def __getattr__(self, name: str):
        s = self._strings.get(name)
        return s if s is not None else getattr(self._rec, name)


def _quiet_buffer_manager(unraisable) -> None:
    """cupti-python's record objects built with from_data() release a buffer reference that its
    BufferManager never took (KeyError in __dealloc__, once per record): harmless, and not ours to
    print thousands of times. Anything else goes to the previous hook."""
    if isinstance(unraisable.exc_value, KeyError) and "Activity" in repr(unraisable.object):
        return
    _previous_hook(unraisable)


_previous_hook = sys.unraisablehook
_previous_excepthook = sys.excepthook


def _quiet_buffer_manager_print(exc_type, exc, tb) -> None:
    """The same KeyError, printed with its traceback through sys.excepthook (Cython's noexcept path)."""
    last = tb
    while last is not None and last.tb_next is not None:
        last = last.tb_next
    if exc_type is KeyError and last is not None and "buffer_manager" in last.tb_frame.f_code.co_filename:
        return
    _previous_excepthook(exc_type, exc, tb)


def decode_trace(trace_dir: Path, progress: Callable[[str], None] | None = None) -> list[str]:
    """Decode every raw CUPTI file of a trace into shards; returns problems. Raw files are removed
    once decoded (what they held is in the shards). `progress` hears how far it is every few seconds:
    a long run with kernels recorded leaves millions of records, read one by one."""
    files = raw_files(trace_dir)
    if not files:
        return []
    global _previous_hook, _previous_excepthook
    _previous_hook, sys.unraisablehook = sys.unraisablehook, _quiet_buffer_manager
    _previous_excepthook, sys.excepthook = sys.excepthook, _quiet_buffer_manager_print
    try:
        return _decode_files(trace_dir, files, progress)
    finally:
        sys.unraisablehook = _previous_hook
        sys.excepthook = _previous_excepthook


def _decode_files(trace_dir: Path, files: list[Path], progress: Callable[[str], None] | None = None) -> list[str]:
    walker = _Walker()
    problems = []
    total = sum(p.stat().st_size for p in files) or 1
    done = 0
    t0 = last = time.monotonic()
    for path in files:
        pid = int(path.name.split(".")[1])
        rec_path = proc_record_path(trace_dir, pid)
        proc = json.loads(rec_path.read_text()) if rec_path.exists() else {}
        cupti_health = (proc.get("sources") or {}).get("cupti") or {}
        offset = (cupti_health.get("clock") or {}).get("offset_ns")
        if offset is None:
            problems.append(f"{path.name}: no clock mapping recorded for pid {pid}; CUPTI times left unmapped")
            offset = 0
        writer = ShardWriter(trace_dir, pid)
        src = CuptiSource(writer, tuple(proc.get("kinds") or ()))
        recorded = cupti_health.get("stacks") or {}  # the call-site patterns the traced process used
        src.stacks.update({k: recorded[k] for k in ("skip", "keep") if k in recorded})
        src.bind(walker.cupti)
        src._offset = offset
        n_buffers = 0
        for data, strings, problem in iter_buffers_with_strings(path, src.convert_api, src.convert_stacks):
            if problem:
                problems.append(f"{path.name}: {problem}; kept {n_buffers} whole buffers")
                break
            records, keep = walker.records(data, strings)
            src._convert(records)
            del records, keep
            n_buffers += 1
            done += len(data)
            if progress and time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                progress(f"decoding CUPTI records: {done / total:.0%} of {total / 2**20:,.0f} MB ({last - t0:.0f} s)")
        writer.close()
        problems.extend(f"{path.name}: {e}" for e in src.errors)
        if proc:
            health = proc.setdefault("sources", {}).setdefault("cupti", {})
            health["records"] = {**(health.get("records") or {}), **src.records}
            health["decoded_buffers"] = n_buffers
            health["incomplete_dropped"] = dict(src.incomplete)
            proc["rows_written"] = {**(proc.get("rows_written") or {}), **writer.rows_written}
            from cctrace.trace.manifest import write_json_atomic

            write_json_atomic(rec_path, proc)
        path.unlink()
    return problems


def decode_pending(trace_dir: Path, progress: Callable[[str], None] | None = None) -> list[str]:
    """CUPTI buffers a killed recording left undecoded are decoded now, where cupti-python exists."""
    if not raw_files(trace_dir):
        return []
    try:
        return decode_trace(trace_dir, progress)
    except RawDecodeUnavailable as e:
        return [f"{len(raw_files(trace_dir))} raw CUPTI file(s) left undecoded: {e}"]
