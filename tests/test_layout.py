"""The folders show the sides: what runs on the analysis host (analyze/, ui/) and what both sides share
(trace/) never import what runs on the traced host (record/)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "cctrace"
FORBIDDEN = {"analyze": ("cctrace.record",), "ui": ("cctrace.record",), "trace": ("cctrace.record", "cctrace.analyze", "cctrace.ui")}


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


@pytest.mark.parametrize("side", sorted(FORBIDDEN))
def test_side_imports_nothing_from_the_other(side: str) -> None:
    files = sorted((PKG / side).rglob("*.py"))
    assert files
    bad = [
        f"{f.relative_to(PKG)} imports {m}"
        for f in files
        for m in sorted(_imports(f))
        if any(m == p or m.startswith(p + ".") for p in FORBIDDEN[side])
    ]
    assert bad == []


def test_boundary_check_sees_a_violation(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from cctrace.record.bridge import parse_spec\n")
    assert "cctrace.record.bridge" in _imports(f)
