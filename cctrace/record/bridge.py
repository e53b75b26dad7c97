"""Bridge emulation (`cctrace record --emulate-bridge SPEC`): an ordinary GPU's copies made to cost
what a GPU Confidential Computing bridge makes them cost, acted out inside the CUDA calls by the
C helper in native/bridge_emu.c (CUPTI callback API), with every injected nanosecond counted.

Those counts, written into each process's record and summed into the manifest, are the ground
truth that the attribution is checked against; every single injection is also drained into the
`bridge_injections` table (time, thread, call, correlation id, kind, direction, bytes, ns), so the
analysis can count the injected time over the same window as the categories.
"""

from __future__ import annotations

import ctypes
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cctrace.record.native import address
from cctrace.trace import handoff as H
from cctrace.trace.profile import native_gbps
from cctrace.trace.schema import rows_to_batch

NATIVE_GBPS = native_gbps()

PRESETS: dict[str, dict] = {
    # Blackwell B300 under Intel TDX, as reported (DESIGN.md): hundreds of us per crossing, about
    # 0.2x the normal bandwidth, copies serialized across streams, async copies that block.
    "b300-tdx": {"toll_us": 300.0, "bw_ratio": 0.2, "serialize": True, "async_block": True},
    # the H20's reported bridge bandwidth (9-11 GB/s), with a smaller toll
    "h20-cc": {"toll_us": 100.0, "bw_gbps": 10.0, "serialize": True, "async_block": True},
    # only the fixed toll: isolates small-crossing cost
    "toll-only": {"toll_us": 300.0, "bw_ratio": 1.0, "serialize": False, "async_block": False},
}

STAT_NAMES = (
    "copies",
    "toll_count",
    "toll_ns",
    "bandwidth_count",
    "bandwidth_ns",
    "serialize_count",
    "serialize_ns",
    "async_block_count",
    "async_block_ns",
    "h2d_toll_count",
    "h2d_toll_ns",
    "d2h_toll_count",
    "d2h_toll_ns",
    "skipped_calls",
    "errors",
    "graph_launches",  # launches of a graph with host<->device memcpy nodes (each node tolled)
    "graph_copies",  # memcpy nodes tolled over all those launches
    "captured_calls",  # copies and launches on a capturing stream: graph nodes being built, untouched
    "graphs",  # instantiated graphs whose memcpy nodes were read
    "graph_nodes_lost",  # memcpy nodes beyond what one graph's table holds: not tolled
    "records_lost",  # injections counted here but not recorded as rows (the C buffer was full)
)
HIST = 48
# struct inj_rec in native/bridge_emu.c: one injection
INJ_DTYPE = np.dtype(
    [
        ("ts", "<i8"),
        ("ns", "<i8"),
        ("bytes", "<u8"),
        ("tid", "<u4"),
        ("correlation_id", "<u4"),
        ("cbid", "<u4"),
        ("kind", "u1"),
        ("direction", "u1"),
        ("domain", "u1"),
        ("pad", "u1"),
    ]
)
KINDS = ("toll", "bandwidth", "serialize", "async_block")  # inj_rec.kind (K_* in the C)
DIRECTIONS = ("h2d", "d2h", "none")  # inj_rec.direction


class BridgeSpecError(ValueError):
    pass


@dataclass
class BridgeSpec:
    name: str = "custom"
    h2d_toll_us: float = 0.0
    d2h_toll_us: float = 0.0
    bw_ratio: float = 1.0  # emulated / native bandwidth
    bw_gbps: float | None = None  # absolute emulated bandwidth (overrides bw_ratio)
    native_h2d_gbps: float = NATIVE_GBPS["h2d"]
    native_d2h_gbps: float = NATIVE_GBPS["d2h"]
    serialize: bool = False
    async_block: bool = False

    def extra_ns_per_byte(self) -> tuple[float, float]:
        """Added ns per byte for (H2D, D2H): emulated byte time minus native byte time."""
        out = []
        for native in (self.native_h2d_gbps, self.native_d2h_gbps):
            emu = self.bw_gbps if self.bw_gbps else native * self.bw_ratio
            out.append(max(1.0 / emu - 1.0 / native, 0.0))  # GB/s == bytes/ns
        return out[0], out[1]

    @classmethod
    def from_json(cls, d: dict) -> BridgeSpec:
        """The spec from its to_json() form (derived keys are dropped)."""
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_json(self) -> dict:
        d = asdict(self)
        d["extra_ns_per_byte"] = list(self.extra_ns_per_byte())
        return d


