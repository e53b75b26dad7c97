"""`cctrace record -- CMD`: run CMD with the tracer injected into every Python process it starts.

Injection is by environment only (PYTHONPATH gains a folder holding cctrace's sitecustomize), so
children started by subprocess or multiprocessing (fork or spawn) are traced without code
changes. The launcher forwards termination signals to the child, waits, merges the
per-process records into manifest.json and returns the child's exit status, whatever fails in
cctrace itself after the program ran.

Under sudo, the trace directory is made by the invoking user, and once the host probes are loaded
(the one thing that needs root) the launcher drops to that user for good: the program, its native
helpers' build cache, every file of the trace and the load all belong to the user.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import pwd
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cctrace.record import control
from cctrace.record import tracer as T
from cctrace.record.bridge import BridgeSpec
from cctrace.resources import PACKAGE
from cctrace.trace import handoff as H
from cctrace.trace import safefs
from cctrace.trace.manifest import MANIFEST, build_manifest, load_manifest, write_json_atomic

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
    step_functions: tuple[str, ...] = ()  # --step-function MODULE:QUALNAME
    interpose: str = "auto"  # --interpose on | off | auto
    interpose_launches: bool = False  # --probe-launches, for the interposer
    window: Window | None = None  # --delay/--duration/--toggle-signal/--start-detached
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Window:
    """When the traced processes trace: from `delay_s` for `duration_s` (None: to the end), and/or
    toggled by `toggle_signal` sent to cctrace (starting off with `start_detached`)."""

    delay_s: float = 0.0
    duration_s: float | None = None
    toggle_signal: signal.Signals | None = None
    start_detached: bool = False

    def starts_on(self) -> bool:
        return not self.start_detached and self.delay_s <= 0

    def schedule(self, t0: float) -> list[tuple[float, bool]]:
        """(monotonic time, state) changes due by the clock alone."""
        out = []
        if self.delay_s > 0:
            out.append((t0 + self.delay_s, True))
        if self.duration_s is not None:
            out.append((t0 + self.delay_s + self.duration_s, False))
        return out

    def to_json(self) -> dict:
        sig = self.toggle_signal.name if self.toggle_signal is not None else None
        return {
            "delay_s": self.delay_s,
            "duration_s": self.duration_s,
            "toggle_signal": sig,
            "start_detached": self.start_detached,
        }


class RecordError(Exception):
    """Recording cannot start as asked (e.g. --host-probes on where they cannot run)."""


def start_probes(trace_dir: Path, mode: str, flush_s: float, launches: bool = False, uprobes: bool = True):
    """Host probes per --host-probes; returns (probes or None, health for the manifest). Without
    uprobes (the interposer records the calls) only what the kernel sees: off-CPU time and ioctls."""
    if mode == "off":
        return None, {"state": "off (--host-probes off)"}
    from cctrace.record.sources.host_probes import HostProbes, ProbesUnavailable

    probes = HostProbes(trace_dir, flush_s=flush_s, launches=launches, uprobes=uprobes)
    try:
        probes.start()
    except ProbesUnavailable as e:
        if mode == "on":
            raise RecordError(f"host probes cannot run: {e}") from None
        _to_stderr(f"host probes off: {e}")
        return None, {"state": f"off: {e}"}
    return probes, {"state": "active"}


def invoking_user() -> tuple[int, int] | None:
    """(uid, gid) of the user who ran `sudo cctrace ...`; None when not running as root under sudo."""
    if os.geteuid() != 0:
        return None
    try:
        uid, gid = int(os.environ["SUDO_UID"]), int(os.environ["SUDO_GID"])
    except (KeyError, ValueError):
        return None
    return (uid, gid) if uid != 0 else None


@contextlib.contextmanager
def as_invoking_user():
    """Run the block with the invoking user's effective ids (files it makes are the user's).
    Only while the launcher has no threads: the ids of a Linux process change for all its threads."""
    who = invoking_user()
    if who is None:
        yield
        return
    os.setegid(who[1])
    os.seteuid(who[0])
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


# what the launcher imports after the drop (the manifest, the raw decoder, the load, the summary)
AFTER_DROP = (
    "pyarrow.compute",
    "pynvml",
    "duckdb",
    "cctrace.analyze.store",
    "cctrace.record.sources.cupti_raw",
    "cctrace.record.native",
    "cctrace.trace.injections",
    "cctrace.ui.render",
)


def drop_privileges() -> None:
    """Under sudo: become the invoking user (after the probes are loaded), with their HOME, so the
    program, the native helpers' cache and every later file are theirs. Root stays only as the saved
    id, for `as_root` around detaching the probes (bcc writes uprobe_events); the program never has it
    (exec makes the saved id the effective one) and cannot ptrace the launcher (its saved id differs)."""
    who = invoking_user()
    if who is None:
        return
    uid, gid = who
    for module in AFTER_DROP:  # imported while root can read them: a root-only install still finishes
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    try:
        entry = pwd.getpwuid(uid)
        os.initgroups(entry.pw_name, gid)
        os.environ.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
    except KeyError:
        os.setgroups([])
    os.setresgid(gid, gid, 0)
    os.setresuid(uid, uid, 0)


@contextlib.contextmanager
def as_root(trace_dir: Path):
    """Root again for the block (only after drop_privileges); files it left in the trace directory are
    handed to the user."""
    uid, gid = os.getuid(), os.getgid()
    if os.getresuid()[2] != 0 or uid == 0:
        yield
        return
    os.seteuid(0)
    os.setegid(0)
    try:
        yield
    finally:
        with contextlib.suppress(OSError), safefs.directory(trace_dir) as dfd:
            for name in os.listdir(dfd):
                if os.stat(name, dir_fd=dfd, follow_symlinks=False).st_uid == 0:
                    os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
        os.setegid(gid)
        os.seteuid(uid)


LOCK = ".cctrace.lock"
TRACE_FILES = ("manifest.json", "trace.duckdb", "trace.duckdb.wal", "trace.duckdb.cctrace-hmac", control.STATE_FILE)


def prepare_trace_dir(out: Path, force: bool) -> int:
    """Make (or check) the trace directory before anything runs: ours, writable, not being recorded
    into by another cctrace (a lock held until this process exits; returned), and empty -- with
    --force, emptied of exactly the files the earlier trace's manifest lists."""
    out = Path(out)
    with as_invoking_user():
        try:
            dfd = safefs.open_dir(out, create=True)
        except OSError as e:
            raise RecordError(f"cannot use {out} as the trace directory: {e}") from None
        try:
            _check_writable(dfd, out)
            lock = _lock(dfd, out)
        finally:
            os.close(dfd)
    others = sorted(p.name for p in out.iterdir() if p.name != LOCK)
    if others:
        if not force:
            os.close(lock)
            raise RecordError(f"{out} exists and is not empty; choose another -o or pass --force")
        _clear_earlier_trace(out, others, lock)
    return lock


