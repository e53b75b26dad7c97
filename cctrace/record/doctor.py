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
    out.append(_interposer_check(lib))
    out.append(_trap_cost_check(root))
    return out


# Run under the preloaded interposer: which library answers dlsym and cuGetProcAddress_v2 for a copy call.
_PROBE = """
import ctypes, json, sys
class Info(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p), ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]
dl = ctypes.CDLL("libdl.so.2")
def owner(addr):
    info = Info()
    return dl.dladdr(ctypes.c_void_p(addr), ctypes.byref(info)) and info.fname.decode()
cuda = ctypes.CDLL(sys.argv[1])
out = {"dlsym": owner(ctypes.cast(cuda.cuMemcpyHtoDAsync_v2, ctypes.c_void_p).value)}
gpa = cuda.cuGetProcAddress_v2
gpa.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_uint64, ctypes.c_void_p]
fn = ctypes.c_void_p()
rc = gpa(b"cuMemcpyHtoDAsync", ctypes.byref(fn), 12000, 0, None)
out["cuGetProcAddress"] = owner(fn.value) if rc == 0 and fn.value else f"error {rc}"
print(json.dumps(out))
"""


def _interposer_check(libcuda: str | None) -> dict:
    """Whether the driver interposer builds and, preloaded, answers for the driver (dlsym and
    cuGetProcAddress_v2, the two ways programs and the CUDA runtime find driver entry points)."""
    import json
    import subprocess
    import sys
    import tempfile

    from cctrace.record.native import INTERPOSE_SOURCE, NativeUnavailable, build_native

    name = "driver interposer (record without CUPTI)"
    try:
        built = str(build_native(INTERPOSE_SOURCE))
    except (NativeUnavailable, OSError) as e:
        return _check(name, "fail", str(e), "apt-get install gcc (it is compiled on first use)")
    if not libcuda:
        return _check(name, "warn", f"built ({built}); no libcuda here to interpose", "install the NVIDIA driver")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, LD_PRELOAD=built, **{H.DIR.name: tmp, H.INTERPOSE.name: "standby"})
        r = subprocess.run([sys.executable, "-c", _PROBE, libcuda], env=env, capture_output=True, text=True, timeout=60)
    try:
        owners = json.loads(r.stdout)
    except ValueError:
        return _check(name, "fail", f"the check did not run: {r.stderr.strip()[-300:]}", None)
    wrong = {how: who for how, who in owners.items() if who != built}
    if wrong:
        got = ", ".join(f"{how} answered by {who}" for how, who in wrong.items())
        return _check(name, "fail", got, "another preloaded library interposes the driver first (check LD_PRELOAD)")
    return _check(name, "ok", f"dlsym and cuGetProcAddress_v2 answer with its wrappers ({libcuda})")


def _trap_cost_check(root: bool) -> dict:
    """This machine's uprobe trap cost, measured with an empty probe: what `attach` (or --host-probes
    with uprobes) adds to every probed call."""
    from cctrace.record.sources import host_probes as hp

    name = "uprobe trap cost (attach)"
    if not root:
        return _check(name, "warn", "not measured (needs root)", "run `sudo cctrace doctor` to measure it")
    try:
        ns = hp.uprobe_trap_cost()
    except Exception as e:  # noqa: BLE001 - bcc raises plain Exception when a probe cannot attach
        return _check(name, "warn", f"not measured: {e}", None)
    return _check(
        name,
        "ok",
        f"{ns / 1e3:.2f} us per probed call (empty uprobe + uretprobe); attach adds this to every call it "
        "sees, the interposer (record) does not pay it",
    )
