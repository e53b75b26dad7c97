"""The `cctrace` command line. Each command is a thin shell over a module that does the work."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from cctrace import __version__
from cctrace.record import tracer as T

# exit codes (record returns the program's own status instead)
EXIT_USAGE = 2  # a bad option, argument or value
EXIT_BAD_TRACE = 3  # a trace (or a file given as one) that cannot be read or written
EXIT_INTERNAL = 70  # a failure inside cctrace itself: one line (handoff.DEBUG set: the traceback)


def _err(msg: str) -> None:
    from cctrace.ui.safe import clean

    click.echo(f"cctrace: {clean(msg, None)}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cctrace")
def cli() -> None:
    """Find where an LLM server loses time at the CPU<->GPU boundary, and say why.

    \b
    Typical use:
      cctrace record -o run1 -- python serve.py     # trace a server
      cctrace report run1                           # where did the time go

    \b
    Exit codes: 0 done; 2 bad usage or value; 3 a trace or file that cannot be read or
    written (one line says which and what to do); 70 a failure inside cctrace (one line;
    the DEBUG variable of `cctrace.trace.handoff` shows the traceback). `record` exits with
    the program's own status.
    """
    from cctrace.analyze import store

    store.raw_decoder = _decode_raw


def _decode_raw(trace_dir: Path, progress) -> list[str]:
    """What a killed recording left as raw CUPTI buffers or interposer records, decoded (the record
    side's decoders)."""
    from cctrace.record.sources import interposer
    from cctrace.record.sources.cupti_raw import decode_pending

    return interposer.decode_trace(trace_dir) + decode_pending(trace_dir, progress)


_probe_launches_option = click.option(
    "--probe-launches",
    is_flag=True,
    help="Host probes and the interposer also on kernel launches (cuLaunchKernel*): launch stalls without "
    "CUPTI, at one uprobe trap per launch with probes (most of a decode step's driver calls).",
)


# record and attach mean the same by these: the window opens DELAY seconds after start, lasts DURATION
_delay_option = click.option(
    "--delay",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Seconds after start before tracing begins (nothing is attached before).",
)
_duration_option = click.option(
    "--duration",
    type=click.FloatRange(0.001),
    help="Seconds to trace, from start or from the end of --delay; afterwards the program runs on "
    "untraced (default: until it ends, or Ctrl-C for attach).",
)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Trace directory to write (default: cctrace-<time>)."
)
@click.option(
    "--kinds",
    default=",".join(T.DEFAULT_KINDS),
    show_default=True,
    help="CUPTI activity kinds, comma-separated; 'none' records no CUPTI activity.",
)
@click.option("--kernels", is_flag=True, help="Also record kernels (CONCURRENT_KERNEL).")
@click.option("--nvtx", is_flag=True, help="Also record NVTX ranges (e.g. decode steps).")
@click.option("--driver", is_flag=True, help="Also record CUDA driver API calls (costly).")
@click.option(
    "--flush-interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.05, 60),
    help="Seconds between shard flushes: the most a SIGKILL can lose.",
)
@click.option(
    "--host-probes",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="eBPF probes at the CUDA driver boundary (need root and bcc; auto: when they can run).",
)
@_probe_launches_option
@click.option(
    "--interpose",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Preload cctrace's CUDA driver interposer (copies, allocs, syncs, graph replays; no CUPTI needed). "
    "auto: on where CUPTI cannot run (--kinds none, no cupti-python, Confidential Computing on), and on in "
    "any process where CUPTI is refused; --kinds none --interpose on is the CUPTI-free mode, and the cheapest: "
    "its copies carry host call times, not GPU-side ones (costs: benchmarks/README.md). With tracing windows it "
    "records inside them, in Python processes.",
)
@click.option(
    "--emulate-bridge",
    "bridge",
    metavar="SPEC",
    help="Make copies cost what a CC bridge makes them cost, and record what was injected. SPEC: a preset "
    "(b300-tdx, h20-cc, toll-only), key=value pairs (toll_us, h2d_toll_us, d2h_toll_us, bw_ratio, bw_gbps, "
    "native_gbps, serialize=on|off, async_block=on|off) after an optional preset, or a JSON file.",
)
@click.option(
    "--no-stacks",
    is_flag=True,
    help="Do not capture the calling thread's Python stack with each recorded call (no call sites).",
)
@click.option(
    "--callsite-skip",
    multiple=True,
    metavar="PATTERN",
    help="Frames to pass over when naming a call site, besides torch, transformers, jax, vllm, sglang, "
    "site-packages and the standard library: a package name, a path fragment (with '/') or a glob. Repeatable.",
)
@click.option(
    "--callsite-keep",
    multiple=True,
    metavar="PATTERN",
    help="Frames never passed over, e.g. --callsite-keep vllm to name vllm's own lines. Repeatable.",
)
@click.option(
    "--step-function",
    "step_functions",
    multiple=True,
    metavar="MODULE:QUALNAME",
    help="A Python function whose calls are the program's steps (e.g. mymodel:decode_step or "
    "vllm.v1.engine.core:EngineCore.step): each call is recorded as a marker, in every traced process, "
    "with no code change. Repeatable.",
)
@_delay_option
@_duration_option
@click.option(
    "--toggle-signal",
    metavar="SIG",
    help="Turn tracing off and on each time cctrace receives SIG (e.g. USR2: `kill -USR2 <cctrace's pid>`). "
    "cctrace keeps SIG for itself: it is not forwarded to COMMAND, and the traced processes are told "
    "through a pipe in the trace directory, so a program that uses SIG itself is left alone (send it to "
    "the program's own pid for that). Host probes do not follow toggles (--host-probes off).",
)
@click.option(
    "--start-detached",
    is_flag=True,
    help="Start with tracing off (CUPTI not attached) until the first --toggle-signal.",
)
@click.option("--no-load", is_flag=True, help="Do not build trace.duckdb after the run.")
@click.option("--force", is_flag=True, help="Write into an existing, non-empty output directory.")
@click.option("-q", "--quiet", is_flag=True, help="No messages from the tracer inside the program.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout at the end.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def record(
    output,
    kinds,
    kernels,
    nvtx,
    driver,
    flush_interval,
    host_probes,
    probe_launches,
    interpose,
    bridge,
    no_stacks,
    callsite_skip,
    callsite_keep,
    step_functions,
    delay,
    duration,
    toggle_signal,
    start_detached,
    no_load,
    force,
    quiet,
    as_json,
    command,
) -> None:
    """Run COMMAND with every Python process it starts traced.

    \b
    Example:  cctrace record -o trace1 --nvtx -- python examples/serve.py --steps 200
    The exit status is COMMAND's (127 if it cannot be found). The trace directory holds
    Arrow shards, manifest.json and, when duckdb is installed, trace.duckdb.

    \b
    Bounded tracing of a long-running server (outside its windows CUPTI is detached, not just idle):
      cctrace record --delay 60 --duration 20 -- python serve.py     # seconds 60..80 only
      cctrace record --start-detached --toggle-signal USR2 -- python serve.py
      kill -USR2 <cctrace's pid>                                     # on; again: off
    """
    from cctrace.record.launcher import RecordError, RecordOptions, run_traced

    if not command:
        _err("no command given; usage: cctrace record [OPTIONS] -- COMMAND [ARGS]...")
        sys.exit(EXIT_USAGE)
    kind_list = [k.strip() for k in kinds.split(",") if k.strip()]
    if kind_list == ["none"]:
        kind_list = []
    for flag, k in ((kernels, "kernel"), (nvtx, "nvtx"), (driver, "driver")):
        if flag and k not in kind_list:
            kind_list.append(k)
    known = set(T.DEFAULT_KINDS) | set(T.OPTIONAL_KINDS)
    bad = [k for k in kind_list if k not in known]
    if bad:
        _err(f"unknown kind(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        sys.exit(EXIT_USAGE)
    spec = None
    if bridge:
        from cctrace.record.bridge import BridgeSpecError, parse_spec

        try:
            spec = parse_spec(bridge)
        except BridgeSpecError as e:
            _err(f"--emulate-bridge: {e}")
            sys.exit(EXIT_USAGE)
    from cctrace.record.step_function import StepFunctionError, parse_target

    for target in step_functions:
        try:
            parse_target(target)
        except StepFunctionError as e:
            _err(f"--step-function: {e}")
            sys.exit(EXIT_USAGE)
    window = _window(delay, duration, toggle_signal, start_detached, spec)
    # only once every option is known good: --force clears the earlier trace
    out = _output_dir(output, "cctrace-%Y%m%d-%H%M%S", force)
    opts = RecordOptions(
        kinds=tuple(kind_list),
        flush_s=flush_interval,
        quiet=quiet,
        host_probes=host_probes,
        probe_launches=probe_launches,
        interpose=interpose,
        interpose_launches=probe_launches,
        bridge=spec,
        stacks=not no_stacks,
        callsite_skip=tuple(callsite_skip),
        callsite_keep=tuple(callsite_keep),
        step_functions=tuple(step_functions),
        window=window,
    )
    try:
        status = run_traced(list(command), out, opts)
    except RecordError as e:
        _err(str(e))
        sys.exit(EXIT_USAGE)
    summary: dict = {"trace": str(out), "exit_code": status}
    if status != 127 and not no_load:
        summary["load"] = _load_quietly(out)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif status != 127:
        try:
            _print_record_summary(out, summary)
        except Exception as e:  # noqa: BLE001 - the program's exit status must survive
            _err(f"trace written to {out}; summary failed: {type(e).__name__}: {e}")
    sys.exit(status)


def _window(delay: float, duration: float | None, toggle: str | None, start_detached: bool, bridge):
    """--delay/--duration/--toggle-signal/--start-detached as one launcher Window, or None."""
    import signal

    from cctrace.record.launcher import FORWARDED, Window

    if not (delay or duration is not None or toggle or start_detached):
        return None
    sig = None
    if toggle:
        name = toggle.upper().removeprefix("SIG")
        sig = getattr(signal.Signals, "SIG" + name, None)
        allowed = [s.name.removeprefix("SIG") for s in FORWARDED if s not in (signal.SIGTERM, signal.SIGHUP)]
        if sig is None or sig.name.removeprefix("SIG") not in allowed:
            _err(f"--toggle-signal {toggle}: choose one of {', '.join(allowed)}")
            sys.exit(EXIT_USAGE)
    if start_detached and sig is None:
        _err("--start-detached needs --toggle-signal (or use --delay): nothing would turn tracing on")
        sys.exit(EXIT_USAGE)
    if bridge is not None:
        _err("--emulate-bridge acts through CUPTI for the whole run; it cannot be combined with tracing windows")
        sys.exit(EXIT_USAGE)
    return Window(delay_s=delay, duration_s=duration, toggle_signal=sig, start_detached=start_detached)


_locks: list[int] = []  # the trace directory's lock, held until cctrace exits


def _output_dir(output: Path | None, default: str, force: bool) -> Path:
    """The trace directory to write, checked writable and locked before anything runs: a non-empty
    one only with --force, which removes exactly the files the earlier trace's manifest lists."""
    from cctrace.record.launcher import RecordError, prepare_trace_dir

    out = output or Path(time.strftime(default))
    try:
        _locks.append(prepare_trace_dir(out, force))
    except RecordError as e:
        _err(str(e))
        sys.exit(EXIT_USAGE)
    return out


def _load_quietly(out: Path) -> dict:
    try:
        import duckdb  # noqa: F401
    except ImportError:
        return {"skipped": "duckdb is not installed here; run `cctrace load` where it is"}
    from cctrace.analyze.store import LoadError, load

    try:
        return load(out).to_json()
    except LoadError as e:
        return {"error": str(e)}
    except Exception as e:  # noqa: BLE001 - the program's exit status must survive a failed load
        return {"error": f"{type(e).__name__}: {e}; run `cctrace load {out}` again"}


def _dig(d: dict, *keys: str) -> dict:
    """d[k1][k2]...: {} where a level is missing or not a mapping (a manifest is read, not trusted)."""
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d if isinstance(d, dict) else {}


def _print_record_summary(out: Path, summary: dict) -> None:
    from cctrace.trace.manifest import process_stacks, read_manifest

    m = read_manifest(out)
    procs = m.get("processes") or []
    off = [p for p in procs if not str(p.get("cupti", "")).startswith("active")]
    load = summary.get("load") or {}
    rows = load.get("rows") or {}
    parts = [
        f"{rows[t]:,} {t}" for t in ("copies", "allocs", "api_calls", "syncs", "kernels", "markers") if rows.get(t)
    ]
    _err(f"trace written to {out} ({len(procs)} process(es){'; ' + ', '.join(parts) if parts else ''})")
    reasons: dict[str, list] = {}
    for p in off:
        reasons.setdefault(str(p.get("cupti")), []).append(p.get("pid"))
    for reason, pids in reasons.items():
        who = f"pid {pids[0]}" if len(pids) == 1 else f"{len(pids)} processes"
        _err(f"  CUPTI was {reason} ({who}); those processes ran untraced by CUPTI")
    for name, s in (m.get("sources") or {}).items():
        if s.get("dropped"):
            _err(f"  {name}: {s['dropped']} records dropped")
        for e in s.get("errors", [])[:5]:
            _err(f"  {name}: {e}")
    for p in procs:
        b = (p.get("sources") or {}).get("bridge")
        if b and str(b.get("status", "")).startswith("off"):
            _err(f"  pid {p.get('pid')}: bridge emulation {b['status']}")
        state = str((process_stacks(p) or {}).get("state", ""))
        interposed = str(_dig(p, "sources", "interposer").get("state", "")).startswith("active")
        if (p in off and not interposed) or not state or state == "on" or "--no-stacks" in state:
            continue
        _err(f"  pid {p.get('pid')}: no Python stacks (call sites): {state.removeprefix('off: ')}")
    from cctrace.trace.injections import injected_summary
    from cctrace.ui.render import describe_injected

    injected = injected_summary(m.get("bridge_emulation"))
    if injected:
        _err(f"  {describe_injected(injected)}; see manifest.json bridge_emulation")
    if "skipped" in load:
        _err(f"  {load['skipped']}")
    if "error" in load:
        _err(f"  load failed: {load['error']}")
    for p in load.get("problems", []):
        _err(f"  {p}")
    for p in load.get("partial", []):
        _err(f"  PARTIAL: {p}")


@cli.command("load")
@click.argument("trace_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print what was loaded as JSON.")
def load_cmd(trace_dirs, as_json) -> None:
    """Build TRACE_DIR/trace.duckdb from the Arrow shards of each TRACE_DIR."""
    from cctrace.analyze.store import LoadError, load

    results, failed = [], False
    for d in trace_dirs:
        try:
            r = load(d, progress=None if as_json else (lambda m, d=d: _err(f"{d}: {m}")))
        except LoadError as e:
            _err(str(e))
            failed = True
            continue
        results.append(r.to_json())
        if not as_json:
            for p in r.problems:
                _err(f"{d}: skipped: {p}")
            for p in r.partial:
                _err(f"{d}: PARTIAL: {p}")
            _err(f"{d}: loaded {r.shards} shards into {r.db_path}")
    if as_json:
        click.echo(json.dumps(results, indent=2))
    sys.exit(EXIT_BAD_TRACE if failed else 0)


@cli.command()
@click.option("--pid", type=int, required=True, help="The running process to trace (and its threads and new children).")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Trace directory (default: cctrace-attach-<time>)."
)
@_delay_option
@_duration_option
@click.option("--libcuda", help="The libcuda to probe (default: the one the process mapped).")
@_probe_launches_option
@click.option("--force", is_flag=True, help="Write into an existing, non-empty output directory.")
def attach(pid, output, delay, duration, libcuda, probe_launches, force) -> None:
    """Trace a running process with host probes only (no CUPTI: works in CC production mode).

    Needs root and bcc. The trace has api_calls (with byte counts and directions from the probed
    arguments), host_waits and ioctls; `cctrace report` works on it.
    """
    from cctrace.record.attach import AttachError, attach_pid

    out = _output_dir(output, "cctrace-attach-%Y%m%d-%H%M%S", force)
    try:
        health = attach_pid(pid, out, duration, libcuda, progress=_err, launches=probe_launches, delay=delay)
    except AttachError as e:
        _err(str(e))
        sys.exit(EXIT_USAGE)
    _err(
        f"trace written to {out}: {health['events']['calls']:,} calls, {health['events']['offcpu']:,} off-CPU waits, "
        f"{health['events']['ioctls']:,} ioctls, {health['lost']} lost"
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="The checks as JSON.")
@click.option("--dump-bpf", is_flag=True, hidden=True, help="Print the generated eBPF program and exit.")
@click.option("--probe-launches", is_flag=True, hidden=True, help="With --dump-bpf: the launch probes too.")
def doctor(as_json, dump_bpf, probe_launches) -> None:
    """What works on this machine for recording: driver, CUPTI, CC mode, bcc, headers, privileges.

    Exit status 0 when `cctrace record` would use CUPTI and host probes, 1 when it would fall back.
    """
    if dump_bpf:
        from cctrace.record.sources.host_probes import dump_program

        click.echo(dump_program(launches=probe_launches), nl=False)
        return
    from cctrace.record.doctor import run_checks

    checks = run_checks()
    if as_json:
        click.echo(json.dumps(checks, indent=2))
    else:
        for c in checks:
            mark = {"ok": "[ok]  ", "warn": "[warn]", "fail": "[FAIL]"}[c["status"]]
            click.echo(f"{mark} {c['check']}: {c['detail']}")
            if c["status"] != "ok" and c.get("fix"):
                click.echo(f"       -> {c['fix']}")
    sys.exit(0 if all(c["status"] == "ok" for c in checks) else 1)


