"""`cctrace attach`: host probes on an already running process, until a duration, Ctrl-C or its exit."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from cctrace.trace.manifest import MANIFEST, build_manifest, proc_record_path, write_json_atomic


class AttachError(Exception):
    pass


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent to reap it."""
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def attach_pid(
    pid: int,
    out: Path,
    duration: float | None,
    libcuda: str | None,
    progress: Callable[[str], None] | None = None,
    launches: bool = False,
    delay: float = 0.0,
) -> dict:
    """Probe `pid` for `duration` seconds (None: until Ctrl-C or its exit), starting `delay` seconds
    from now: the same window as `record --delay/--duration`."""
    from cctrace.record.sources.host_probes import HostProbes, ProbesUnavailable, find_libcuda

    if not _alive(pid):
        raise AttachError(f"no process {pid}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if delay > 0:
        if progress:
            progress(f"waiting {delay:g} s before attaching to pid {pid}")
        until = time.monotonic() + delay
        while time.monotonic() < until and _alive(pid):
            time.sleep(min(0.1, max(0.0, until - time.monotonic())))
        if not _alive(pid):
            raise AttachError(f"process {pid} ended before the tracing window opened")
    started_wall, started_ns = time.time(), time.monotonic_ns()
    lib = libcuda or find_libcuda(pid)
    probes = HostProbes(out, libcuda=lib, launches=launches)
    try:
        probes.start([pid])
    except ProbesUnavailable as e:
        raise AttachError(f"cannot attach: {e}") from None
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")  # noqa: SIM115
        argv = [a.decode(errors="replace") for a in argv if a]
    except OSError:
        argv = []
    write_json_atomic(
        proc_record_path(out, pid),
        {"pid": pid, "argv": argv, "start_ns": started_ns, "cupti": "off: attach traces host probes only"},
    )
    if progress:
        progress(f"attached to pid {pid} ({len(probes.attached)} entry points in {lib}); Ctrl-C to stop")
    stop = {"now": False}
    prev = signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    prev_term = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    deadline = time.monotonic() + duration if duration else None
    try:
        while not stop["now"] and _alive(pid) and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.1)
    finally:
        signal.signal(signal.SIGINT, prev)
        signal.signal(signal.SIGTERM, prev_term)
        health = probes.stop()
    rec = {
        "pid": pid,
        "argv": argv,
        "start_ns": started_ns,
        "end_ns": time.monotonic_ns(),
        "cupti": "off: attach traces host probes only",
    }
    write_json_atomic(proc_record_path(out, pid), rec)
    window = {"delay_s": delay, "duration_s": duration, "windows": [[started_ns, rec["end_ns"]]]}
    options = {"mode": "attach", "host_probes": {"state": "active", **health}, "window": window}
    write_json_atomic(
        out / MANIFEST, build_manifest(out, ["attach", str(pid)], started_wall, started_ns, None, options)
    )
    try:
        from cctrace.analyze.store import load

        load(out)
    except ImportError:
        pass
    return health
