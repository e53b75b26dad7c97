"""The in-process side of `cctrace record`: started by the injected sitecustomize in every
Python process of the traced command.

It owns the shard writer, the sources that feed it, a flusher thread (so a SIGKILL loses at
most one interval) and the exit paths: normal exit, sys.exit and unhandled exceptions (atexit),
SIGTERM (a handler that flushes, then dies of the signal as before), fork (the child writes its
own shards) and multiprocessing's os._exit (a Finalize hook).
"""

from __future__ import annotations

import atexit
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path

from cctrace.trace import handoff as H
from cctrace.trace.environment import redact_argv
from cctrace.trace.manifest import proc_record_path, write_json_atomic
from cctrace.trace.shards import ShardWriter

# "sync" (SYNCHRONIZATION records) is not a default: it alone slows serve.py markedly (benchmarks/README.md,
# the cupti suite), and the RUNTIME records of the sync calls carry what the analysis needs.
# "overhead" (CUPTI's records of its own buffer flushes) is not a default either: no analysis reads the
# `overheads` table, and what recording costs is measured between processes (benchmarks/run_serve.py overhead).
DEFAULT_KINDS = ("memcpy", "memcpy2", "memset", "memory", "runtime")
# "kernel" also records the runtime launch calls that pair with the kernels
OPTIONAL_KINDS = ("kernel", "driver", "nvtx", "sync", "overhead")

_active: Tracer | None = None


