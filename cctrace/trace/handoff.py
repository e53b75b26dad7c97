"""Every `CCTRACE_*` environment name, in one place, with what it carries.

Two directions share the environment: the launcher hands a traced process what it needs
(`Handoff`, written once by `Handoff.to_env` and read once by `Handoff.from_env`), and users and
benchmarks set tunables that either side reads (`Var.get`). The injected sitecustomize imports
this module at start-up of every traced Python process, so it imports nothing but the standard
library's lightest modules.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

PREFIX = "CCTRACE_"


@dataclass(frozen=True)
class Var:
    """One environment name, its meaning and its default."""

    name: str
    doc: str
    default: str | None = None

    def get(self, env: Mapping[str, str] | None = None) -> str | None:
        """The value (or the default); an empty value counts as unset."""
        return (os.environ if env is None else env).get(self.name) or self.default

    def on(self, env: Mapping[str, str] | None = None) -> bool:
        """A flag: set to anything non-empty."""
        return bool(self.get(env))


NAMES: dict[str, Var] = {}


def _var(name: str, doc: str, default: str | None = None) -> Var:
    v = Var(PREFIX + name, doc, default)
    NAMES[v.name] = v
    return v


# ---- launcher -> traced process (set by `cctrace record`, read by the in-process tracer) -------------
DIR = _var("DIR", "trace directory a traced process writes into; set = trace this process")
KINDS = _var("KINDS", "CUPTI activity kinds, comma-separated ('none': no CUPTI)")
FLUSH_S = _var("FLUSH_S", "seconds between flushes of a traced process's shards", "1.0")
QUIET = _var("QUIET", "set: a traced process prints no cctrace messages")
HOME = _var("HOME", "folder holding the cctrace package, appended to a traced process's sys.path")
BRIDGE_SPEC = _var("BRIDGE_SPEC", "--emulate-bridge's spec, resolved by the launcher, as JSON")
BRIDGE_LIB = _var("BRIDGE_LIB", "path of the compiled bridge emulator (native/bridge_emu.c)")
BRIDGE_LIB_ERROR = _var("BRIDGE_LIB_ERROR", "why the bridge emulator could not be built")
CUPTI_SHIM = _var("CUPTI_SHIM", "path of the compiled CUPTI buffer shim (native/cupti_shim.c)")
CUPTI_SHIM_ERROR = _var("CUPTI_SHIM_ERROR", "why the CUPTI buffer shim could not be built")
STACKS = _var("STACKS", "'off' (--no-stacks): no Python stack captured with each recorded call", "on")
CALLSITE_SKIP = _var("CALLSITE_SKIP", "--callsite-skip patterns (newline-separated), added to the frameworks")
CALLSITE_KEEP = _var("CALLSITE_KEEP", "--callsite-keep patterns (newline-separated): never skipped")
STEP_FUNCTIONS = _var("STEP_FUNCTIONS", "--step-function MODULE:QUALNAME targets (newline-separated)")
INTERPOSE = _var(
    "INTERPOSE",
    "the preloaded driver interposer: 'on' records, 'standby' waits for the tracer (CUPTI refused), "
    "'windowed' records inside tracing windows (the tracer switches it)"
)
INTERPOSE_LIB = _var("INTERPOSE_LIB", "path of the compiled driver interposer (native/interpose.c), also in LD_PRELOAD")
INTERPOSE_LIB_ERROR = _var("INTERPOSE_LIB_ERROR", "why the driver interposer could not be built")
INTERPOSE_LAUNCHES = _var("INTERPOSE_LAUNCHES", "set: the interposer also records kernel launches (cuLaunchKernel*)")
WINDOW = _var("WINDOW", "tracing windows (--duration/--delay/--toggle-signal) as JSON: {start_detached}")

# ---- tunables a user or a benchmark sets ------------------------------------------------------------
MEMORY_LIMIT = _var("MEMORY_LIMIT", "DuckDB's memory limit for load/report/query (e.g. 3GB); spills beyond", "3GB")
CACHE = _var("CACHE", "where compiled C helpers are cached (default ~/.cache/cctrace)")
LIBCUDA = _var("LIBCUDA", "the libcuda.so the host probes attach to, when it cannot be found")
DEBUG = _var("DEBUG", "set: an internal error of a cctrace command shows its traceback instead of one line")
VERBOSE = _var("VERBOSE", "set: a traced process says why CUPTI is off")
NO_SHIM = _var("NO_SHIM", "diagnostics: record without the C buffer shim (Python buffer callbacks)")
CUPTI_BUFFER_KB = _var("CUPTI_BUFFER_KB", "size of one CUPTI activity buffer in KiB", "4096")
CUPTI_FLUSH = _var("CUPTI_FLUSH", "how CUPTI buffers reach cctrace between full ones: period|manual|none", "period")
CUPTI_DISCARD = _var("CUPTI_DISCARD", "diagnostics: drop delivered CUPTI buffers unconverted")
RUNTIME_ACTIVITY = _var(
    "RUNTIME_ACTIVITY", "diagnostics: CUPTI's RUNTIME activity kind instead of the shim's callbacks"
)
RUNTIME_KEEP = _var("RUNTIME_KEEP", "diagnostics: regex of the runtime calls recorded (default: copies, syncs, allocs)")


@dataclass
class Handoff:
    """What `cctrace record` tells each traced process; one writer, one reader."""

    trace_dir: str
    kinds: tuple[str, ...]
    flush_s: float = 1.0
    quiet: bool = False
    home: str | None = None
    bridge: dict | None = None  # the resolved BridgeSpec (BridgeSpec.to_json())
    native: dict[str, str] = field(default_factory=dict)  # built helpers: {Var name: path or error}
    stacks: bool = True
    callsite_skip: tuple[str, ...] = ()
    callsite_keep: tuple[str, ...] = ()
    step_functions: tuple[str, ...] = ()  # --step-function MODULE:QUALNAME
    interpose: str = "off"  # on | standby | windowed | off
    interpose_launches: bool = False
    window: dict | None = None  # {"start_detached": bool}: the launcher opens and closes windows

    def to_env(self) -> dict[str, str]:
        env = {DIR.name: self.trace_dir, KINDS.name: ",".join(self.kinds) or "none", FLUSH_S.name: str(self.flush_s)}
        if self.quiet:
            env[QUIET.name] = "1"
        if self.home:
            env[HOME.name] = self.home
        if self.bridge is not None:
            env[BRIDGE_SPEC.name] = json.dumps(self.bridge)
        env.update(self.native)
        if not self.stacks:
            env[STACKS.name] = "off"
        if self.callsite_skip:
            env[CALLSITE_SKIP.name] = "\n".join(self.callsite_skip)
        if self.callsite_keep:
            env[CALLSITE_KEEP.name] = "\n".join(self.callsite_keep)
        if self.step_functions:
            env[STEP_FUNCTIONS.name] = "\n".join(self.step_functions)
        if self.interpose != "off":
            env[INTERPOSE.name] = self.interpose
        if self.interpose_launches:
            env[INTERPOSE_LAUNCHES.name] = "1"
        if self.window is not None:
            env[WINDOW.name] = json.dumps(self.window)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Handoff | None:
        """The launcher's hand-off, or None when this process is not being traced."""
        trace_dir = DIR.get(env)
        if not trace_dir:
            return None
        kinds = tuple(k for k in (KINDS.get(env) or "").split(",") if k)
        spec = BRIDGE_SPEC.get(env)
        window = WINDOW.get(env)
        native = {
            v.name: v.get(env)
            for v in (BRIDGE_LIB, BRIDGE_LIB_ERROR, CUPTI_SHIM, CUPTI_SHIM_ERROR, INTERPOSE_LIB, INTERPOSE_LIB_ERROR)
        }
        return cls(
            trace_dir=trace_dir,
            kinds=kinds,
            flush_s=float(FLUSH_S.get(env) or FLUSH_S.default),
            quiet=QUIET.on(env),
            home=HOME.get(env),
            bridge=json.loads(spec) if spec else None,
            native={k: v for k, v in native.items() if v},
            stacks=STACKS.get(env) != "off",
            callsite_skip=tuple(p for p in (CALLSITE_SKIP.get(env) or "").split("\n") if p),
            callsite_keep=tuple(p for p in (CALLSITE_KEEP.get(env) or "").split("\n") if p),
            step_functions=tuple(p for p in (STEP_FUNCTIONS.get(env) or "").split("\n") if p),
            interpose=INTERPOSE.get(env) or "off",
            interpose_launches=INTERPOSE_LAUNCHES.on(env),
            window=json.loads(window) if window else None,
        )