def _check_writable(dfd: int, out: Path) -> None:
    name = f".cctrace-probe-{secrets.token_hex(4)}"
    try:
        os.close(safefs.create_file(dfd, name, 0o600))
        os.unlink(name, dir_fd=dfd)
    except OSError as e:
        raise RecordError(f"cannot write into {out} ({e.strerror}); choose a directory you can write to") from None


def _lock(dfd: int, out: Path) -> int:
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise RecordError(
            f"{out} is being recorded into by another cctrace (pid {holder}); choose another -o"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _clear_earlier_trace(out: Path, present: list[str], lock: int) -> None:
    """--force: remove the files the earlier manifest lists (and the DuckDB file built from them) and
    nothing else; refuse when an unlisted file would be loaded as part of the new trace."""
    manifest, problem = load_manifest(out)
    listed = set(manifest.get("files") or []) if not problem else set()
    if problem or not isinstance(manifest.get("files"), list):
        os.close(lock)
        raise RecordError(
            f"{out} holds no complete earlier trace (its manifest.json lists no files); "
            "--force removes only what one lists: choose another -o"
        )
    removable = listed | set(TRACE_FILES)
    foreign = [n for n in present if n not in removable and _loadable(n)]
    if foreign:
        os.close(lock)
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise RecordError(f"{out} holds trace files the earlier manifest does not list ({shown}); choose another -o")
    with safefs.directory(out) as dfd:
        for name in present:
            if name in removable:
                safefs.remove(dfd, name)


def _loadable(name: str) -> bool:
    """Whether `load` would take this file into the trace (a shard, a process record, raw CUPTI buffers or
    interposer records)."""
    from cctrace.trace.manifest import trace_file_pid

    return trace_file_pid(name) is not None or name == MANIFEST


def interposer_mode(opts: RecordOptions) -> dict:
    """--interpose: 'on' records from the start, 'standby' preloads it for the tracer to switch on if
    CUPTI is refused in the process, 'off' leaves the program alone. auto is on when CUPTI cannot run
    (no kinds asked, cupti-python missing, Confidential Computing on) and standby otherwise. With tracing
    windows, 'on' becomes 'windowed': off outside them, switched by each Python process's tracer."""
    if opts.interpose == "off":
        return {"mode": "off", "why": "--interpose off"}
    why = "asked (--interpose on)" if opts.interpose == "on" else _cupti_cannot_run(opts)
    if why and opts.window is not None:  # each process's tracer switches it at the window's edges
        return {"mode": "windowed", "why": f"{why}; inside tracing windows, in Python processes only"}
    return {"mode": "on" if why else "standby", "why": why or "CUPTI runs; on only where it is refused"}


def plan_interposer(opts: RecordOptions, mode: dict | None = None) -> dict:
    """The interposer's mode (interposer_mode) and, unless off, the built library to preload."""
    plan = dict(mode or interposer_mode(opts))
    if plan["mode"] == "off":
        return plan
    from cctrace.record import native as N

    try:
        plan["lib"] = str(N.build_native(N.INTERPOSE_SOURCE))
    except (N.NativeUnavailable, OSError) as e:
        if opts.interpose == "on":
            raise RecordError(f"the driver interposer cannot be built: {e}") from None
        return {"mode": "off", "why": f"cannot be built: {e}"}
    return plan


def _cupti_cannot_run(opts: RecordOptions) -> str | None:
    """Why CUPTI will not record here, known before the program starts; None when it should."""
    import importlib.util

    if not opts.kinds:
        return "no CUPTI kinds asked for (--kinds none)"
    if importlib.util.find_spec("cupti") is None:
        return "cupti-python is not installed"
    from cctrace.trace.manifest import gpu_facts

    cc = (gpu_facts().get("confidential_computing") or {}) if _have_driver() else {}
    if cc.get("ccFeature") == "on" and cc.get("devToolsMode") != "on":
        return "Confidential Computing is on (production mode refuses CUPTI)"
    return None


def _have_driver() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def child_environment(
    trace_dir: Path, opts: RecordOptions, base: dict[str, str] | None = None, interposer: dict | None = None
) -> dict[str, str]:
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
        step_functions=tuple(opts.step_functions),
        interpose_launches=opts.interpose_launches,
        window={"start_detached": not opts.window.starts_on()} if opts.window is not None else None,
    )
    if interposer and interposer.get("lib"):
        # preloaded into every process the command starts (LD_PRELOAD is inherited)
        handed.interpose = interposer["mode"]
        handed.native[H.INTERPOSE_LIB.name] = interposer["lib"]
        old_preload = env.get("LD_PRELOAD")
        env["LD_PRELOAD"] = interposer["lib"] + (" " + old_preload if old_preload else "")
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


