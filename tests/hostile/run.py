"""Run every command over the hostile corpus and judge each run.

Each (case, command) run is judged: a traceback (an exception other than a clean exit), insecure (an
ESC or C1 control byte in the output, a secret file's content printed, anything outside the case
changed), silently wrong (data missing and no PARTIAL, or an error taken for success) or otherwise
unexpected (a wrong exit code, more than one line for an error); else handled cleanly.
`python -m tests.hostile.run` prints the figures (and writes $OUT/hostile.json when OUT is set).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from click.testing import CliRunner

from cctrace.cli import EXIT_BAD_TRACE, EXIT_USAGE, cli
from tests.hostile.corpus import SECRET, Case, make

CONTROL_BYTES = ("\x1b", "\x9b", "\x07")


@dataclass
class Tally:
    runs: int = 0
    clean: int = 0
    tracebacks: list[str] = field(default_factory=list)
    insecure: list[str] = field(default_factory=list)
    silently_wrong: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def figures(self) -> dict:
        return {
            "cases_tried": self.runs,
            "handled_cleanly": self.clean,
            "tracebacks": len(self.tracebacks),
            "silently_wrong": len(self.silently_wrong),
            "insecure": len(self.insecure),
            "unexpected": len(self.unexpected),
        }


def _snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, str]:
    """Every path under root (not under `skip`) with a digest of its content: what must not change."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if d / n not in skip]
        for n in filenames:
            p = d / n
            try:
                out[str(p)] = "link" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
            except OSError:
                out[str(p)] = "unreadable"
    return out


def _commands(case: Case, base: Path, out: Path) -> list[tuple[str, list[str]]]:
    p = str(case.path)
    return [
        ("load", ["load", p]),
        ("report", ["report", p]),
        ("report-json", ["report", "--json", p]),
        ("report-markdown", ["report", "--markdown", p]),
        ("diff", ["diff", str(base), p]),
        ("export-perfetto", ["export", p, "--format", "perfetto", "-o", str(out / "t.json")]),
        ("export-parquet", ["export", p, "--format", "parquet", "-o", str(out / "pq")]),
        ("query-table", ["query", "step_timeline", p]),
        ("query-csv", ["query", "callsites", p, "--format", "csv"]),
    ]


def judge(t: Tally, label: str, expect: str, code: int, stdout: str, stderr: str, exc: BaseException | None) -> None:
    t.runs += 1
    text = stdout + stderr
    problems = []
    if exc is not None and not isinstance(exc, SystemExit):
        t.tracebacks.append(f"{label}: {type(exc).__name__}: {exc}")
        return
    if "Traceback" in text:
        t.tracebacks.append(f"{label}: traceback printed")
        return
    bad = [repr(c) for c in CONTROL_BYTES if c in text]
    if bad or SECRET in text:
        t.insecure.append(f"{label}: {'control bytes ' + ', '.join(bad) if bad else 'secret content printed'}")
        return
    partial_shown = "PARTIAL" in text or '"partial": [\n' in stdout
    if expect == "error":
        if code == 0:
            t.silently_wrong.append(f"{label}: exit 0 on a bad input")
            return
        lines = stderr.strip().splitlines()
        if code != EXIT_BAD_TRACE or len(lines) != 1 or not lines[0].startswith("cctrace: "):
            problems.append(f"exit {code}, stderr {stderr.strip()[:200]!r}")
    elif code != 0:
        problems.append(f"exit {code}: {stderr.strip()[:300]!r}")
    elif expect == "partial" and not partial_shown and not label.endswith(("export-perfetto", "export-parquet", "query-table", "query-csv")):
        t.silently_wrong.append(f"{label}: data missing and no PARTIAL")
        return
    elif expect == "ok" and partial_shown:
        problems.append("PARTIAL on a complete trace")
    if problems:
        t.unexpected.append(f"{label}: {'; '.join(problems)}")
    else:
        t.clean += 1


def run_cli(t: Tally, case: Case, base: Path, out: Path) -> None:
    runner = CliRunner()
    for name, args in _commands(case, base, out):
        r = runner.invoke(cli, args, catch_exceptions=True)
        judge(t, f"{case.name} {name}", case.expect, r.exit_code, r.stdout, r.stderr, r.exception)