_BOOL = {"1": True, "on": True, "true": True, "yes": True, "0": False, "off": False, "false": False, "no": False}


def parse_spec(text: str) -> BridgeSpec:
    """SPEC: a preset name, a JSON file, or key=value pairs (after an optional preset), e.g.
    `b300-tdx`, `b300-tdx,toll_us=100`, `toll_us=50,bw_gbps=10,serialize=on,async_block=off`."""
    text = text.strip()
    if not text:
        raise BridgeSpecError("empty bridge spec")
    if text.endswith(".json") or os.path.sep in text:
        try:
            items = json.loads(Path(text).read_text())
        except (OSError, ValueError) as e:
            raise BridgeSpecError(f"cannot read bridge spec {text}: {e}") from None
        parts: list[tuple[str, object]] = list(items.items())
        name = str(items.get("name", Path(text).stem))
    else:
        tokens = [t.strip() for t in text.split(",") if t.strip()]
        name = "custom"
        parts = []
        if "=" not in tokens[0]:
            name = tokens.pop(0)
            if name not in PRESETS:
                raise BridgeSpecError(f"unknown bridge preset {name!r}; presets: {', '.join(PRESETS)}")
            parts.extend(PRESETS[name].items())
        for t in tokens:
            if "=" not in t:
                raise BridgeSpecError(f"bad bridge spec item {t!r}: expected key=value")
            k, v = t.split("=", 1)
            parts.append((k.strip(), v.strip()))
    spec = BridgeSpec(name=name)
    for k, v in parts:
        _set(spec, k, v)
    return spec


def _set(spec: BridgeSpec, key: str, value: object) -> None:
    try:
        if key == "name":
            spec.name = str(value)
        elif key == "toll_us":
            spec.h2d_toll_us = spec.d2h_toll_us = float(value)  # type: ignore[arg-type]
        elif key in ("h2d_toll_us", "d2h_toll_us", "bw_ratio", "bw_gbps", "native_h2d_gbps", "native_d2h_gbps"):
            setattr(spec, key, float(value))  # type: ignore[arg-type]
        elif key == "native_gbps":
            spec.native_h2d_gbps = spec.native_d2h_gbps = float(value)  # type: ignore[arg-type]
        elif key in ("serialize", "async_block"):
            b = value if isinstance(value, bool) else _BOOL.get(str(value).lower())
            if b is None:
                raise ValueError(f"{value!r} is not on/off")
            setattr(spec, key, b)
        else:
            raise BridgeSpecError(
                f"unknown bridge spec key {key!r}; keys: toll_us, h2d_toll_us, d2h_toll_us, bw_ratio, bw_gbps, "
                "native_gbps, serialize, async_block"
            )
    except ValueError as e:
        if isinstance(e, BridgeSpecError):
            raise
        raise BridgeSpecError(f"bad value for {key}: {e}") from None
    if (
        spec.bw_ratio <= 0
        or (spec.bw_gbps is not None and spec.bw_gbps <= 0)
        or spec.native_h2d_gbps <= 0
        or spec.native_d2h_gbps <= 0
    ):
        raise BridgeSpecError("bandwidth must be positive")
    if spec.h2d_toll_us < 0 or spec.d2h_toll_us < 0:
        raise BridgeSpecError("toll must not be negative")


