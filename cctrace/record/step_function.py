"""`record --step-function MODULE:QUALNAME`: each call of a named Python function becomes a `markers`
row (source 'step_function', name QUALNAME, domain 'cctrace'), so a server's own step function marks
its steps without a code change and without NVTX.

The function is wrapped where it is defined, as soon as its module has been executed: now when the
module is already imported, else through an import hook that patches the module's loader. Every
traced process installs the same hook (spawned and forked workers too). Calls are timed with
CLOCK_MONOTONIC, the trace's clock; a thread only appends to a deque, the flusher writes the rows.
"""

from __future__ import annotations

import functools
import importlib.abc
import inspect
import re
import sys
import threading
import time
from collections import deque

SOURCE = "step_function"
DOMAIN = "cctrace"
COLUMNS = ("pid", "tid", "name", "domain", "start_ns", "end_ns", "source")
_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class StepFunctionError(ValueError):
    pass


def parse_target(text: str) -> tuple[str, str]:
    """'pkg.module:Class.method' -> ('pkg.module', 'Class.method'); a one-line error otherwise."""
    module, sep, qual = text.strip().partition(":")
    if not sep or not _NAME.match(module) or not _NAME.match(qual):
        raise StepFunctionError(
            f"{text!r} is not MODULE:QUALNAME (e.g. vllm.v1.engine.core:EngineCore.step or mymodel:decode_step)"
        )
    return module, qual


class StepFunctions:
    """A tracer source: wraps the named functions and writes one marker per call."""

    def __init__(self, writer, targets: tuple[str, ...]) -> None:
        self.writer = writer
        self.targets: dict[str, list[str]] = {}
        for t in targets:
            module, qual = parse_target(t)
            self.targets.setdefault(module, []).append(qual)
        self.state: dict[str, str] = {f"{m}:{q}": "module not imported" for m, qs in self.targets.items() for q in qs}
        self.calls: deque[tuple[int, str, int, int]] = deque()
        self.rows = 0
        self.errors: list[str] = []
        self._finder: _Finder | None = None

    def start(self) -> None:
        pending = {}
        for module, quals in self.targets.items():
            if module in sys.modules:
                self._wrap_module(sys.modules[module])
            else:
                pending[module] = quals
        if pending:
            self._finder = _Finder(set(pending), self._wrap_module)
            sys.meta_path.insert(0, self._finder)

    def _wrap_module(self, module) -> None:
        for qual in self.targets.get(module.__name__, ()):
            key = f"{module.__name__}:{qual}"
            try:
                self._wrap(module, qual)
                self.state[key] = "wrapped"
            except Exception as e:  # noqa: BLE001 - a bad name must not stop the program
                self.state[key] = f"not wrapped: {e}"
                self.errors.append(f"--step-function {key}: {e}")

    def _wrap(self, module, qual: str) -> None:
        *path, last = qual.split(".")
        owner = module
        for part in path:
            owner = getattr(owner, part)
        raw = owner.__dict__.get(last) if hasattr(owner, "__dict__") else None
        if raw is None:
            raise AttributeError(f"{owner.__name__ if hasattr(owner, '__name__') else owner} has no {last!r}")
        if getattr(raw, "_cctrace_step", False):
            return
        if isinstance(raw, (staticmethod, classmethod)):
            setattr(owner, last, type(raw)(self._timed(raw.__func__, qual)))
        elif callable(raw):
            setattr(owner, last, self._timed(raw, qual))
        else:
            raise TypeError(f"{qual} is a {type(raw).__name__}, not a function")

    def _timed(self, fn, name: str):
        calls = self.calls

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def timed_async(*args, **kwargs):
                t0 = time.monotonic_ns()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    calls.append((threading.get_native_id(), name, t0, time.monotonic_ns()))

            timed_async._cctrace_step = True  # type: ignore[attr-defined]
            return timed_async

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = time.monotonic_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                calls.append((threading.get_native_id(), name, t0, time.monotonic_ns()))

        timed._cctrace_step = True  # type: ignore[attr-defined]
        return timed

    # ---- tracer source protocol --------------------------------------------------------------
    def drain(self) -> None:
        rows = []
        pid = self.writer.pid
        while self.calls:
            tid, name, start, end = self.calls.popleft()
            rows.append((pid, tid, name, DOMAIN, start, end, SOURCE))
        if rows:
            self.writer.extend("markers", COLUMNS, rows)
            self.rows += len(rows)

    def stop(self) -> None:
        self.drain()

    def after_fork_child(self) -> None:
        self.calls.clear()  # the parent's calls are the parent's to write
        self.rows = 0

    def health(self) -> dict:
        status = "active" if any(s == "wrapped" for s in self.state.values()) else "waiting for import"
        return {
            "status": status,
            "targets": dict(self.state),
            "records": {"markers": self.rows},
            "errors": list(self.errors),
            "dropped": 0,
        }


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a watched module it asks the other finders, then makes the loader
    wrap the step functions once the module has run."""

    def __init__(self, modules: set[str], on_loaded) -> None:
        self.modules = modules
        self.on_loaded = on_loaded

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.modules:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module
        on_loaded = self.on_loaded

        def exec_module(module):
            run(module)
            on_loaded(module)

        try:
            loader.exec_module = exec_module  # this module's own loader instance: isinstance checks hold
        except (AttributeError, TypeError):
            return spec
        return spec