def decode_interposed(trace_dir: Path) -> dict:
    """The interposer's raw files -> shards (numpy and pyarrow only); what happened, for the manifest."""
    from cctrace.record.sources.interposer import decode_trace, raw_files

    n = len(raw_files(trace_dir))
    return {"raw_files": n, "problems": decode_trace(trace_dir)} if n else {"raw_files": 0}


def exit_status(returncode: int) -> int:
    """subprocess's negative 'killed by signal N' becomes the shell's 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def run_traced(cmd: list[str], trace_dir: Path, opts: RecordOptions) -> int:
    """Run `cmd` traced into `trace_dir`; returns its exit status (127 when it cannot start)."""
    trace_dir = Path(trace_dir)
    started_wall, started_ns = time.time(), time.monotonic_ns()
    options = {"kinds": list(opts.kinds), "flush_s": opts.flush_s, "stacks": opts.stacks}
    if opts.callsite_skip or opts.callsite_keep:
        options["callsite"] = {"skip": list(opts.callsite_skip), "keep": list(opts.callsite_keep)}
    if opts.bridge is not None:
        options["emulate_bridge"] = opts.bridge.to_json()
    if opts.step_functions:
        options["step_functions"] = list(opts.step_functions)
    window = opts.window
    probes_mode = opts.host_probes
    if window is not None:
        probes_mode = _window_probes(window, probes_mode, options)
        control.publish(trace_dir, window.starts_on())
    driver = _WindowDriver(trace_dir, window, opts, options) if window is not None else None
    mode = interposer_mode(opts)
    probes, options["host_probes"] = start_probes(
        trace_dir, probes_mode, opts.flush_s, opts.probe_launches, uprobes=mode["mode"] != "on"
    )
    if "host_probes_window" in options:
        options["host_probes"] = {"state": options.pop("host_probes_window")}
    drop_privileges()
    try:  # built as the invoking user, into their cache: the program must be able to map it
        interposer = plan_interposer(opts, mode)
    except RecordError:
        if probes:
            probes.stop()
        if driver:
            driver.close()
        raise
    options["interpose"] = {k: v for k, v in interposer.items() if k != "lib"}
    env = child_environment(trace_dir, opts, interposer=interposer)  # may compile helpers: before tracing forks
    if probes:
        probes.trace_children(os.getpid())  # the command is traced from its fork, not once Popen returns
    try:
        child = subprocess.Popen(cmd, env=env)
    except (FileNotFoundError, PermissionError) as e:
        if probes:
            probes.stop()
        if driver:
            driver.close()
        what = "command not found" if isinstance(e, FileNotFoundError) else "permission denied"
        _to_stderr(f"{what}: {cmd[0]}")
        return 127 if isinstance(e, FileNotFoundError) else 126
    finally:
        if probes:
            probes.trace_children(os.getpid(), on=False)
    if probes:
        probes.trace_pid(child.pid)

    def forward(signum, frame):  # noqa: ARG001
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    forwarded = [s for s in FORWARDED if window is None or s != window.toggle_signal]
    previous = {s: signal.signal(s, forward) for s in forwarded}
    # Ctrl-C reaches the child through the terminal's process group; the launcher just waits.
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if driver is None:
            rc = child.wait()
        else:
            probes, rc = driver.wait(child, probes)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    status = exit_status(rc)
    try:
        finish(trace_dir, cmd, probes, options, opts, started_wall, started_ns, status)
    except Exception as e:  # noqa: BLE001 - the program's exit status must survive any failure of cctrace's
        _to_stderr(
            f"the trace in {trace_dir} is incomplete: {type(e).__name__}: {e}; `cctrace load` keeps what was written"
        )
    return status


def finish(trace_dir: Path, cmd: list[str], probes, options: dict, opts: RecordOptions, *when_status) -> None:
    """After the program: stop the probes, decode CUPTI's raw buffers, write the manifest."""
    started_wall, started_ns, status = when_status
    if probes:
        with as_root(trace_dir):
            options["host_probes"].update(probes.stop())
        options["host_probes"].update(pid=os.getpid(), rows_written=dict(probes.writer.rows_written))
    options["cupti_decode"] = decode_raw(trace_dir, None if opts.quiet else _to_stderr)
    options["interpose"]["decode"] = decode_interposed(trace_dir)
    manifest = build_manifest(trace_dir, list(cmd), started_wall, started_ns, status, options)
    write_json_atomic(trace_dir / MANIFEST, manifest)


