"""Every CCTRACE_* name is written in cctrace/trace/handoff.py only, and the hand-off round-trips."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, project_env

from cctrace.trace import handoff as H

PKG = ROOT / "cctrace"
OWNER = PKG / "trace" / "handoff.py"
# the injected sitecustomize runs before cctrace is importable; it may spell the two names it needs
BOOT = PKG / "record" / "inject" / "sitecustomize.py"


def _literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of each string constant in `path` that holds the prefix (docstrings included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and H.PREFIX in node.value:
            out.append((node.lineno, node.value))
    return out


def _outside(files: list[Path]) -> list[str]:
    return [f"{f.name}:{n}: {s!r}" for f in files for n, s in _literals(f)]


def test_names_live_in_the_handoff_module_only() -> None:
    files = [f for f in sorted(PKG.rglob("*.py")) if f not in (OWNER, BOOT)]
    assert len(files) > 20
    assert _outside(files) == []


def test_the_check_sees_a_name_elsewhere(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text('import os\nX = os.environ.get("CCTRACE_SOMETHING")\n')
    assert _outside([f]) == ["x.py:2: 'CCTRACE_SOMETHING'"]


def test_sitecustomize_spells_only_declared_names() -> None:
    names = {s for _, s in _literals(BOOT)}
    assert names == {H.HOME.name, H.QUIET.name}
    assert names <= set(H.NAMES)


def test_every_name_has_a_doc_and_the_prefix() -> None:
    assert len(H.NAMES) >= 20
    for name, var in H.NAMES.items():
        assert name.startswith(H.PREFIX) and var.name == name
        assert var.doc and "\n" not in var.doc


def test_handoff_round_trips() -> None:
    sent = H.Handoff(
        trace_dir="/t",
        kinds=("memcpy", "runtime"),
        flush_s=0.5,
        quiet=True,
        home="/h",
        bridge={"name": "b300-tdx", "h2d_toll_us": 300.0, "extra_ns_per_byte": [1.0, 2.0]},
        native={H.CUPTI_SHIM.name: "/c/shim.so", H.BRIDGE_LIB_ERROR.name: "no cc"},
    )
    env = sent.to_env()
    assert set(env) <= set(H.NAMES)
    assert H.Handoff.from_env(env) == sent
    assert H.Handoff.from_env({}) is None


def test_no_kinds_reads_back_as_none() -> None:
    got = H.Handoff.from_env(H.Handoff(trace_dir="/t", kinds=()).to_env())
    assert got is not None and got.kinds == ("none",)


def test_handoff_imports_nothing_heavy() -> None:
    """It is imported at start-up of every traced Python process."""
    code = "import sys; import cctrace.trace.handoff; print(sorted(m for m in sys.modules if m.startswith(('cctrace', 'numpy', 'pyarrow'))))"
    out = subprocess.run([sys.executable, "-c", code], env=project_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['cctrace', 'cctrace.trace', 'cctrace.trace.handoff']"