def run_explore(t: Tally, case: Case) -> None:
    """The explorer through textual's pilot: the overview, the timeline, a table."""
    from textual.widgets import Static

    from cctrace.analyze.analysis import QueryError
    from cctrace.analyze.store import LoadError
    from cctrace.ui.explore import Explorer

    label = f"{case.name} explore"
    try:
        app = Explorer(case.path)
    except (LoadError, OSError, QueryError) as e:  # the CLI prints these as one line, exit 3
        judge(t, label, case.expect, EXIT_BAD_TRACE, "", f"cctrace: {e}\n", None)
        return
    except Exception as e:  # noqa: BLE001 - counted as a traceback
        judge(t, label, case.expect, 1, "", "", e)
        return

    async def drive() -> str:
        async with app.run_test(size=(120, 40)) as pilot:
            text = str(app.query_one("#overview-text", Static).render())
            await pilot.press("2")
            await pilot.press("4")
            await pilot.pause()
            return text

    try:
        overview = asyncio.run(drive())
    except Exception as e:  # noqa: BLE001
        judge(t, label, case.expect, 1, "", "", e)
        return
    judge(t, label, case.expect, 0, overview, "", None)


def bad_arguments(t: Tally, base: Path, out: Path, outside: Path) -> None:
    """Bad values on a good trace: one line, exit 2 (usage) -- and crafted output paths stay paths."""
    runner = CliRunner()
    crafted = str(out / "x') TO '/tmp/cctrace-pwned.csv' (FORMAT csv); --")
    for label, args, want in (
        ("window-inf", ["export", str(base), "--format", "perfetto", "-o", str(out / "w.json"), "--window", "0:inf"], EXIT_USAGE),
        ("window-text", ["export", str(base), "--format", "perfetto", "-o", str(out / "w.json"), "--window", "a:b"], EXIT_USAGE),
        ("unknown-query", ["query", "no_such_query", str(base)], EXIT_USAGE),
        ("bad-param", ["query", "step_timeline", str(base), "--param", "small_bytes=lots"], EXIT_USAGE),
        ("output-is-a-link", ["export", str(base), "--format", "perfetto", "-o", str(out / "link.json")], EXIT_USAGE),
        ("crafted-parquet-path", ["export", str(base), "--format", "parquet", "-o", crafted], 0),
        ("quote-in-query-output", ["query", "step_timeline", str(base), "--format", "parquet", "-o", str(out / "a'b.parquet")], 0),
    ):  # fmt: skip
        if label == "output-is-a-link":
            (out / "link.json").symlink_to(outside / "victim.txt")
        r = runner.invoke(cli, args, catch_exceptions=True)
        expect = "ok" if want == 0 else "usage"
        t.runs += 1
        text = r.stdout + r.stderr
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            t.tracebacks.append(f"args {label}: {type(r.exception).__name__}: {r.exception}")
        elif Path("/tmp/cctrace-pwned.csv").exists():
            t.insecure.append(f"args {label}: a crafted path ran SQL")
        elif r.exit_code != want or (expect == "usage" and len(r.stderr.strip().splitlines()) != 1):
            t.unexpected.append(f"args {label}: exit {r.exit_code}, {text.strip()[:200]!r}")
        else:
            t.clean += 1


def run_all(root: Path, explore: bool = True) -> Tally:
    """Generate the corpus under `root` and run everything over it."""
    base, outside, cases = make(root)
    t = Tally()
    watched = _snapshot(root, (root / "cases", root / "out"))
    for case in cases:
        out = root / "out" / case.name
        out.mkdir(parents=True)
        run_cli(t, case, base, out)
        if explore:
            run_explore(t, case)
    out = root / "out" / "_args"
    out.mkdir(parents=True)
    bad_arguments(t, base, out, outside)
    after = _snapshot(root, (root / "cases", root / "out"))
    changed = sorted(k for k in set(watched) | set(after) if watched.get(k) != after.get(k))
    changed = [k for k in changed if not k.startswith(str(base))]  # diff's BASE is loaded: its own directory
    if changed:
        t.insecure.append(f"written outside the trace directories: {changed[:5]}")
    return t


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        t = run_all(Path(d))
    figures = t.figures()
    print(json.dumps(figures))
    for kind in ("tracebacks", "insecure", "silently_wrong", "unexpected"):
        for line in getattr(t, kind):
            print(f"{kind}: {line}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "hostile.json").write_text(json.dumps({**figures, "detail": t.__dict__}, indent=1))
    sys.exit(0 if figures["handled_cleanly"] == figures["cases_tried"] else 1)


if __name__ == "__main__":
    main()
