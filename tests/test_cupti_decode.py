"""Decoding CUPTI activity records into the shared tables, without a GPU.

CUPTI cannot run here, so the records are plain objects with the attribute names and enum values
of cupti-python's classes (CUpti_ActivityMemcpy6, CUpti_ActivityAPI, ...); what is under test is
cctrace's conversion: kind grouping, clock offset, enum names, flags, NVTX pairing, u32 sentinels.
"""

import enum
from types import SimpleNamespace as NS

from cctrace.record.sources.cupti_source import CuptiSource
from cctrace.trace.shards import ShardWriter, read_shard


class ActivityKind(enum.IntEnum):
    MEMCPY = 1
    MEMSET = 2
    DRIVER = 4
    RUNTIME = 5
    CONCURRENT_KERNEL = 10
    MARKER = 12
    OVERHEAD = 16
    MEMCPY2 = 22
    SYNCHRONIZATION = 38
    MEMORY2 = 49


class ActivityMemcpyKind(enum.IntEnum):
    UNKNOWN = 0
    HTOD = 1
    DTOH = 2
    DTOD = 8
    PTOP = 10


class ActivityMemoryKind(enum.IntEnum):
    UNKNOWN = 0
    PAGEABLE = 1
    PINNED = 2
    DEVICE = 3


class ActivitySynchronizationType(enum.IntEnum):
    UNKNOWN = 0
    EVENT_SYNCHRONIZE = 1
    STREAM_WAIT_EVENT = 2
    STREAM_SYNCHRONIZE = 3
    CONTEXT_SYNCHRONIZE = 4


class ActivityOverheadKind(enum.IntEnum):
    UNKNOWN = 0
    CUPTI_BUFFER_FLUSH = 1 << 16


class ActivityMemoryOperationType(enum.IntEnum):
    INVALID = 0
    ALLOCATION = 1
    RELEASE = 2


NAMES = {5: "cudaMemcpyAsync_v3020", 6: "cudaStreamSynchronize_v3020", 7: "cuMemcpyHtoDAsync_v2"}
CUPTI = NS(
    ActivityKind=ActivityKind,
    ActivityMemcpyKind=ActivityMemcpyKind,
    ActivityMemoryKind=ActivityMemoryKind,
    ActivitySynchronizationType=ActivitySynchronizationType,
    ActivityOverheadKind=ActivityOverheadKind,
    ActivityMemoryOperationType=ActivityMemoryOperationType,
    ActivityFlag=NS(MEMCPY_ASYNC=1, MEMSET_ASYNC=1, MARKER_INSTANTANEOUS=1, MARKER_START=2, MARKER_END=4),
    CallbackDomain=NS(RUNTIME_API=1, DRIVER_API=2),
    get_callback_name=lambda _domain, cbid: NAMES[cbid],
)
THREAD = NS(pt=NS(thread_id=99))


def _decode(tmp_path, records, offset=1000):
    w = ShardWriter(tmp_path, 1)
    src = CuptiSource(w, ("memcpy",))
    src.bind(CUPTI)
    src._offset = offset
    src._buffer_completed(list(records))
    src.drain()
    w.close()
    assert src.errors == []
    return src, {p.name.split(".")[0]: read_shard(p).data.to_pylist() for p in tmp_path.glob("*.arrows")}


