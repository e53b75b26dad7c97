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
from cctrace.trace.environment import allowed_environment

MANIFEST = "manifest.json"
PROC_PREFIX = "proc."


def write_json_atomic(path: Path, data: dict) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a JSON file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def proc_record_path(trace_dir: Path, pid: int) -> Path:
    return Path(trace_dir) / f"{PROC_PREFIX}{pid}.json"


def read_proc_records(trace_dir: Path) -> list[dict]:
    out = []
    for p in sorted(Path(trace_dir).glob(f"{PROC_PREFIX}*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError) as e:
            out.append({"pid": -1, "file": p.name, "error": f"unreadable process record: {e}"})
    return out


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


def stacks_summary(procs: list[dict]) -> dict:
    """Whether Python stacks (call sites) were captured, and in which processes; why not, per process."""
    states, counts = {}, {"calls_with_stack": 0, "calls_without_python": 0, "calls_dropped": 0}
    for p in procs:
        health = ((p.get("sources") or {}).get("cupti") or {}).get("stacks")
        if not health:
            continue
        states[str(p.get("pid"))] = health.get("state", "unknown")
        for k in counts:
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
        "command": command,
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
    return out


def read_manifest(trace_dir: Path) -> dict:
    path = Path(trace_dir) / MANIFEST
    if not path.exists():
        return {}
    return json.loads(path.read_text())