# (domain, cupti cbid enum member, layout | flags) of the copy calls the emulator acts on.
# Driver API only: its callbacks run inside the driver entry points (cudart calls them too), so the
# injected time falls inside the CUPTI runtime record and inside the eBPF probe of the same call.
# Runtime-domain callbacks run outside the runtime record's timestamps (seen on the H100).
_RT, _DRV = 2, 1
_L_RT, _L_HTOD, _L_DTOH, _L_ANY = 1, 2, 3, 4
_L_LAUNCH, _L_INST, _L_UPDATE, _L_DESTROY, _L_BEGIN, _L_END = 5, 6, 7, 8, 9, 10
_ASYNC, _PTSZ = 0x100, 0x200
CALLS = (
    (_DRV, "cuMemcpyHtoD_v2", _L_HTOD),
    (_DRV, "cuMemcpyHtoD_v2_ptds", _L_HTOD | _PTSZ),
    (_DRV, "cuMemcpyHtoDAsync_v2", _L_HTOD | _ASYNC),
    (_DRV, "cuMemcpyHtoDAsync_v2_ptsz", _L_HTOD | _ASYNC | _PTSZ),
    (_DRV, "cuMemcpyDtoH_v2", _L_DTOH),
    (_DRV, "cuMemcpyDtoH_v2_ptds", _L_DTOH | _PTSZ),
    (_DRV, "cuMemcpyDtoHAsync_v2", _L_DTOH | _ASYNC),
    (_DRV, "cuMemcpyDtoHAsync_v2_ptsz", _L_DTOH | _ASYNC | _PTSZ),
    (_DRV, "cuMemcpy", _L_ANY),
    (_DRV, "cuMemcpy_ptds", _L_ANY | _PTSZ),
    (_DRV, "cuMemcpyAsync", _L_ANY | _ASYNC),
    (_DRV, "cuMemcpyAsync_ptsz", _L_ANY | _ASYNC | _PTSZ),
    # CUDA graphs: a launch tolls the memcpy nodes read when the graph was instantiated
    (_DRV, "cuGraphLaunch", _L_LAUNCH),
    (_DRV, "cuGraphLaunch_ptsz", _L_LAUNCH | _PTSZ),
    (_DRV, "cuGraphInstantiate", _L_INST),
    (_DRV, "cuGraphInstantiate_v2", _L_INST),
    (_DRV, "cuGraphInstantiateWithFlags", _L_INST),
    (_DRV, "cuGraphInstantiateWithParams", _L_INST),
    (_DRV, "cuGraphInstantiateWithParams_ptsz", _L_INST),
    (_DRV, "cuGraphExecUpdate", _L_UPDATE),
    (_DRV, "cuGraphExecUpdate_v2", _L_UPDATE),
    (_DRV, "cuGraphExecDestroy", _L_DESTROY),
    # stream capture: while one is open the emulator makes no stream or event call
    (_DRV, "cuStreamBeginCapture", _L_BEGIN),
    (_DRV, "cuStreamBeginCapture_v2", _L_BEGIN),
    (_DRV, "cuStreamBeginCapture_ptsz", _L_BEGIN | _PTSZ),
    (_DRV, "cuStreamBeginCapture_v2_ptsz", _L_BEGIN | _PTSZ),
    (_DRV, "cuStreamBeginCaptureToGraph", _L_BEGIN),
    (_DRV, "cuStreamBeginCaptureToGraph_ptsz", _L_BEGIN | _PTSZ),
    (_DRV, "cuStreamEndCapture", _L_END),
    (_DRV, "cuStreamEndCapture_ptsz", _L_END | _PTSZ),
)