def test_copies_api_calls_and_syncs(tmp_path):
    recs = [
        NS(kind=5, cbid=5, thread_id=99, start=5, end=9, correlation_id=5, return_value=0),
        NS(
            kind=1,
            copy_kind=1,
            src_kind=2,
            dst_kind=3,
            bytes=64,
            start=10,
            end=20,
            device_id=0,
            context_id=1,
            stream_id=7,
            correlation_id=5,
            flags_=1,
        ),
        NS(
            kind=1,
            copy_kind=2,
            src_kind=3,
            dst_kind=1,
            bytes=8,
            start=40,
            end=41,
            device_id=0,
            context_id=1,
            stream_id=7,
            correlation_id=8,
            flags_=0,
        ),
        NS(kind=5, cbid=6, thread_id=99, start=25, end=30, correlation_id=6, return_value=0),
        NS(kind=4, cbid=7, thread_id=98, start=26, end=28, correlation_id=7, return_value=0),
        NS(
            kind=38,
            type=3,
            start=25,
            end=30,
            context_id=1,
            stream_id=0xFFFFFFFF,
            correlation_id=6,
            cuda_event_id=0xFFFFFFFF,
        ),
        NS(
            kind=2,
            memory_kind=3,
            bytes=10,
            start=1,
            end=2,
            device_id=0,
            context_id=1,
            stream_id=7,
            correlation_id=9,
            flags_=1,
        ),
    ]
    src, t = _decode(tmp_path, recs)
    h2d = next(r for r in t["copies"] if r["copy_kind"] == "HtoD")
    d2h = next(r for r in t["copies"] if r["copy_kind"] == "DtoH")
    memset = next(r for r in t["copies"] if r["op"] == "memset")
    assert (h2d["src_kind"], h2d["dst_kind"], h2d["bytes"], h2d["is_async"]) == ("pinned", "device", 64, True)
    assert (h2d["start_ns"], h2d["end_ns"]) == (1010, 1020)  # CUPTI clock + measured offset
    assert (d2h["src_kind"], d2h["dst_kind"], d2h["is_async"]) == ("device", "pageable", False)
    assert (memset["copy_kind"], memset["dst_kind"], memset["is_async"]) == ("memset", "device", True)
    names = {r["name"]: r for r in t["api_calls"]}
    assert set(names) == {"cudaMemcpyAsync", "cudaStreamSynchronize", "cuMemcpyHtoDAsync_v2"}
    assert names["cudaMemcpyAsync"]["domain"] == "runtime" and names["cuMemcpyHtoDAsync_v2"]["domain"] == "driver"
    assert names["cudaMemcpyAsync"]["tid"] == 99 and names["cudaMemcpyAsync"]["start_ns"] == 1005
    (sync,) = t["syncs"]
    assert (sync["sync_type"], sync["stream_id"], sync["event_id"]) == ("stream", -1, -1)
    assert src.records["copies"] == 3 and src.records["api_calls"] == 3


def test_allocs_with_64bit_addresses_and_overheads(tmp_path):
    recs = [
        NS(
            kind=49,
            memory_operation_type=1,
            memory_kind=3,
            bytes=4096,
            address=2**63 + 5,
            timestamp=3,
            device_id=0,
            context_id=1,
            stream_id=7,
            correlation_id=4,
            is_async=0,
        ),
        NS(
            kind=49,
            memory_operation_type=2,
            memory_kind=2,
            bytes=4096,
            address=77,
            timestamp=9,
            device_id=0,
            context_id=1,
            stream_id=7,
            correlation_id=4,
            is_async=1,
        ),
        NS(kind=16, overhead_kind=1 << 16, start=1, end=2),
        NS(kind=16, overhead_kind=12345, start=1, end=2),
    ]
    _, t = _decode(tmp_path, recs)
    a, f = t["allocs"]
    assert (a["op"], a["memory_kind"], a["address"], a["ts_ns"], a["is_async"]) == (
        "alloc",
        "device",
        2**63 + 5,
        1003,
        False,
    )
    assert (f["op"], f["memory_kind"], f["is_async"]) == ("free", "pinned", True)
    assert [o["kind"] for o in t["overheads"]] == ["cupti_buffer_flush", "unknown"]


def test_nvtx_ranges_pair_across_buffers(tmp_path):
    w = ShardWriter(tmp_path, 1)
    src = CuptiSource(w, ("nvtx",))
    src.bind(CUPTI)
    src._buffer_completed([NS(kind=12, flags_=2, id=1, name="step 0", domain=None, timestamp=1, object_id=THREAD)])
    src._buffer_completed(
        [
            NS(kind=12, flags_=4, id=1, name="", domain=None, timestamp=50, object_id=THREAD),
            NS(kind=12, flags_=1, id=2, name="tick", domain="d", timestamp=60, object_id=THREAD),
        ]
    )
    src.drain()
    w.close()
    rows = read_shard(tmp_path / "markers.1.arrows").data.to_pylist()
    assert [(r["name"], r["start_ns"], r["end_ns"], r["tid"]) for r in rows] == [
        ("step 0", 1, 50, 99),
        ("tick", 60, 60, 99),
    ]