@cli.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("bridge-profile.json"),
    show_default=True,
    help="Where to write the bridge profile (JSON).",
)
@click.option("--plot", type=click.Path(path_type=Path), help="Also draw latency over size into this PNG (matplotlib).")
@click.option("--quick", is_flag=True, help="Fewer repetitions and sizes up to 16 MiB (a first look, about 10 s).")
@click.option("--replot", type=click.Path(exists=True, path_type=Path), help="Only draw --plot from this profile.")
@click.option("--json", "as_json", is_flag=True, help="Print the profile on stdout as well.")
def calibrate(output, plot, quick, replot, as_json) -> None:
    """Measure this machine's CPU<->GPU bridge: a profile for `report/diff --profile`.

    \b
    Per direction (H2D, D2H, D2D) and host memory (pageable, pinned): latency from 4 B to
    256 MiB (median and spread) and the fitted fixed toll and bandwidth; copies on 1, 2, 4
    streams and from 2 threads; how long an async copy call holds the host, alone and behind
    queued GPU work; device / pinned / caching-allocator allocation cost; the GPU, driver and
    CC state the numbers came from. Run it under `cctrace record --emulate-bridge SPEC --` to
    see the emulated bridge the same way.
    """
    from cctrace.record.calibrate import calibrate as run
    from cctrace.trace.profile import ProfileError, load_profile
    from cctrace.ui.plot import plot_profile

    try:
        if replot:
            if not plot:
                _err("--replot needs --plot PNG")
                sys.exit(EXIT_USAGE)
            plot_profile(load_profile(replot), plot)
            _err(f"plot written to {plot}")
            return
        profile = run(quick=quick, progress=lambda m: _err(f"calibrate: {m}"))
        from cctrace.trace.safefs import open_output

        with open_output(output) as f:  # a link or FIFO at -o is refused
            f.write(json.dumps(profile, indent=1) + "\n")
        _err(f"bridge profile written to {output}")
        for key, f in profile["fit"].items():
            _err(f"  {key:14} toll {f['toll_us']:9.2f} us   bandwidth {f['gbps'] or 0:7.2f} GB/s")
        b = profile["blocking"]
        _err(
            f"  async H2D call: {b['alone']['call']['p50_us']} us alone, "
            f"{b['behind_queued_work']['call']['p50_us']} us behind 2 ms of queued work"
        )
        if plot:
            plot_profile(profile, plot)
            _err(f"plot written to {plot}")
        if as_json:
            click.echo(json.dumps(profile, indent=2))
    except ProfileError as e:  # CalibrateError included
        _err(str(e))
        sys.exit(1)
    except OSError as e:  # -o or --plot cannot be written (a link, a FIFO, no permission)
        _err(str(e))
        sys.exit(EXIT_BAD_TRACE)