def load_lib(path: str | os.PathLike) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.cct_bridge_start.restype = ctypes.c_int
    lib.cct_bridge_start.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_int),
        ctypes.POINTER(ctypes.c_uint32),
        ctypes.POINTER(ctypes.c_int),
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_int64),
        ctypes.POINTER(ctypes.c_double),
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.cct_bridge_stop.argtypes = [ctypes.c_void_p]
    lib.cct_bridge_stats.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_int]
    lib.cct_bridge_reset.argtypes = []
    lib.cct_bridge_take.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.cct_bridge_take.restype = ctypes.c_size_t
    lib.cct_bridge_record_size.restype = ctypes.c_size_t
    return lib


TAKE = 16384  # records moved out of the C buffer per call


def take_records(lib: ctypes.CDLL) -> np.ndarray:
    """Every injection recorded since the last call (INJ_DTYPE rows), moved out of the C buffer."""
    parts = []
    while True:
        buf = np.empty(TAKE, INJ_DTYPE)
        n = lib.cct_bridge_take(buf.ctypes.data, TAKE)
        parts.append(buf[:n])
        if n < TAKE:
            return np.concatenate(parts)


def injection_rows(recs: np.ndarray, pid: int, names: dict[tuple[int, int], str]) -> dict[str, list]:
    """`bridge_injections` columns from INJ_DTYPE records; `names`: (domain, cbid) -> the call's name."""
    return {
        "pid": [pid] * len(recs),
        "tid": recs["tid"].astype(np.int64),
        "ts_ns": recs["ts"],
        "ns": recs["ns"],
        "kind": [KINDS[k] for k in recs["kind"]],
        "direction": [DIRECTIONS[min(d, 2)] for d in recs["direction"]],
        "bytes": recs["bytes"].astype(np.int64),
        "call": [
            names.get((int(dm), int(cb)), f"cbid{cb}") for dm, cb in zip(recs["domain"], recs["cbid"], strict=True)
        ],
        "correlation_id": recs["correlation_id"].astype(np.int64),
        "source": ["emulator"] * len(recs),
    }


def read_stats(lib: ctypes.CDLL) -> dict:
    """The injected amounts so far: counters, ns, and tolled crossings per log2(bytes) bucket."""
    n = len(STAT_NAMES) + 2 * HIST
    buf = (ctypes.c_uint64 * n)()
    lib.cct_bridge_stats(buf, n)
    vals = list(buf)
    out: dict = dict(zip(STAT_NAMES, vals[: len(STAT_NAMES)], strict=True))
    h = vals[len(STAT_NAMES) :]
    out["toll_by_log2_bytes"] = {
        d: {str(i): c for i, c in enumerate(h[k * HIST : (k + 1) * HIST]) if c} for k, d in enumerate(("h2d", "d2h"))
    }
    return out


