"""Python stacks of recorded CUDA calls: turning capture on, decoding what was written, and marking
each stack's call site.

native/py_stacks.h, compiled into the CUPTI shim and into the driver interposer, reads the calling
thread's frames inside the recorded call (the CUPTI callback, the interposer's wrapper) without the
GIL, interns each distinct stack and writes it once as a block of (file, line, function) frames; each
record carries its stack's id. Before capture is turned on, the library's reading of this interpreter's
frames is compared with the interpreter's own (sys._getframe): a CPython whose layout is not in it, or
one that differs, leaves stacks off, and the manifest says why.

The call site of a stack is its innermost frame outside the frameworks: frames whose file matches a
skip pattern are passed over unless they match a keep pattern; a stack with no frame left has its
innermost frame as call site. A pattern with '*' or '?' is a glob on the file path, one with '/' a
path fragment, anything else a package or module name (`torch` matches .../torch/... and .../torch.py).
"""

from __future__ import annotations

import ctypes
import fnmatch
import struct
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path

STK_MAGIC = 0x31304B5453544343  # "CCTSTK01", CCT_STK_MAGIC in native/py_stacks.h
_HEAD = struct.Struct("<II")  # stack id, frames
_FRAME = struct.Struct("<iHH")  # line, file length, function length

NO_STACKS = "off (--no-stacks)"  # the state of a process recorded with `record --no-stacks`
FRAMEWORKS = ("torch", "transformers", "jax", "jaxlib", "vllm", "sglang", "site-packages", "dist-packages")

Frame = tuple[str, int, str]  # file, line, function


def default_skip() -> list[str]:
    """The frameworks, this Python's standard library and cctrace's own package (its wrappers, e.g.
    --step-function's): none of them is the line a user wants named. Folders are given as paths, so
    a checkout that merely has such a name in its path (…/cctrace/examples/serve.py) is not skipped."""
    stdlib = sysconfig.get_paths().get("stdlib")
    extra = [stdlib.rstrip("/") + "/"] if stdlib else []
    return [*FRAMEWORKS, *extra, "<frozen *", str(Path(__file__).resolve().parents[2]) + "/"]


def account(opts: dict | None, off: str) -> dict:
    """A source's `stacks` entry before start: its state (`off` until start() says otherwise, or
    NO_STACKS) and the call-site patterns its decoder uses (`opts`: the tracer's {"on", "skip", "keep"})."""
    opts = opts or {}
    return {
        "state": NO_STACKS if opts.get("on") is False else off,
        "skip": [*default_skip(), *opts.get("skip", ())],
        "keep": list(opts.get("keep", ())),
    }


def patterns(raw: str | None) -> list[str]:
    return [p.strip() for p in (raw or "").split(",") if p.strip()]


def _matches(file: str, pattern: str) -> bool:
    if "*" in pattern or "?" in pattern:
        return fnmatch.fnmatchcase(file, pattern)
    if "/" in pattern:
        return pattern in file
    return f"/{pattern}/" in file or file.endswith(f"/{pattern}.py") or file.startswith(f"{pattern}/")


def callsite_index(frames: Sequence[Frame], skip: Iterable[str], keep: Iterable[str]) -> int:
    """Depth of the call site in `frames` (innermost first)."""
    skip, keep = list(skip), list(keep)
    for depth, (file, _line, _func) in enumerate(frames):
        if any(_matches(file, p) for p in keep) or not any(_matches(file, p) for p in skip):
            return depth
    return 0


def parse_stacks(data: bytes) -> Iterable[tuple[int, list[Frame]]]:
    """The stacks of one CCTSTK01 block: (stack id, frames innermost first)."""
    pos = 0
    while pos + _HEAD.size <= len(data):
        sid, n = _HEAD.unpack_from(data, pos)
        pos += _HEAD.size
        frames = []
        for _ in range(n):
            line, lf, ln = _FRAME.unpack_from(data, pos)
            pos += _FRAME.size
            file = data[pos : pos + lf].decode("utf-8", "replace")
            func = data[pos + lf : pos + lf + ln].decode("utf-8", "replace")
            pos += lf + ln
            frames.append((file, line, func))
        yield sid, frames


def stack_rows(stacks: Iterable[tuple[int, list[Frame]]], skip: Sequence[str], keep: Sequence[str]) -> dict:
    """Columns of the `stacks` table (less pid and source) for these stacks."""
    cols: dict[str, list] = {k: [] for k in ("stack_id", "depth", "file", "line", "function", "is_callsite")}
    for sid, frames in stacks:
        site = callsite_index(frames, skip, keep)
        for depth, (file, line, func) in enumerate(frames):
            cols["stack_id"].append(sid)
            cols["depth"].append(depth)
            cols["file"].append(file)
            cols["line"].append(line)
            cols["function"].append(func)
            cols["is_callsite"].append(depth == site)
    return cols


def check(shim: ctypes.CDLL) -> str | None:
    """None if the library (shim or interposer) reads this thread's stack as the interpreter does;
    else what differs."""
    buf = ctypes.create_string_buffer(1 << 16)
    # one line: the probe (ctypes lets go of the GIL, the case that matters) and the line it ran on
    n, line = shim.cct_stacks_probe(buf, len(buf)), sys._getframe().f_lineno
    if n == -3:
        return "the frames do not have the layout cctrace knows for this version"
    if n < 0:
        return f"the shim could not read this thread's frames ({n})"
    seen = next(iter(parse_stacks(buf.raw[:n])), (0, []))[1]
    f, want = sys._getframe(), []
    while f is not None:
        want.append((f.f_code.co_filename, f.f_lineno, f.f_code.co_qualname))
        f = f.f_back
    want[0] = (want[0][0], line, want[0][2])
    if seen != want:
        diff = next((i for i, (a, b) in enumerate(zip(seen, want, strict=False)) if a != b), min(len(seen), len(want)))
        got = seen[diff] if diff < len(seen) else None
        exp = want[diff] if diff < len(want) else None
        return f"frame {diff}: the shim read {got}, the interpreter has {exp}"
    return None


def start(shim: ctypes.CDLL) -> dict:
    """Turn capture on in the library (the shim, or the interposer) if this interpreter allows it; the
    manifest's `stacks` entry."""
    api = ctypes.pythonapi
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    impl = sys.implementation.name
    if impl != "cpython" or sys.version_info.major != 3:
        return {"state": f"off: {impl} {version} is not CPython 3"}
    rc = shim.cct_stacks_init(
        sys.version_info.minor,
        ctypes.cast(api.PyGILState_GetThisThreadState, ctypes.c_void_p).value,
        ctypes.cast(api.PyCode_Addr2Line, ctypes.c_void_p).value,
        ctypes.addressof(ctypes.c_char.in_dll(api, "PyCode_Type")),
        ctypes.addressof(ctypes.c_char.in_dll(api, "PyUnicode_Type")),
    )
    if rc != 0:
        return {"state": f"off: CPython {version}'s frame layout is not known to cctrace (3.11 and 3.12 are)"}
    problem = check(shim)
    if problem:
        return {"state": f"off: frame layout check failed on CPython {version}: {problem}"}
    shim.cct_stacks_enable(1)
    return {"state": "on", "python": version}


def stats(shim: ctypes.CDLL) -> dict:
    out = (ctypes.c_uint64 * 4)()
    shim.cct_stacks_stats(ctypes.byref(out))
    return dict(zip(("calls_with_stack", "calls_without_python", "calls_dropped", "stacks"), out, strict=True))