def _params(pairs, profile: Path | None = None) -> dict:
    """--param pairs over the profile's reference parameters (when --profile is given)."""
    from cctrace.analyze.analysis import QueryError, parse_params
    from cctrace.trace.profile import ProfileError, load_profile, params_from_profile

    try:
        explicit = parse_params(pairs)
    except QueryError as e:
        _err(str(e))
        sys.exit(EXIT_USAGE)
    if profile is None:
        return explicit
    try:
        ref = params_from_profile(load_profile(profile))
    except (ProfileError, AttributeError) as e:
        _err(str(e) if isinstance(e, ProfileError) else f"{profile} is not a bridge profile: {e}")
        sys.exit(EXIT_USAGE)
    return {**ref, **explicit}


def _analysis_errors(fn):
    """Turn the analysis layer's expected failures into one-line messages and exit codes."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        from cctrace.analyze.analysis import QueryError
        from cctrace.analyze.store import LoadError

        try:
            return fn(*a, **kw)
        except (LoadError, OSError) as e:  # OSError: UnsafePath, a missing or unwritable file
            _err(str(e) if isinstance(e, LoadError) or not e.filename else f"{e.filename}: {e.strerror}")
            sys.exit(EXIT_BAD_TRACE)
        except QueryError as e:
            _err(str(e))
            sys.exit(EXIT_USAGE)

    return wrapper


PARAM_HELP = "Query parameter k=v (repeatable); `cctrace query --list` shows them."
PROFILE_HELP = (
    "Bridge profile from `cctrace calibrate` whose normal costs the analysis compares against "
    "(default: the bundled H100 profile); --param values still win."
)
_profile_option = click.option(
    "--profile", type=click.Path(exists=True, dir_okay=False, path_type=Path), help=PROFILE_HELP
)


@cli.command()
@click.argument("trace", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report (stable keys).")
@click.option("--markdown", is_flag=True, help="Markdown, for tickets.")
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="OUT.html",
    help="Also write one self-contained page (inline SVG, nothing fetched when viewed) with the category bars, "
    "the per-step timeline of lost time, the crossing-cost plot and the top offenders: for an incident ticket.",
)
@click.option("--param", "params", multiple=True, help=PARAM_HELP)
@_profile_option
@_analysis_errors
def report(trace, as_json, markdown, html_out, params, profile) -> None:
    """Attribute the time TRACE lost at the CPU<->GPU boundary, with advice.

    TRACE is a trace directory (loaded on first use) or its trace.duckdb. JSON keys: traced ({windows,
    traced_ms, run_ms} of a recording with tracing windows, null when the whole run was traced; every
    figure counts traced time only), window_ms (its traced time), steps, step_source (nvtx, step_function, readback, graph_replay, worker_sync, driver_sync, period,
    none), step_ms, step_median_ms, step_p10_ms, step_p90_ms, categories[{category, events, lost_ms,
    per_step_us, pct_of_window, gpu_idle_overlap_ms, measured, advice, where}] (measured: false where the
    trace cannot measure it, e.g. lost stream concurrency without GPU-side copy times), explained_ms,
    unexplained_ms, gpu_idle_ms, cost_model, top, facts, host_only, gpu_times, params, ground_truth (null unless the emulator's
    per-injection rows exist: injected vs explained ms inside the window, per category), bridge_emulation
    (null unless recorded with --emulate-bridge: the whole run's injected ms per kind).
    """
    from cctrace.analyze.analysis import report as build
    from cctrace.ui.render import print_report, report_markdown

    r = build(trace, _params(params, profile), profile)
    if html_out:
        _write_html(trace, r, _params(params, profile), html_out)
    if as_json:
        click.echo(json.dumps(r, indent=2, default=str))
    elif markdown:
        click.echo(report_markdown(r))
    elif not html_out:
        from rich.console import Console

        print_report(r, Console())


def _write_html(trace: Path, r: dict, params: dict, out: Path) -> None:
    """The report page: the report plus the step_timeline and latency_by_size rows of the same trace."""
    from cctrace.analyze.analysis import Analysis
    from cctrace.trace.safefs import UnsafePath, open_output
    from cctrace.ui.html import report_page

    a = Analysis(trace, params)
    try:
        page = report_page(json.loads(json.dumps(r, default=str)), a.rows("step_timeline"), a.rows("latency_by_size"))
    finally:
        a.close()
    try:
        with open_output(out) as f:
            f.write(page)
    except (UnsafePath, OSError) as e:
        _err(str(e))
        sys.exit(EXIT_USAGE)
    _err(f"wrote {out}")


@cli.command()
@click.argument("name", required=False)
@click.argument("trace", required=False, type=click.Path(path_type=Path))
@click.option("--list", "list_", is_flag=True, help="List the canned queries and their parameters.")
@click.option("--param", "params", multiple=True, help=PARAM_HELP)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write here (required for parquet).")
@click.option(
    "--allow-external-access",
    is_flag=True,
    help="Let your FILE.sql read and write files and load extensions (off: it sees the trace only).",
)
@_profile_option
@_analysis_errors
def query(name, trace, list_, params, fmt, output, allow_external_access, profile) -> None:
    """Run canned query NAME (or your own FILE.sql) on TRACE.

    Your SQL sees the tables (copies, api_calls, ...) and the analysis views (steps, win, xfers,
    cost_model, xfer_costs, async_calls, sync_calls, gpu_idle, bridge_waits, ...), and nothing
    outside the trace unless --allow-external-access is given. Names are printed with control
    characters escaped (table, csv on a terminal); JSON escapes them itself.
    """
    from cctrace.analyze.analysis import PARAMS, Analysis, default_params, list_queries

    if list_:
        for q in list_queries():
            click.echo(f"{q.name:20s} {q.answers}")
            if q.params:
                click.echo(f"{'':20s}   params: {', '.join(q.params)}")
        defaults = default_params()
        click.echo("\nparameters (--param k=v):")
        for p in PARAMS.values():
            default = "unset" if defaults[p.name] is None else defaults[p.name]
            click.echo(f"  {p.name:16s} {p.doc} (default {default})")
        return
    if not name or not trace:
        _err("usage: cctrace query NAME|FILE.sql TRACE  (or --list)")
        sys.exit(EXIT_USAGE)
    a = Analysis(trace, _params(params, profile), external_access=allow_external_access and name.endswith(".sql"))
    try:
        t = a.run(name)
    finally:
        a.close()
    if t.num_rows == 0 and fmt == "table":
        click.echo("no rows")
        return
    if t.num_rows == 0:
        _err("no rows")
    if fmt == "parquet":
        if not output:
            _err("--format parquet needs -o FILE")
            sys.exit(EXIT_USAGE)
        import pyarrow.parquet as pq

        from cctrace.trace.safefs import open_output

        with open_output(output, binary=True) as f:
            pq.write_table(t, f)
        return
    if fmt == "table":
        from rich.console import Console

        from cctrace.ui.render import print_arrow

        print_arrow(t, Console(), title=name)
        return
    if fmt == "csv":
        import io

        import pyarrow.csv as pcsv

        buf = io.BytesIO()
        pcsv.write_csv(t, buf)
        text = buf.getvalue().decode()
    else:
        text = json.dumps(t.to_pylist(), indent=2, default=str)
    if output:
        from cctrace.trace.safefs import open_output

        with open_output(output) as f:
            f.write(text)
    else:
        from cctrace.ui.safe import clean_lines

        click.echo(clean_lines(text), nl=False)


@cli.command("diff")
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("trace", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.option("--param", "params", multiple=True, help=PARAM_HELP)
@_profile_option
@_analysis_errors
def diff_cmd(base, trace, as_json, params, profile) -> None:
    """Attribute the per-step time TRACE lost relative to BASE to the boundary categories.

    The gap is the mean step's (window / steps), which the categories add up to; the median step's gap
    is shown beside it (JSON: gap_median_ms_per_step): far apart, some steps were slowed by something
    other than the boundary. JSON keys: base_step_ms, trace_step_ms, gap_ms_per_step, gap_pct,
    base_step_median_ms, trace_step_median_ms, gap_median_ms_per_step, categories[{category,
    base_ms_per_step, trace_ms_per_step, delta_ms_per_step, share_of_gap, injected_ms_per_step}],
    explained_ms_per_step, slow_steps ({base, trace}: steps at least slow_step_factor x the median step with
    no crossings to show for it), slow_steps_ms_per_step (their excess, per step, beside the categories),
    unexplained_ms_per_step (the gap less both), explained_share, noise_ms_per_step,
    base_step_source, trace_step_source, same_program, warnings (why the gap cannot be judged),
    bridge_injected_ms_per_step (traces recorded with --emulate-bridge: what the emulator injected per
    step more in TRACE than in BASE, else null) and bridge_injected_scope (window | whole_run).
    """
    from cctrace.analyze.analysis import diff

    d = diff(base, trace, _params(params, profile))
    if as_json:
        click.echo(json.dumps(d, indent=2))
    else:
        from rich.console import Console

        from cctrace.ui.render import print_diff

        print_diff(d, Console())


@cli.command()
@click.argument("trace", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["perfetto", "perfetto-proto", "parquet"]),
    required=True,
    help="perfetto: trace-event JSON; perfetto-proto: Perfetto's native protobuf (smaller, faster to open); "
    "parquet: one file per table.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="perfetto: a .json file; perfetto-proto: a .pftrace file; parquet: a directory (one file per table).",
)
@click.option(
    "--window", metavar="A:B", help="Only events starting A to B ms after the analysis window's start (perfetto)."
)
@click.option(
    "--steps", metavar="A:B", help="Only steps A to B, numbered from 1 as `report` numbers them, inclusive (perfetto)."
)
@_analysis_errors
def export(trace, fmt, output, window, steps) -> None:
    """Hand TRACE to the tools people already use: Perfetto (ui.perfetto.dev, chrome://tracing) or Parquet.

    \b
    --steps and --window use the report's steps and analysis window (first step's start to last
    step's end); without them the whole trace is exported, warm-up included.
    Exit status: 0 written; 2 a bad option, a step range or window outside the trace, or --steps on
    a trace without steps (one line on stderr says which); 3 TRACE is not a trace.
    """
    from cctrace.analyze.export import ExportError, export_parquet, export_perfetto
    from cctrace.analyze.span import SpanError, resolve

    if fmt == "parquet":
        if window or steps:
            _err("--window and --steps select Perfetto events; parquet exports whole tables")
            sys.exit(EXIT_USAGE)
        try:
            rows = export_parquet(trace, output)
        except ExportError as e:
            _err(str(e))
            sys.exit(EXIT_USAGE)
        _err(f"wrote {len(rows)} tables to {output}")
        return
    bounds = None
    if window or steps:
        from cctrace.analyze.analysis import Analysis

        a = Analysis(trace)
        try:
            bounds = resolve(a.con, window, steps)
        except SpanError as e:
            _err(str(e))
            sys.exit(EXIT_USAGE)
        finally:
            a.close()
    try:
        counts = export_perfetto(trace, output, bounds, fmt, progress=_err)
    except ExportError as e:
        _err(str(e))
        sys.exit(EXIT_USAGE)
    _err(f"wrote {output}: " + ", ".join(f"{v:,} {k}" for k, v in counts.items()) + " (open in ui.perfetto.dev)")


@cli.command()
@click.argument("trace", type=click.Path(path_type=Path))
@click.argument("base", required=False, type=click.Path(path_type=Path))
@_analysis_errors
def explore(trace, base) -> None:
    """The terminal UI over TRACE (with BASE: diff mode). Press ? inside for the keys."""
    from cctrace.ui.explore import run

    run(trace, base)


def main() -> None:
    """The command line, with any failure inside cctrace as one line and exit code 70."""
    from cctrace.trace import handoff as H

    try:
        cli(prog_name="cctrace")
    except Exception as e:
        if H.DEBUG.on():
            raise
        _err(f"internal error: {type(e).__name__}: {e} (set {H.DEBUG.name}=1 for the traceback; please report it)")
        sys.exit(EXIT_INTERNAL)