class Tracer:
    def __init__(
        self,
        trace_dir: Path,
        kinds: tuple[str, ...],
        flush_s: float = 1.0,
        quiet: bool = False,
        bridge: dict | None = None,
        stacks: dict | None = None,
        step_functions: tuple[str, ...] = (),
        interposer: dict | None = None,
        window: dict | None = None,
    ) -> None:
        self.trace_dir = Path(trace_dir)
        self.kinds = kinds
        self.flush_s = flush_s
        self.quiet = quiet
        self.bridge = bridge  # the launcher's resolved --emulate-bridge spec
        self.step_functions = step_functions  # --step-function MODULE:QUALNAME
        self.stacks = stacks  # {"on": bool, "skip": [...], "keep": [...]} for CUPTI and the interposer; None: defaults
        self.interposer = interposer  # {"mode": on|standby, "lib": path} when the launcher preloaded it
        self.pid = os.getpid()
        self.writer = ShardWriter(self.trace_dir, self.pid)
        self.sources: dict[str, object] = {}
        self.cupti_status = "off: not started"
        self.start_ns = time.monotonic_ns()
        self._stop = threading.Event()
        self._stopped = False
        self._sigterm_pending = False
        self._flusher: threading.Thread | None = None
        self._fork_lock = threading.Lock()
        self._prev_sigterm = None
        self.forked_from: int | None = None
        # tracing windows (cctrace/record/control.py): None = traced from start to exit
        self.window = window
        self._listener = None
        self.attached = True
        self.windows: list[list] = []  # [start_ns, end_ns or None] per window this process traced
        self._wake_r = self._wake_w = -1
        self._record_lock = threading.Lock()
        self._final_written = False

    # ---- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        self._write_proc_record(final=False)
        self._start_step_functions()
        if self._start_attached():
            self.windows.append([time.monotonic_ns(), None])
            self._start_cupti()
            self._start_interposer()  # else the library waits, off, for the first window
        self._start_bridge()
        self._write_proc_record(final=False)
        self._start_flusher()
        atexit.register(self.stop, "exit")
        self._install_sigterm()
        self._wrap_os_exit()
        os.register_at_fork(
            before=self._before_fork, after_in_parent=self._after_fork_parent, after_in_child=self._after_fork_child
        )

    def _start_cupti(self) -> None:
        from cctrace.record.sources.cupti_source import CuptiSource, CuptiUnavailable

        cupti_kinds = tuple(k for k in self.kinds if k != "none")
        if not cupti_kinds:
            self.cupti_status = "off: no CUPTI activity kinds asked for"
            return
        src = CuptiSource(self.writer, cupti_kinds, flush_s=self.flush_s, stacks=self.stacks)
        try:
            src.start()
        except CuptiUnavailable as e:
            self.cupti_status = f"off: {e}"
            if H.VERBOSE.on():
                self._say(f"CUPTI is off in pid {self.pid} ({e}); the program runs untraced by CUPTI")
            self.sources["cupti"] = src
            return
        self.sources["cupti"] = src
        self.cupti_status = "active"

    def _start_step_functions(self) -> None:
        """--step-function: the named functions' calls become markers (wrapped when imported)."""
        if not self.step_functions:
            return
        from cctrace.record.step_function import StepFunctions

        src = StepFunctions(self.writer, self.step_functions)
        src.start()
        self.sources["step_function"] = src

    def _start_interposer(self) -> None:
        """The preloaded driver interposer: switched on here when it stood by and CUPTI is off."""
        if not self.interposer:
            return
        from cctrace.record.sources.interposer import InterposerSource

        src = InterposerSource(self.interposer["lib"], self.interposer["mode"], stacks=self.stacks)
        src.start(cupti_running=self.cupti_status == "active")
        self.sources["interposer"] = src

    def _interposer_window(self, on: bool) -> None:
        src = self.sources.get("interposer")
        if src is not None:
            src.window(on)  # type: ignore[attr-defined]

    def _start_bridge(self) -> None:
        """--emulate-bridge: act out a CC bridge inside this process's copy calls."""
        if self.bridge is None:
            return
        from cctrace.record.bridge import BridgeEmulator, BridgeSpec

        cupti_src = self.sources.get("cupti")
        hooks = cupti_src.callback_hooks() if cupti_src is not None else None  # type: ignore[attr-defined]
        ids = None
        interposer = self.sources.get("interposer")
        if hooks is None and interposer is not None and interposer.recording():  # type: ignore[attr-defined]
            hooks, ids = interposer.callback_hooks()  # type: ignore[attr-defined]  # no CUPTI needed
        emu = BridgeEmulator(BridgeSpec.from_json(self.bridge), hooks=hooks, writer=self.writer, callback_ids=ids)
        self.sources["bridge"] = emu
        try:
            emu.start()
        except RuntimeError as e:
            emu.status = f"off: {e}"
            self._say(f"bridge emulation is off in pid {self.pid}: {e}")

    def _start_attached(self) -> bool:
        """With windows: listen to the launcher, and start in its state (or as it asked)."""
        if self.window is None:
            return True
        from cctrace.record.control import Listener

        try:
            self._listener = Listener(self.trace_dir, self.pid)
        except OSError as e:
            self._say(f"tracing windows unavailable in pid {self.pid} ({e}); tracing it throughout")
            return True
        initial = self._listener.initial
        self.attached = (not self.window.get("start_detached")) if initial is None else initial
        if not self.attached:
            self.cupti_status = "off: detached (no tracing window open yet)"
        return self.attached

    def _start_flusher(self) -> None:
        self._stop = threading.Event()
        if self._wake_r >= 0:
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._flusher = threading.Thread(target=self._flush_loop, name="cctrace-flusher", daemon=True)
        self._flusher.start()

    def _flush_loop(self) -> None:
        """Every flush_s while attached; while detached, asleep until the launcher says otherwise."""
        while not self._stop.is_set():
            fds = [self._wake_r] + ([self._listener.fd] if self._listener is not None else [])
            ready, _, _ = select.select(fds, [], [], self.flush_s if self.attached else None)
            if self._stop.is_set():
                return
            if self._wake_r in ready:  # set_attached() from another thread: the timeout changed
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            if self._listener is not None and self._listener.fd in ready:
                want = self._listener.read()
                if want is not None and want != self.attached:
                    self.set_attached(want)
                    continue
            if not self.attached:
                continue
            try:
                # a fork waits for this (see _before_fork): no child inherits CUPTI or the writer mid-flush
                with self._fork_lock:
                    for src in list(self.sources.values()):
                        src.drain()  # type: ignore[attr-defined]
                    self.writer.flush()
            except Exception as e:  # noqa: BLE001 - a flush failure must not kill the traced program
                self._error(f"flush failed: {e}")

    def set_attached(self, on: bool, wait_s: float = 2.0) -> None:
        """Open (CUPTI attached, kinds on) or close (CUPTI detached, everything written) a window.
        `wait_s`: how long a detach waits for a CUDA call to return and finalize CUPTI (after that,
        the program's next call does it)."""
        with self._fork_lock:
            if on == self.attached or self._stopped:
                return
            src = self.sources.get("cupti")
            try:
                if on:
                    self.windows.append([time.monotonic_ns(), None])
                    if src is None:
                        self._start_cupti()  # the first window: CUPTI starts only now
                    else:
                        src.attach()  # type: ignore[attr-defined]
                    if "interposer" not in self.sources:
                        self._start_interposer()  # standby or on, decided now that CUPTI's state is known
                    self._interposer_window(True)
                else:
                    if src is not None:
                        src.detach(wait_s)  # type: ignore[attr-defined]
                    self._interposer_window(False)
                    self.writer.flush()
                    self.windows[-1][1] = time.monotonic_ns()
            except Exception as e:  # noqa: BLE001 - a window failure must not kill the traced program
                self._error(f"{'attach' if on else 'detach'} failed: {e}")
            self.attached = on
        if threading.current_thread() is not self._flusher and self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"w")  # the flusher sleeps on a timeout that just changed
            except OSError:
                pass
        self._write_proc_record(final=False)

    def _before_fork(self) -> None:
        self._fork_lock.acquire()

    def _after_fork_parent(self) -> None:
        self._fork_lock.release()

    def stop(self, reason: str = "exit") -> None:
        """Drain the sources and close the shards; safe to call more than once."""
        if self._stopped or os.getpid() != self.pid:
            return
        # under the fork lock when it comes soon: a window opening now then sees _stopped and adds no source
        locked = self._fork_lock.acquire(timeout=2.0)
        try:
            self._stopped = True
        finally:
            if locked:
                self._fork_lock.release()
        self._stop.set()
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._listener is not None:
            self._listener.close()
        if self.windows and self.windows[-1][1] is None:
            self.windows[-1][1] = time.monotonic_ns()
        if self.window is not None and not self.windows and "cupti" not in self.sources:
            self.cupti_status = "off: no tracing window opened while it ran"
        for src in list(self.sources.values()):  # a window opening now may still add one
            try:
                src.stop()  # type: ignore[attr-defined]
            except Exception as e:  # noqa: BLE001
                self._error(f"stopping a source failed: {e}")
        try:
            self.writer.close()
        except Exception as e:  # noqa: BLE001
            self._error(f"closing shards failed: {e}")
        self.exit_reason = reason
        self._write_proc_record(final=True)
        if self._sigterm_pending:
            self._die_of_sigterm()

    # ---- exit paths -------------------------------------------------------------------
    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, self._on_sigterm)
        except (ValueError, OSError):
            pass

    def _on_sigterm(self, signum, frame) -> None:  # noqa: ARG002
        if self._stopped:
            # interrupted our own stop() (e.g. a pool worker already exiting): let it finish, die after
            self._sigterm_pending = True
            return
        self.stop("SIGTERM")
        self._die_of_sigterm()

    def _die_of_sigterm(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    def _after_fork_child(self) -> None:
        """A forked child is a new process: it writes its own shards and its own record."""
        self._fork_lock = threading.Lock()  # the parent's was held across fork by the forking thread
        self._record_lock = threading.Lock()
        self._final_written = False
        parent = self.pid
        self.pid = os.getpid()
        self.forked_from = parent
        self.start_ns = time.monotonic_ns()
        self.writer.reopen_for_child(self.pid)
        if self._listener is not None:  # the parent's pipe: never read here
            os.close(self._listener.fd)
            self._listener = None
        self.attached = True
        self.windows = [[self.start_ns, None]]
        self._stopped = False
        self._sigterm_pending = False
        for src in self.sources.values():
            after = getattr(src, "after_fork_child", None)
            if after:
                after()
        if self.cupti_status == "active":
            self.cupti_status = (
                f"off: forked from pid {parent}, and CUPTI does not survive fork() "
                "(start CUDA workers with spawn or forkserver to trace them)"
            )
        try:
            self._fork_interposer()
        except Exception as e:  # noqa: BLE001 - the child must still write its record and shards
            self._error(f"the interposer in a forked child: {e}")
        self._write_proc_record(final=False)
        self._start_flusher()

    def _fork_interposer(self) -> None:
        """A forked child is traced throughout: an interposer that records this trace (on, or windowed and
        not started yet because the parent was outside a window at the fork) records the child. One that
        stood by stays so: the parent's CUPTI records speak for the trace, and the analysis takes CUPTI's
        calls over the interposer's trace-wide."""
        from cctrace.record.sources.interposer import RECORDING_MODES

        if not self.interposer or self.interposer["mode"] not in RECORDING_MODES:
            return
        if "interposer" not in self.sources:
            self._start_interposer()
        self._interposer_window(True)

    def _wrap_os_exit(self) -> None:
        """multiprocessing's fork children (and some servers' workers) leave through os._exit,
        which skips atexit; flush first, then exit exactly as asked."""
        real_exit = os._exit
        if getattr(real_exit, "_cctrace_wrapped", False):
            return

        def _exit(code: int) -> None:
            tracer = _active
            if tracer is not None:
                tracer.stop("os._exit")
            real_exit(code)

        _exit._cctrace_wrapped = True  # type: ignore[attr-defined]
        os._exit = _exit

    # ---- records ------------------------------------------------------------------------
    def _write_proc_record(self, final: bool) -> None:
        """One writer at a time, and nothing after the final record (the flusher may still be
        finishing a window change when the program exits)."""
        with self._record_lock:
            if self._final_written and not final:
                return
            self._final_written = final
            self._write_proc_record_now(final)

    def _write_proc_record_now(self, final: bool) -> None:
        health = {}
        for name, src in self.sources.items():
            health[name] = src.health()  # type: ignore[attr-defined]
        rec = {
            "pid": self.pid,
            "ppid": os.getppid(),
            "forked_from": self.forked_from,
            "argv": redact_argv(sys.argv) if hasattr(sys, "argv") else [],
            "executable": sys.executable,
            "start_ns": self.start_ns,
            "end_ns": time.monotonic_ns() if final else None,
            "exit_reason": getattr(self, "exit_reason", None) if final else None,
            "cupti": self.cupti_status,
            "kinds": list(self.kinds),
            "windows": self.windows if self.window is not None else None,
            "sources": health,
            "rows_written": dict(self.writer.rows_written),
            "rows_lost": dict(self.writer.rows_lost),
        }
        try:
            write_json_atomic(proc_record_path(self.trace_dir, self.pid), rec)
        except OSError as e:
            self._say(f"could not write the process record: {e}")

    def _error(self, msg: str) -> None:
        src = self.sources.get("cupti")
        if src is not None:
            src.errors.append(msg)  # type: ignore[attr-defined]
        self._say(msg)

    def _say(self, msg: str) -> None:
        if not self.quiet:
            sys.stderr.write(f"cctrace: {msg}\n")


def boot_from_env() -> Tracer | None:
    """Start tracing this process if `cctrace record` asked for it through the environment."""
    global _active
    handed = H.Handoff.from_env()
    if handed is None or _active is not None:
        return _active
    _active = Tracer(
        Path(handed.trace_dir),
        handed.kinds or DEFAULT_KINDS,
        flush_s=handed.flush_s,
        quiet=handed.quiet,
        bridge=handed.bridge,
        stacks={"on": handed.stacks, "skip": list(handed.callsite_skip), "keep": list(handed.callsite_keep)},
        step_functions=handed.step_functions,
        interposer=(
            {"mode": handed.interpose, "lib": handed.native[H.INTERPOSE_LIB.name]}
            if handed.interpose != "off" and H.INTERPOSE_LIB.name in handed.native
            else None
        ),
        window=handed.window,
    )
    _active.start()
    return _active
