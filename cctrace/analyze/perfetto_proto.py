"""Perfetto's native trace format, written without a protobuf library: a `Trace` is a sequence of
`TracePacket`s (field 1), each carrying a track descriptor or a track event. Only the fields cctrace
uses are here, each field number written once (from perfetto/protos/perfetto/trace/*.proto; the
test decodes the output with the `perfetto` package's generated protos)."""

from __future__ import annotations

import functools
import struct

# field numbers (TracePacket, TrackDescriptor, ProcessDescriptor, ThreadDescriptor, TrackEvent, DebugAnnotation)
TRACE_PACKET = 1
PKT_TIMESTAMP, PKT_SEQ_ID, PKT_TRACK_EVENT, PKT_SEQ_FLAGS, PKT_TRACK_DESCRIPTOR = 8, 10, 11, 13, 60
TD_UUID, TD_NAME, TD_PROCESS, TD_THREAD, TD_PARENT, TD_COUNTER = 1, 2, 3, 4, 5, 8
PD_PID, PD_NAME = 1, 6
THD_PID, THD_TID, THD_NAME = 1, 2, 5
CD_UNIT = 3
UNIT_SIZE_BYTES = 3
TE_ANNOTATIONS, TE_TYPE, TE_TRACK, TE_CATEGORIES, TE_NAME, TE_COUNTER = 4, 9, 11, 22, 23, 30
TE_FLOW_IDS, TE_TERMINATING_FLOW_IDS = 47, 48
DA_INT, DA_DOUBLE, DA_STRING, DA_NAME = 4, 5, 6, 10
SLICE_BEGIN, SLICE_END, COUNTER = 1, 2, 4
SEQ_INCREMENTAL_STATE_CLEARED, SEQ_NEEDS_INCREMENTAL_STATE = 1, 2
SEQUENCE_ID = 1  # one writer: every packet on one sequence

VARINT, FIXED64, LEN = 0, 1, 2


def _encode_varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 as two's complement, as protobuf does
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [_encode_varint(n) for n in range(1 << 14)]  # keys, lengths, small ids: a lookup, not a loop


def _varint(n: int) -> bytes:
    return _SMALL[n] if 0 <= n < 16384 else _encode_varint(n)


def _key(field: int, wire: int) -> bytes:
    return _SMALL[field << 3 | wire]


def vint(field: int, n: int) -> bytes:
    return _SMALL[field << 3 | VARINT] + _varint(int(n))


def fixed64(field: int, n: int) -> bytes:
    return _SMALL[field << 3 | FIXED64] + struct.pack("<Q", n & ((1 << 64) - 1))


def double(field: int, x: float) -> bytes:
    return _SMALL[field << 3 | FIXED64] + struct.pack("<d", x)


def blob(field: int, data: bytes) -> bytes:
    return _SMALL[field << 3 | LEN] + _varint(len(data)) + data


@functools.lru_cache(maxsize=8192)
def text(field: int, s: str) -> bytes:
    """A string field; names, categories and annotation keys repeat, so their encodings are cached."""
    return blob(field, s.encode("utf-8", "replace"))


_TAIL_FIRST = vint(PKT_SEQ_ID, SEQUENCE_ID) + vint(PKT_SEQ_FLAGS, SEQ_INCREMENTAL_STATE_CLEARED)
_TAIL = vint(PKT_SEQ_ID, SEQUENCE_ID) + vint(PKT_SEQ_FLAGS, SEQ_NEEDS_INCREMENTAL_STATE)


def packet(body: bytes, first: bool = False) -> bytes:
    """One TracePacket as a Trace's repeated field 1 (so a file of them is a valid `Trace`)."""
    return blob(TRACE_PACKET, body + (_TAIL_FIRST if first else _TAIL))


def process_track(uuid: int, pid: int, name: str) -> bytes:
    return blob(PKT_TRACK_DESCRIPTOR, vint(TD_UUID, uuid) + blob(TD_PROCESS, vint(PD_PID, pid) + text(PD_NAME, name)))


def thread_track(uuid: int, parent: int, pid: int, tid: int, name: str) -> bytes:
    thread = vint(THD_PID, pid) + vint(THD_TID, tid) + text(THD_NAME, name)
    return blob(PKT_TRACK_DESCRIPTOR, vint(TD_UUID, uuid) + vint(TD_PARENT, parent) + blob(TD_THREAD, thread))


def named_track(uuid: int, parent: int, name: str, counter: bool = False) -> bytes:
    body = vint(TD_UUID, uuid) + vint(TD_PARENT, parent) + text(TD_NAME, name)
    if counter:
        body += blob(TD_COUNTER, vint(CD_UNIT, UNIT_SIZE_BYTES))
    return blob(PKT_TRACK_DESCRIPTOR, body)


def annotation(name: str, value) -> bytes:
    if isinstance(value, bool | int):
        v = vint(DA_INT, int(value))
    elif isinstance(value, float):
        v = double(DA_DOUBLE, value)
    else:
        v = text(DA_STRING, str(value))
    return blob(TE_ANNOTATIONS, text(DA_NAME, name) + v)


def slice_begin(
    ts: int, track: int, name: str, category: str, args: dict, flow_out: int | None, flow_in: int | None
) -> bytes:
    body = vint(TE_TYPE, SLICE_BEGIN) + vint(TE_TRACK, track) + text(TE_NAME, name) + text(TE_CATEGORIES, category)
    body += b"".join(annotation(k, v) for k, v in args.items() if v is not None)
    if flow_out is not None:
        body += fixed64(TE_FLOW_IDS, flow_out)
    if flow_in is not None:
        body += fixed64(TE_TERMINATING_FLOW_IDS, flow_in)
    return vint(PKT_TIMESTAMP, ts) + blob(PKT_TRACK_EVENT, body)


def slice_end(ts: int, track: int) -> bytes:
    return vint(PKT_TIMESTAMP, ts) + blob(PKT_TRACK_EVENT, vint(TE_TYPE, SLICE_END) + vint(TE_TRACK, track))


def counter(ts: int, track: int, value: int) -> bytes:
    return vint(PKT_TIMESTAMP, ts) + blob(
        PKT_TRACK_EVENT, vint(TE_TYPE, COUNTER) + vint(TE_TRACK, track) + vint(TE_COUNTER, value)
    )
