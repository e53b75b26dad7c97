"""Tracing windows: the launcher says when the traced processes trace, each tracer obeys.

`record --duration/--delay` and `--toggle-signal` share one channel. The launcher owns the state
("on" or "off"): it writes it to `control.json` in the trace directory, then writes one byte ('1' or
'0') into each traced process's pipe `control.<pid>.fifo`. A tracer makes its pipe first, then reads
the state file, so a process that starts while the state changes still ends up in the new state. The
traced program sees no signal: a program that uses the toggle signal itself is left alone.

Each tracer's flusher thread waits on its pipe with select(): while detached it sleeps until told,
with no periodic wake-up.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

from cctrace.trace.manifest import write_json_atomic

STATE_FILE = "control.json"
FIFO_PREFIX = "control."
FIFO_SUFFIX = ".fifo"
ON, OFF = b"1", b"0"


def fifo_path(trace_dir: Path, pid: int) -> Path:
    return Path(trace_dir) / f"{FIFO_PREFIX}{pid}{FIFO_SUFFIX}"


def publish(trace_dir: Path, on: bool, changes: int = 0) -> int:
    """The launcher's side: the new state (the `changes`-th) to every traced process; returns how
    many were told."""
    trace_dir = Path(trace_dir)
    write_json_atomic(trace_dir / STATE_FILE, {"on": on, "changes": changes})
    told = 0
    for path in sorted(trace_dir.glob(f"{FIFO_PREFIX}*{FIFO_SUFFIX}")):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.ENOENT, errno.ELOOP):  # its process is gone; a link
                continue
            raise
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, ON if on else OFF)
                told += 1
        except BlockingIOError:  # a full pipe: that process has unread states, the last one wins
            told += 1
        finally:
            os.close(fd)
    return told


def read_state(trace_dir: Path) -> bool | None:
    """The launcher's current state; None when it has published none."""
    try:
        return bool(json.loads((Path(trace_dir) / STATE_FILE).read_text())["on"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Listener:
    """A tracer's end: its pipe, held open for reading and writing (so select() never sees EOF)."""

    def __init__(self, trace_dir: Path, pid: int) -> None:
        self.path = fifo_path(trace_dir, pid)
        if self.path.is_symlink() or self.path.exists():
            self.path.unlink()
        os.mkfifo(self.path, 0o600)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.initial = read_state(trace_dir)

    def read(self) -> bool | None:
        """The last state written since the previous read; None if nothing came."""
        last = None
        while True:
            try:
                data = os.read(self.fd, 256)
            except BlockingIOError:
                return last
            if not data:
                return last
            for b in data:
                if b in ON:
                    last = True
                elif b in OFF:
                    last = False

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
        try:
            self.path.unlink()
        except OSError:
            pass
