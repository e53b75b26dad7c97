"""Building and loading cctrace's small C helpers (the CUPTI buffer shim, the bridge emulator, the
driver interposer).

Each is compiled on first use with the system C compiler into a cache keyed by the source's hash,
so a recording host needs `cc` but no build step at install time. When no compiler is found the
caller falls back (and says so).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from cctrace.trace import handoff as H

SOURCE = Path(__file__).with_name("cupti_shim.c")
BRIDGE_SOURCE = Path(__file__).with_name("bridge_emu.c")
INTERPOSE_SOURCE = Path(__file__).with_name("interpose.c")  # preloaded (LD_PRELOAD) into traced processes


class NativeUnavailable(RuntimeError):
    pass


def cache_dir() -> Path:
    base = H.CACHE.get() or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "cctrace")
    return Path(base)


def build_shim() -> Path:
    """Compile the shim if this source version has not been built yet; return the .so path."""
    return build_native(SOURCE)


def build_native(source: Path) -> Path:
    """Compile `source` into the cache unless this version of it (and of the headers beside it,
    which it may include) is there already."""
    h = hashlib.sha256(source.read_bytes())
    for header in sorted(source.parent.glob("*.h")):
        h.update(header.read_bytes())
    digest = h.hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{digest}.so"
    if target.exists():
        return target
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise NativeUnavailable(f"no C compiler (cc/gcc/clang) to build {source.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        r = subprocess.run(
            [cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(source), "-ldl", "-lpthread"],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise NativeUnavailable(f"building {source.name} failed: {r.stderr.strip()[:300]}")
        os.replace(out, target)
    return target


def load_shim(path: str | os.PathLike) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.cct_start.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.cct_start.restype = ctypes.c_int
    lib.cct_reopen.argtypes = [ctypes.c_char_p]
    lib.cct_reopen.restype = ctypes.c_int
    lib.cct_set_string_fields.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_uint32),
        ctypes.POINTER(ctypes.c_uint32),
        ctypes.c_int,
    ]
    lib.cct_set_string_fields.restype = ctypes.c_int
    lib.cct_stats.argtypes = [ctypes.POINTER(ctypes.c_uint64 * 5)]
    lib.cct_stats.restype = None
    ints, u32s = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_uint32)
    lib.cct_api_start.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ints, u32s, ctypes.c_int]
    lib.cct_api_start.restype = ctypes.c_int
    lib.cct_api_select.argtypes = [ints, u32s, ctypes.c_int]
    lib.cct_api_select.restype = ctypes.c_int
    lib.cct_api_flush.argtypes = [ctypes.c_int]
    lib.cct_api_flush.restype = None
    lib.cct_api_stats.argtypes = [ctypes.POINTER(ctypes.c_uint64 * 2)]
    lib.cct_api_stats.restype = None
    bind_stacks(lib)
    lib.cct_detach_init.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.cct_detach_init.restype = ctypes.c_int
    lib.cct_detach.argtypes = [ctypes.c_int]
    lib.cct_detach.restype = ctypes.c_int
    lib.cct_detach_cancel.argtypes = []
    lib.cct_detach_cancel.restype = ctypes.c_int
    lib.cct_reattach.argtypes = []
    lib.cct_reattach.restype = ctypes.c_int
    lib.cct_api_resume.argtypes = []
    lib.cct_api_resume.restype = None
    lib.cct_detach_stats.argtypes = [ctypes.POINTER(ctypes.c_uint64 * 2)]
    lib.cct_detach_stats.restype = None
    return lib


def bind_stacks(lib: ctypes.CDLL) -> ctypes.CDLL:
    """The signatures of py_stacks.h's entry points, which the shim and the interposer both export."""
    lib.cct_stacks_init.argtypes = [ctypes.c_int, *[ctypes.c_void_p] * 4]
    lib.cct_stacks_init.restype = ctypes.c_int
    lib.cct_stacks_enable.argtypes = [ctypes.c_int]
    lib.cct_stacks_enable.restype = ctypes.c_int
    lib.cct_stacks_probe.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.cct_stacks_probe.restype = ctypes.c_int
    lib.cct_stacks_layout.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    lib.cct_stacks_layout.restype = ctypes.c_int
    lib.cct_stacks_stats.argtypes = [ctypes.POINTER(ctypes.c_uint64 * 4)]
    lib.cct_stacks_stats.restype = None
    return lib


def api_stats(lib: ctypes.CDLL) -> dict:
    out = (ctypes.c_uint64 * 2)()
    lib.cct_api_stats(ctypes.byref(out))
    return {"api_records": out[0], "api_records_lost": out[1]}


def detach_stats(lib: ctypes.CDLL) -> dict:
    """How often CUPTI was finalized through the shim (cupti_detach.h), and the last status."""
    out = (ctypes.c_uint64 * 2)()
    lib.cct_detach_stats(ctypes.byref(out))
    return {"finalized": out[0], "finalize_status": out[1]}


def address(fn) -> int:
    """A C function's address, for handing one library's function to another (CUPTI's to the shim)."""
    return ctypes.cast(fn, ctypes.c_void_p).value


def chain_hooks(lib: ctypes.CDLL) -> tuple[int, int, int]:
    """Addresses of the shim's stand-ins for cuptiSubscribe/EnableCallback/Unsubscribe, for a
    second callback user (the bridge emulator) while the shim holds CUPTI's one subscription."""
    return address(lib.cct_chain_subscribe), address(lib.cct_chain_enable), address(lib.cct_chain_unsubscribe)


def shim_stats(lib: ctypes.CDLL) -> dict:
    out = (ctypes.c_uint64 * 5)()
    lib.cct_stats(ctypes.byref(out))
    return dict(
        zip(("buffers_requested", "buffers_completed", "bytes", "failed_writes", "failed_allocs"), out, strict=True)
    )
