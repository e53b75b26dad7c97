"""`cctrace doctor`: each piece recording needs, checked, with what to do when it is missing."""

from __future__ import annotations

import ctypes
import os

from cctrace.trace import handoff as H


def _check(name: str, status: str, detail: str, fix: str | None = None) -> dict:
    return {"check": name, "status": status, "detail": detail, "fix": fix}


def _stacks_check(shim_path) -> dict:
    """Whether this Python's stacks can be read by the shim (call sites of recorded calls)."""
    import sys

    from cctrace.record.native import load_shim
    from cctrace.record.sources import py_stacks

    state = py_stacks.start(load_shim(shim_path))["state"]
    version = f"CPython {sys.version_info.major}.{sys.version_info.minor}"
    if state == "on":
        return _check("Python stacks (call sites)", "ok", f"{version}: frames readable without the GIL")
    return _check("Python stacks (call sites)", "warn", state, "traced programs on CPython 3.11 or 3.12 get call sites")


def run_checks() -> list[dict]:
    out = []
    try:
        ctypes.CDLL("libcuda.so.1")
        have_driver = True
    except OSError:
        have_driver = False
    from cctrace.trace.manifest import gpu_facts

    facts = gpu_facts() if have_driver else {"available": False, "reason": "libcuda.so.1 not found"}
    if facts.get("available"):
        gpus = ", ".join(g["name"] for g in facts.get("gpus", [])) or "no GPUs"
        out.append(
            _check(
                "GPU and driver",
                "ok",
                f"{gpus}; driver {facts.get('driver_version')}, CUDA {facts.get('cuda_driver_version')}",
            )
        )
        cc = facts.get("confidential_computing") or {}
        if cc.get("known"):
            on = cc.get("ccFeature") == "on"
            dev = cc.get("devToolsMode") == "on"
            detail = f"CC {cc.get('ccFeature')}, devtools mode {cc.get('devToolsMode')}"
            if on and not dev:
                out.append(
                    _check(
                        "Confidential Computing",
                        "warn",
                        detail + ": CUPTI is blocked (production mode)",
                        "use `cctrace attach` / host probes; CUPTI needs CC devtools mode",
                    )
                )
            else:
                out.append(_check("Confidential Computing", "ok", detail))
        else:
            out.append(
                _check(
                    "Confidential Computing",
                    "warn",
                    f"state unknown ({cc.get('reason', 'no NVML')})",
                    "pip install nvidia-ml-py; needs a driver with nvmlSystemGetConfComputeState",
                )
            )
    else:
        out.append(
            _check(
                "GPU and driver",
                "fail",
                facts.get("reason", "no NVIDIA driver"),
                "install the NVIDIA driver; without it only analysis works here",
            )
        )
    try:
        from cupti import cupti  # noqa: F401

        out.append(_check("cupti-python", "ok", "importable"))
    except ImportError as e:
        out.append(
            _check(
                "cupti-python",
                "fail",
                f"not importable ({e})",
                "pip install 'cupti-python>=13.0,<14' (match your CUDA major version)",
            )
        )
    except OSError as e:
        out.append(_check("cupti-python", "fail", f"libcupti did not load ({e})", "install the CUPTI library"))
    from cctrace.record.native import BRIDGE_SOURCE, NativeUnavailable, build_native, build_shim

    try:
        shim = build_shim()
        build_native(BRIDGE_SOURCE)
        out.append(_check("C compiler (CUPTI buffer shim, bridge emulator)", "ok", "built"))
        out.append(_stacks_check(shim))
    except (NativeUnavailable, OSError) as e:
        out.append(
            _check(
                "C compiler (CUPTI buffer shim, bridge emulator)",
                "warn",
                str(e),
                "apt-get install gcc; without it CUPTI buffers go through Python callbacks, runtime "
                "calls come from CUPTI's RUNTIME kind (dearer: it wraps every launch) and "
                "--emulate-bridge cannot run",
            )
        )
    from cctrace.record.sources import host_probes as hp

    try:
        hp.import_bcc()
        out.append(_check("bcc", "ok", "importable"))
    except hp.ProbesUnavailable as e:
        out.append(_check("bcc", "fail", str(e), "apt-get install python3-bpfcc"))
    tree = hp.header_tree()
    if tree:
        out.append(_check("kernel headers", "ok", tree))
    else:
        out.append(
            _check(
                "kernel headers",
                "fail",
                f"none for kernel {os.uname().release}",
                "apt-get install linux-headers-$(uname -r); if your kernel has none, install "
                "linux-headers-amd64, merge its -common and -amd64 trees and set BCC_KERNEL_SOURCE "
                "(bash scripts/setup.sh does exactly this)",
            )
        )
    traced = os.path.isdir("/sys/kernel/tracing/events") or os.path.isdir("/sys/kernel/debug/tracing/events")
    out.append(
        _check(
            "tracefs",
            "ok" if traced else "fail",
            "mounted" if traced else "not mounted",
            "mount -t tracefs none /sys/kernel/tracing",
        )
    )
    root = os.geteuid() == 0
    out.append(
        _check(
            "privileges",
            "ok" if root else "fail",
            "root" if root else f"uid {os.geteuid()}",
            "run with sudo (the traced program still runs as you)",
        )
    )
    lib = hp.find_libcuda()
    out.append(
        _check(
            "libcuda to probe",
            "ok" if lib else "fail",
            lib or "not found",
            f"set {H.LIBCUDA.name}=/path/to/libcuda.so.1",
        )
    )
    return out