class BridgeEmulator:
    """A tracer source that injects rather than records; its health() is the ground truth."""

    def __init__(
        self,
        spec: BridgeSpec,
        hooks: tuple[int, int, int] | None = None,
        writer=None,
        callback_ids: dict[str, int] | None = None,
    ) -> None:
        self.spec = spec
        self.writer = writer  # the process's ShardWriter: injections become bridge_injections rows
        self.names: dict[tuple[int, int], str] = {}
        self.rows = 0
        # (subscribe, enable, unsubscribe) to use instead of CUPTI's own: CUPTI 13.0 has one
        # callback subscriber per process, and when the CUPTI source holds it the bridge chains on
        self.hooks = hooks
        # driver call name -> callback id, when the hooks are the driver interposer's (no CUPTI, no
        # cupti-python: its ids are its own function indices)
        self.callback_ids = callback_ids
        self.lib: ctypes.CDLL | None = None
        self.errors: list[str] = []
        self.status = "off: not started"
        self._unsubscribe: int | None = None

    def start(self) -> None:
        lib_path = H.BRIDGE_LIB.get()
        if not lib_path:
            raise RuntimeError(H.BRIDGE_LIB_ERROR.get() or "the bridge emulator was not built")
        if self.callback_ids is not None and self.hooks:
            subscribe, enable, self._unsubscribe = self.hooks
            ids = self.callback_ids

            def callback_id(domain: int, member: str) -> int | None:
                return ids.get(member) if domain == _DRV else None

        else:
            subscribe, enable, self._unsubscribe, callback_id = self._cupti_hooks()
        domains, cbids, flags, missing = [], [], [], []
        for domain, member, fl in CALLS:
            cb = callback_id(domain, member)
            if cb is None:
                missing.append(member)
                continue
            domains.append(domain)
            cbids.append(int(cb))
            flags.append(fl)
            self.names[(domain, int(cb))] = member
        if [m for m in missing if m.startswith("cuMemcpy")]:  # graph and capture variants differ by version
            self.errors.append(f"callback ids unknown to this cupti-python: {', '.join(missing)}")
        self.lib = load_lib(lib_path)
        n = len(cbids)
        toll = (ctypes.c_int64 * 2)(round(self.spec.h2d_toll_us * 1000), round(self.spec.d2h_toll_us * 1000))
        extra = (ctypes.c_double * 2)(*self.spec.extra_ns_per_byte())
        rc = self.lib.cct_bridge_start(
            subscribe,
            enable,
            (ctypes.c_int * n)(*domains),
            (ctypes.c_uint32 * n)(*cbids),
            (ctypes.c_int * n)(*flags),
            n,
            toll,
            extra,
            int(self.spec.serialize),
            int(self.spec.async_block),
        )
        if rc != 0:
            why = {-1: "libcuda.so.1 could not be loaded", -2: "too many calls"}.get(rc, f"CUPTI error {rc}")
            if rc == 39:  # CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED
                why += " (another tool is already subscribed to CUPTI callbacks)"
            raise RuntimeError(f"bridge emulation could not start: {why}")
        self.status = "active"

    def _cupti_hooks(self):
        """CUPTI's subscribe/enable/unsubscribe (or the hooks given: the CUPTI source's chain) and
        cupti-python's callback ids."""
        try:
            import cupti.cupti as cupti  # cupti-python
        except ImportError as e:
            raise RuntimeError(f"cupti-python is not importable ({e})") from None
        from cctrace.record.sources.cupti_source import loaded_libcupti

        libcupti_path = loaded_libcupti(cupti)
        if not libcupti_path:
            raise RuntimeError("libcupti is not mapped in this process")
        libcupti = ctypes.CDLL(libcupti_path)
        subscribe, enable, unsubscribe = self.hooks or (
            address(libcupti.cuptiSubscribe),
            address(libcupti.cuptiEnableCallback),
            address(libcupti.cuptiUnsubscribe),
        )

        def callback_id(domain: int, member: str) -> int | None:
            enum = cupti.runtime_api_trace_cbid if domain == _RT else cupti.driver_api_trace_cbid
            cb = getattr(enum, member, None)
            return None if cb is None else int(cb)

        return subscribe, enable, unsubscribe, callback_id

    # tracer source protocol
    def drain(self) -> None:
        """The injections recorded since the last drain, written as `bridge_injections` rows."""
        if self.lib is None or self.writer is None:
            return
        recs = take_records(self.lib)
        if len(recs):
            self.writer.add_batch(
                "bridge_injections",
                rows_to_batch("bridge_injections", injection_rows(recs, self.writer.pid, self.names)),
            )
            self.rows += len(recs)

    def stop(self) -> None:
        if self.lib is not None and self._unsubscribe:
            self.lib.cct_bridge_stop(self._unsubscribe)
            self._unsubscribe = None
            self.status = "stopped"
        self.drain()

    def after_fork_child(self) -> None:
        if self.lib is not None:
            self.lib.cct_bridge_reset()
        self.rows = 0

    def health(self) -> dict:
        return {
            "status": self.status,
            "spec": self.spec.to_json(),
            "injected": read_stats(self.lib) if self.lib is not None else None,
            "errors": list(self.errors),
            "records": {"bridge_injections": self.rows},
            "dropped": read_stats(self.lib)["records_lost"] if self.lib is not None else 0,
        }