def test_records_a_forced_flush_cut_short_are_dropped_and_counted(tmp_path):
    def memcpy(start, end):
        return NS(
            kind=1, copy_kind=1, src_kind=2, dst_kind=3, bytes=64, start=start, end=end, device_id=0,
            context_id=1, stream_id=7, correlation_id=5, flags_=1,
        )  # fmt: skip

    src, t = _decode(tmp_path, [memcpy(10, 20), memcpy(30, 0)])  # end not written yet: 0
    assert [(r["start_ns"], r["end_ns"]) for r in t["copies"]] == [(1010, 1020)]
    assert src.records["copies"] == 1 and src.incomplete == {"copies": 1}


def test_callback_recorded_api_calls_become_api_call_rows(tmp_path):
    """The shim's fixed-size records of runtime calls (CUPTI callbacks instead of the RUNTIME kind)
    give the same api_calls rows a RUNTIME record would: name, thread, mapped times, correlation."""
    import numpy as np

    from cctrace.record.sources.cupti_source import API_DTYPE

    recs = np.zeros(3, API_DTYPE)
    recs["start"] = [100, 200, 300]
    recs["end"] = [150, 90, 390]  # the second one's end is before its start: cut short, dropped
    recs["domain"] = CUPTI.CallbackDomain.RUNTIME_API
    recs["cbid"] = [5, 5, 6]
    recs["correlation_id"] = [11, 12, 13]
    recs["tid"] = 4242
    recs["ret"] = [0, 0, 700]
    w = ShardWriter(tmp_path, 1)
    src = CuptiSource(w, ("memcpy", "runtime"))
    src.bind(CUPTI)
    src._offset = 1000
    src.convert_api(recs.tobytes())
    w.close()
    (shard,) = tmp_path.glob("api_calls.*.arrows")
    rows = read_shard(shard).data.to_pylist()
    assert [(r["name"], r["start_ns"], r["end_ns"], r["correlation_id"], r["return_value"]) for r in rows] == [
        ("cudaMemcpyAsync", 1100, 1150, 11, 0),
        ("cudaStreamSynchronize", 1300, 1390, 13, 700),
    ]
    assert {r["tid"] for r in rows} == {4242} and {r["domain"] for r in rows} == {"runtime"}
    assert src.records == {"api_calls": 2} and src.incomplete == {"api_calls": 1}


def test_raw_file_decodes_buffers_and_callback_records_with_progress(tmp_path, monkeypatch):
    """decode_trace end to end on a raw file as the shim writes it (activity buffers and API-record
    blocks), with libcupti's record walk stood in for: rows land in shards, the process record gets
    the counts, progress is told, the raw file goes."""
    import json
    import struct

    import numpy as np

    from cctrace.record.sources import cupti_raw
    from cctrace.record.sources.cupti_source import API_DTYPE
    from cctrace.trace.manifest import proc_record_path

    def memcpy(i):
        return NS(kind=1, copy_kind=1, src_kind=2, dst_kind=3, bytes=64, start=10 * i, end=10 * i + 5,
                  device_id=0, context_id=1, stream_id=7, correlation_id=i, flags_=1)  # fmt: skip

    class Walker:  # libcupti's cuptiActivityGetNextRecord + cupti-python's classes, stood in for
        cupti = CUPTI

        def records(self, data, _strings):
            return [memcpy(i) for i in struct.unpack(f"<{len(data) // 4}I", data)], None

    monkeypatch.setattr(cupti_raw, "_Walker", Walker)
    monkeypatch.setattr(cupti_raw, "PROGRESS_EVERY_S", 0.0)
    api = np.zeros(2, API_DTYPE)
    api["start"], api["end"], api["correlation_id"] = [8, 18], [9, 19], [1, 2]
    api["domain"], api["cbid"], api["tid"] = CUPTI.CallbackDomain.RUNTIME_API, 5, 7
    raw = tmp_path / "cupti.42.cuptiraw"
    with open(raw, "wb") as f:
        for block in (struct.pack("<2I", 1, 2), struct.pack("<I", 3)):
            f.write(struct.pack("<QQ", cupti_raw.MAGIC, len(block)) + block)
        f.write(struct.pack("<QQ", cupti_raw.API_MAGIC, api.nbytes) + api.tobytes())
    proc_record_path(tmp_path, 42).write_text(
        json.dumps({"pid": 42, "kinds": ["memcpy", "runtime"], "sources": {"cupti": {"clock": {"offset_ns": 1000}}}})
    )
    heard: list[str] = []
    assert cupti_raw.decode_trace(tmp_path, heard.append) == []
    assert not raw.exists()
    shards = {p.name.split(".")[0]: read_shard(p).data.to_pylist() for p in tmp_path.glob("*.arrows")}
    assert [r["correlation_id"] for r in shards["copies"]] == [1, 2, 3]
    assert [(r["name"], r["start_ns"], r["correlation_id"]) for r in shards["api_calls"]] == [
        ("cudaMemcpyAsync", 1008, 1),
        ("cudaMemcpyAsync", 1018, 2),
    ]
    health = json.loads(proc_record_path(tmp_path, 42).read_text())["sources"]["cupti"]
    assert health["records"] == {"copies": 3, "api_calls": 2} and health["decoded_buffers"] == 2
    assert len(heard) == 2 and heard[-1].startswith("decoding CUPTI records: ")


