"""`cctrace record -- CMD`: run CMD with the tracer injected into every Python process it starts.

Injection is by environment only (PYTHONPATH gains a folder holding cctrace's sitecustomize), so
children started by subprocess or multiprocessing (fork or spawn) are traced without code
changes. The launcher forwards termination signals to the child, waits, merges the
per-process records into manifest.json and returns the child's exit status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cctrace.record import tracer as T
from cctrace.record.bridge import BridgeSpec
from cctrace.resources import PACKAGE
from cctrace.trace import handoff as H
from cctrace.trace.manifest import MANIFEST, build_manifest, write_json_atomic

INJECT_DIR = Path(__file__).resolve().parent / "inject"
PACKAGE_HOME = PACKAGE.parent
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


@dataclass
class RecordOptions:
    kinds: tuple[str, ...] = T.DEFAULT_KINDS
    flush_s: float = 1.0
    quiet: bool = False
    host_probes: str = "auto"  # on | off | auto
    probe_launches: bool = False  # --probe-launches
    bridge: BridgeSpec | None = None  # --emulate-bridge
    stacks: bool = True  # --no-stacks turns it off
    callsite_skip: tuple[str, ...] = ()  # --callsite-skip
    callsite_keep: tuple[str, ...] = ()  # --callsite-keep
    extra_env: dict[str, str] = field(default_factory=dict)


class RecordError(Exception):
    """Recording cannot start as asked (e.g. --host-probes on where they cannot run)."""


def start_probes(trace_dir: Path, mode: str, flush_s: float, launches: bool = False):
    """Host probes per --host-probes; returns (probes or None, health for the manifest)."""
    if mode == "off":
        return None, {"state": "off (--host-probes off)"}
    from cctrace.record.sources.host_probes import HostProbes, ProbesUnavailable

    probes = HostProbes(trace_dir, flush_s=flush_s, launches=launches)
    try:
        probes.start()
    except ProbesUnavailable as e:
        if mode == "on":
            raise RecordError(f"host probes cannot run: {e}") from None
        _to_stderr(f"host probes off: {e}")
        return None, {"state": f"off: {e}"}
    return probes, {"state": "active"}


def _as_invoking_user() -> dict:
    """Under sudo, the traced command runs as the user who ran sudo; only the probes keep root."""
    if os.geteuid() == 0 and os.environ.get("SUDO_UID") and os.environ.get("SUDO_GID"):
        return {"user": int(os.environ["SUDO_UID"]), "group": int(os.environ["SUDO_GID"]), "extra_groups": []}
    return {}


def child_environment(trace_dir: Path, opts: RecordOptions, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(INJECT_DIR) + (os.pathsep + old if old else "")
    native = {}
    if opts.kinds and not H.NO_SHIM.on(env):
        native.update(_built(H.CUPTI_SHIM, H.CUPTI_SHIM_ERROR, "SOURCE"))
    if opts.bridge is not None:
        native.update(_built(H.BRIDGE_LIB, H.BRIDGE_LIB_ERROR, "BRIDGE_SOURCE"))
    handed = H.Handoff(
        trace_dir=str(Path(trace_dir).resolve()),
        kinds=tuple(opts.kinds),
        flush_s=opts.flush_s,
        quiet=opts.quiet,
        home=str(PACKAGE_HOME),
        bridge=opts.bridge.to_json() if opts.bridge is not None else None,
        native=native,
        stacks=opts.stacks,
        callsite_skip=tuple(opts.callsite_skip),
        callsite_keep=tuple(opts.callsite_keep),
    )
    env.update(handed.to_env())
    env.update(opts.extra_env)
    return env


def _built(path_var: H.Var, error_var: H.Var, source: str) -> dict[str, str]:
    """Build a C helper once, here, so every traced process can load it; its path, or why not."""
    from cctrace.record import native as N

    try:
        return {path_var.name: str(N.build_native(getattr(N, source)))}
    except (N.NativeUnavailable, OSError) as e:
        return {error_var.name: str(e)}


def _to_stderr(msg: str) -> None:
    print(f"cctrace: {msg}", file=sys.stderr, flush=True)


def decode_raw(trace_dir: Path, progress: Callable[[str], None] | None = None) -> dict:
    """Turn the CUPTI buffers the shim wrote into shards; returns what happened, for the manifest."""
    from cctrace.record.sources.cupti_raw import RawDecodeUnavailable, decode_trace, raw_files

    n = len(raw_files(trace_dir))
    if not n:
        return {"raw_files": 0}
    try:
        problems = decode_trace(trace_dir, progress)
    except RawDecodeUnavailable as e:
        return {"raw_files": n, "decoded": False, "reason": str(e)}
    return {"raw_files": n, "decoded": True, "problems": problems}


TRACE_FILES = ("*.arrows", "proc.*.json", "cupti.*.cuptiraw", "manifest.json", "trace.duckdb", "trace.duckdb.wal")


def clear_trace_dir(trace_dir: Path) -> int:
    """--force: remove an earlier trace's files (only cctrace's own) so runs never mix; returns how many."""
    n = 0
    for pattern in TRACE_FILES:
        for f in Path(trace_dir).glob(pattern):
            f.unlink()
            n += 1
    return n


def exit_status(returncode: int) -> int:
    """subprocess's negative 'killed by signal N' becomes the shell's 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def run_traced(cmd: list[str], trace_dir: Path, opts: RecordOptions) -> int:
    """Run `cmd` traced into `trace_dir`; returns its exit status (127 when it cannot start)."""
    trace_dir = Path(trace_dir)
    trace_dir.mkdir(parents=True, exist_ok=True)
    started_wall, started_ns = time.time(), time.monotonic_ns()
    options = {"kinds": list(opts.kinds), "flush_s": opts.flush_s, "stacks": opts.stacks}
    if opts.callsite_skip or opts.callsite_keep:
        options["callsite"] = {"skip": list(opts.callsite_skip), "keep": list(opts.callsite_keep)}
    if opts.bridge is not None:
        options["emulate_bridge"] = opts.bridge.to_json()
    probes, options["host_probes"] = start_probes(trace_dir, opts.host_probes, opts.flush_s, opts.probe_launches)
    try:
        child = subprocess.Popen(cmd, env=child_environment(trace_dir, opts), **_as_invoking_user())
    except (FileNotFoundError, PermissionError) as e:
        if probes:
            probes.stop()
        what = "command not found" if isinstance(e, FileNotFoundError) else "permission denied"
        _to_stderr(f"{what}: {cmd[0]}")
        return 127 if isinstance(e, FileNotFoundError) else 126
    if probes:
        probes.trace_pid(child.pid)

    def forward(signum, frame):  # noqa: ARG001
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    # Ctrl-C reaches the child through the terminal's process group; the launcher just waits.
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        rc = child.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    status = exit_status(rc)
    if probes:
        options["host_probes"].update(probes.stop())
    options["cupti_decode"] = decode_raw(trace_dir, None if opts.quiet else _to_stderr)
    manifest = build_manifest(trace_dir, list(cmd), started_wall, started_ns, status, options)
    write_json_atomic(trace_dir / MANIFEST, manifest)
    return status
