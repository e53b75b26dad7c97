"""manifest.json: what was run, where, with which GPUs and sources, and how healthy each source was.

Each traced process writes its own `proc.<pid>.json` (at start, so a killed process still
appears, and again at exit); the launcher merges them into the manifest when the command ends.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from pathlib import Path

from cctrace import __version__
from cctrace.trace import safefs
from cctrace.trace.environment import allowed_environment, redact_argv

MANIFEST = "manifest.json"
PROC_PREFIX = "proc."
MAX_JSON_BYTES = 64 << 20  # no manifest or process record of a real run comes near this

# the manifest's keys that readers index into, with the type they must have (others are kept as they are)
SHAPES: dict[str, type | tuple[type, ...]] = {
    "command": list,
    "processes": list,
    "sources": dict,
    "options": dict,
    "gpu": dict,
    "bridge_emulation": dict,
    "environment": dict,
    "exit_code": (int, type(None)),
    "start_ns": (int, type(None)),
    "end_ns": (int, type(None)),
    "cwd": str,
    "stacks": dict,
}


# keys inside those, and what the items of lists must be
NESTED = (("gpu", "gpus", list), ("gpu", "confidential_computing", dict), ("options", "host_probes", dict))
ITEMS: dict[str, type] = {"command": str, "processes": dict}


def write_json_atomic(path: Path, data: dict) -> None:
    """Write via a fresh, randomly named file and rename, so a crash never leaves half a JSON file
    and a link planted at either name is never followed."""
    safefs.write_atomic(Path(path), json.dumps(data, indent=2, sort_keys=True, default=str).encode())


def proc_record_path(trace_dir: Path, pid: int) -> Path:
    return Path(trace_dir) / f"{PROC_PREFIX}{pid}.json"


def read_json(path: Path) -> dict:
    """One JSON object from a file cctrace wrote; ValueError/OSError say why it is not one."""
    data = json.loads(safefs.read_file(path, MAX_JSON_BYTES).decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"holds a JSON {type(data).__name__}, not an object")
    return data


def read_proc_records(trace_dir: Path) -> list[dict]:
    out = []
    for p in sorted(Path(trace_dir).glob(f"{PROC_PREFIX}*.json")):
        if trace_file_pid(p.name) is None:
            continue  # proc.<pid>.json only: another file is not cctrace's
        try:
            rec = read_json(p)
            if not isinstance(rec.get("pid"), int):
                raise ValueError("has no integer pid")
            out.append(rec)
        except (OSError, ValueError) as e:
            out.append({"pid": -1, "file": p.name, "error": f"unreadable process record: {e}"})
    return out


# the files cctrace writes per traced process, named <kind>.<pid>.<suffix> (and the shards, <table>.<pid>.arrows)
PER_PROCESS = (("proc", "json"), ("cupti", "cuptiraw"), ("interpose", "ipraw"))


def trace_file_pid(name: str) -> int | None:
    """The pid in the name of a file cctrace writes per process (a shard, a process record, raw
    CUPTI buffers, interposer records); None for any other name."""
    from cctrace.trace import schema as S

    kind, _, rest = name.partition(".")
    pid, _, suffix = rest.partition(".")
    if not pid.isdigit():
        return None
    if (kind, suffix) in PER_PROCESS or (kind in S.TABLES and f".{suffix}" == S.SHARD_SUFFIX):
        return int(pid)
    return None


def manifest_files(trace_dir: Path, procs: list[dict], writers: tuple[int, ...] = ()) -> list[str]:
    """The files of this trace that cctrace wrote (what a later `record --force` may remove): the
    traced processes' and those of `writers` (the launcher's host probes)."""
    pids = {p["pid"] for p in procs if isinstance(p.get("pid"), int) and p["pid"] > 0} | set(writers)
    return [
        f.name for f in sorted(Path(trace_dir).iterdir()) if trace_file_pid(f.name) in pids and safefs.is_regular(f)
    ]


def gpu_facts() -> dict:
    """GPU names/UUIDs, driver and CUDA versions, and Confidential Computing state, via NVML."""
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        return {"available": False, "reason": "nvidia-ml-py not installed"}
    try:
        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - NVML raises its own error types per failure
        return {"available": False, "reason": f"NVML did not initialise: {e}"}
    facts: dict = {"available": True}
    try:
        facts["driver_version"] = _s(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        facts["cuda_driver_version"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpus.append({"index": i, "name": _s(pynvml.nvmlDeviceGetName(h)), "uuid": _s(pynvml.nvmlDeviceGetUUID(h))})
        facts["gpus"] = gpus
        facts["confidential_computing"] = _cc_state(pynvml)
    except Exception as e:  # noqa: BLE001
        facts["error"] = str(e)
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
    return facts


def _cc_state(pynvml) -> dict:
    try:
        st = pynvml.nvmlSystemGetConfComputeState()
    except Exception as e:  # noqa: BLE001 - older drivers/GPUs lack the call
        return {"known": False, "reason": str(e)}
    return {
        "known": True,
        "ccFeature": "on" if st.ccFeature else "off",
        "devToolsMode": "on" if st.devToolsMode else "off",
        "environment": int(st.environment),
    }


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


STACK_SOURCES = ("cupti", "interposer")  # the sources that capture Python stacks with the calls they record


def _stack_healths(p: dict) -> dict[str, dict]:
    sources = p.get("sources") if isinstance(p, dict) else None
    out = {}
    for name in STACK_SOURCES:
        src = sources.get(name) if isinstance(sources, dict) else None
        health = src.get("stacks") if isinstance(src, dict) else None
        if isinstance(health, dict):
            out[name] = health
    return out


def process_stacks(p: dict) -> dict | None:
    """The `stacks` account that speaks for one process record: a source that captured stacks, else the
    interposer's where the interposer recorded the process (CUPTI off), else CUPTI's."""
    found = _stack_healths(p)
    on = [h for h in found.values() if h.get("state") == "on"]
    if on:
        return on[0]
    interposer = p["sources"].get("interposer") if "interposer" in found else {}
    if str(interposer.get("state", "")).startswith("active"):
        return found["interposer"]
    return found.get("cupti") or found.get("interposer")


def stacks_summary(procs: list[dict]) -> dict:
    """Whether Python stacks (call sites) were captured, and in which processes; why not, per process."""
    states, counts = {}, {"calls_with_stack": 0, "calls_without_python": 0, "calls_dropped": 0}
    for p in procs:
        health = process_stacks(p)
        if health is None:
            continue
        states[str(p.get("pid"))] = health.get("state", "unknown")
        for k in counts:  # the account that speaks for the process: a call recorded twice counts once
            counts[k] += int(health.get(k) or 0)
    return {"captured": any(s == "on" for s in states.values()), "processes": states, **counts}


def build_manifest(
    trace_dir: Path,
    command: list[str],
    started_wall: float,
    started_ns: int,
    exit_code: int | None,
    options: dict,
) -> dict:
    procs = read_proc_records(trace_dir)
    for p in procs:
        if isinstance(p.get("argv"), list):
            p["argv"] = redact_argv(p["argv"])
    sources: dict[str, dict] = {}
    for p in procs:
        for name, health in (p.get("sources") or {}).items():
            agg = sources.setdefault(name, {"processes": 0, "records": {}, "dropped": 0, "errors": []})
            agg["processes"] += 1
            for k, v in (health.get("records") or {}).items():
                agg["records"][k] = agg["records"].get(k, 0) + v
            agg["dropped"] += int(health.get("dropped") or 0)
            agg["errors"].extend(f"pid {p.get('pid')}: {e}" for e in health.get("errors") or [])
    from cctrace.trace.injections import sum_injected

    out = {
        "format": "cctrace-trace/1",
        "cctrace_version": __version__,
        "command": redact_argv(command),
        "cwd": os.getcwd(),
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "start_wall": started_wall,
        "end_wall": time.time(),
        "start_ns": started_ns,
        "end_ns": time.monotonic_ns(),
        "clock": "CLOCK_MONOTONIC ns; CUPTI timestamps mapped per process (see processes[].clock)",
        "exit_code": exit_code,
        "options": options,
        "gpu": gpu_facts(),
        "processes": procs,
        "sources": sources,
        "environment": allowed_environment(os.environ),
    }
    out["stacks"] = stacks_summary(procs)
    bridge = sum_injected(procs)
    if bridge is not None:
        out["bridge_emulation"] = bridge  # the ground truth of an emulated-bridge run
    probes = options.get("host_probes") if isinstance(options.get("host_probes"), dict) else {}
    writers = (probes["pid"],) if isinstance(probes.get("pid"), int) else ()
    out["files"] = manifest_files(trace_dir, procs, writers)
    return out


def load_manifest(trace_dir: Path) -> tuple[dict, str | None]:
    """The manifest with every indexed key of the right type, and what was wrong with it (None: nothing).
    A missing or unreadable manifest gives {} and says so; a key of the wrong type is dropped."""
    path = Path(trace_dir) / MANIFEST
    if not os.path.lexists(path):
        return {}, "no manifest.json (the recording did not finish: cctrace was killed or failed)"
    try:
        m = read_json(path)
    except (OSError, ValueError) as e:
        return {}, f"manifest.json is unreadable ({e}); its command, GPU and processes are unknown"
    bad = [k for k, t in SHAPES.items() if k in m and not isinstance(m[k], t)]
    for k in bad:
        del m[k]
    for key, sub, typ in NESTED:
        parent = m.get(key)
        if isinstance(parent, dict) and sub in parent and not isinstance(parent[sub], typ):
            del parent[sub]
            bad.append(f"{key}.{sub}")
    for key, typ in ITEMS.items():
        if isinstance(m.get(key), list) and not all(isinstance(v, typ) for v in m[key]):
            m[key] = [v for v in m[key] if isinstance(v, typ)]
            bad.append(f"{key}[]")
    if isinstance(m.get("gpu"), dict) and isinstance(m["gpu"].get("gpus"), list):
        m["gpu"]["gpus"] = [g for g in m["gpu"]["gpus"] if isinstance(g, dict)]
    if isinstance(m.get("sources"), dict):
        m["sources"] = {k: v for k, v in m["sources"].items() if isinstance(v, dict)}
    m.setdefault("processes", [])
    return m, (f"manifest.json has wrong types for {', '.join(bad)} (left out)" if bad else None)


def read_manifest(trace_dir: Path) -> dict:
    """The manifest ({} when missing or unreadable; keys of the wrong type left out)."""
    return load_manifest(trace_dir)[0]