def _window_probes(window: Window, mode: str, options: dict) -> str:
    """Host probes follow one window that opens at the start (--duration): they need root, which
    cctrace gives up once the program starts, so they cannot start later, nor again."""
    if mode == "off":
        return mode
    why = None
    if window.toggle_signal is not None:
        why = "host probes do not follow --toggle-signal"
    elif not window.starts_on():
        why = "host probes cannot start after --delay (cctrace gives up root once the program starts)"
    if why is None:
        return mode
    if mode == "on":
        raise RecordError(f"{why}; use --host-probes off")
    options["host_probes_window"] = f"off: {why}"
    return "off"


class _WindowDriver:
    """Opens and closes the tracing windows of a recording: on the clock (--delay, --duration) and on
    each toggle signal sent to cctrace. Set up before the child starts (a toggle sent early must not
    kill cctrace), then waits for the child."""

    def __init__(self, trace_dir: Path, window: Window, opts: RecordOptions, options: dict):
        self.trace_dir, self.window, self.opts = trace_dir, window, opts
        self.on = window.starts_on()
        self.opened: list[list] = [[time.monotonic_ns(), None]] if self.on else []
        options["window"] = {**window.to_json(), "windows": self.opened}
        self.options = options
        self.due = window.schedule(time.monotonic())
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.previous = None
        if window.toggle_signal is not None:
            self.previous = signal.signal(window.toggle_signal, self._on_toggle)
        self.changes = 0

    def _on_toggle(self, signum, frame) -> None:  # noqa: ARG002
        try:
            os.write(self.wake_w, b"t")
        except OSError:
            pass

    def wait(self, child: subprocess.Popen, probes):
        """Until the child ends; returns (host probes still running or None, its returncode)."""
        pidfd = os.pidfd_open(child.pid)
        try:
            while True:
                timeout = max(0.0, self.due[0][0] - time.monotonic()) if self.due else None
                ready, _, _ = select.select([pidfd, self.wake_r], [], [], timeout)
                if pidfd in ready:
                    break
                changes: list[bool | None] = []
                while self.due and self.due[0][0] <= time.monotonic():
                    changes.append(self.due.pop(0)[1])
                if self.wake_r in ready:
                    try:
                        changes.extend([None] * len(os.read(self.wake_r, 4096)))  # None: a toggle
                    except BlockingIOError:
                        pass
                for want in changes:
                    probes = self._change(not self.on if want is None else want, probes)
            return probes, child.wait()
        finally:
            os.close(pidfd)
            self.close()

    def _change(self, on: bool, probes):
        if on == self.on:
            return probes
        self.on = on
        if on:
            self.opened.append([time.monotonic_ns(), None])
        self.changes += 1
        control.publish(self.trace_dir, on, self.changes)
        if not on:
            self.opened[-1][1] = time.monotonic_ns()
        if not on and probes is not None:  # the probes' one window (--duration) ends
            self.options["host_probes"].update(probes.stop())
            probes = None
        if not self.opts.quiet:
            _to_stderr(f"tracing {'on' if on else 'off'}")
        return probes

    def close(self) -> None:
        if self.previous is not None:
            signal.signal(self.window.toggle_signal, self.previous)
            self.previous = None
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.opened and self.opened[-1][1] is None:
            self.opened[-1][1] = time.monotonic_ns()