def test_kept_driver_calls_are_selected_and_become_driver_rows(tmp_path):
    """The shim records the driver calls that copy, set, allocate, free, sync, wait and launch graphs
    (launches only with kernels); with the DRIVER activity kind on (it records them all) none; the
    records decode into api_calls rows of domain 'driver' under the driver call's own name."""
    import numpy as np

    from cctrace.record.sources.cupti_source import API_DTYPE

    rt, drv = CUPTI.CallbackDomain.RUNTIME_API, CUPTI.CallbackDomain.DRIVER_API
    table = {
        rt: {1: "cudaMemcpyAsync_v3020", 2: "cudaLaunchKernel_v7000", 3: "cudaGetDevice_v3020"},
        drv: {
            1: "cuMemcpyHtoDAsync_v2",
            2: "cuMemcpyDtoHAsync_v2",
            3: "cuStreamSynchronize",
            4: "cuEventSynchronize",
            5: "cuStreamWaitEvent",
            6: "cuEventQuery",
            7: "cuLaunchKernel",
            8: "cuGraphLaunch",
            9: "cuMemAlloc_v2",
            10: "cuMemFreeHost",
            11: "cuMemGetInfo_v2",
            12: "cuCtxSynchronize",
            13: "cuMemsetD32Async",
            14: "cuMemHostGetDevicePointer_v2",
        },
    }

    def name(domain, cbid):
        return table[domain][cbid]  # KeyError past the last id, as CUPTI raises

    cupti = NS(**{**vars(CUPTI), "get_callback_name": name})
    w = ShardWriter(tmp_path, 1)
    src = CuptiSource(w, ("memcpy", "runtime"))
    src.bind(cupti)

    def selected(launches):
        doms, ids, n = src._runtime_selection(launches, src.driver_calls)
        return sorted((table[d][c] for d, c in zip(doms[:n], ids[:n], strict=True)))

    kept = ["cuCtxSynchronize", "cuEventSynchronize", "cuGraphLaunch", "cuMemAlloc_v2", "cuMemFreeHost"]
    kept += ["cuMemcpyDtoHAsync_v2", "cuMemcpyHtoDAsync_v2", "cuMemsetD32Async", "cuStreamSynchronize"]
    kept += ["cuStreamWaitEvent", "cudaMemcpyAsync_v3020"]
    assert selected(False) == sorted(kept)
    assert selected(True) == sorted([*kept, "cuLaunchKernel", "cudaLaunchKernel_v7000"])
    src.kinds = ("memcpy", "runtime", "driver")  # every driver call from the DRIVER activity kind instead
    assert selected(False) == ["cudaMemcpyAsync_v3020"]

    recs = np.zeros(2, API_DTYPE)
    recs["start"], recs["end"] = [100, 300], [150, 390]
    recs["domain"], recs["cbid"], recs["correlation_id"], recs["tid"] = drv, [1, 3], [21, 22], 7
    src._offset = 1000
    src.convert_api(recs.tobytes())
    w.close()
    (shard,) = tmp_path.glob("api_calls.*.arrows")
    rows = read_shard(shard).data.to_pylist()
    assert [(r["name"], r["domain"], r["start_ns"], r["correlation_id"]) for r in rows] == [
        ("cuMemcpyHtoDAsync_v2", "driver", 1100, 21),
        ("cuStreamSynchronize", "driver", 1300, 22),
    ]
