"""The wheel is what users install: build it, install it into a fresh virtual environment outside the
checkout, and run every analysis command (and the explorer, through textual's pilot) on a copied
sample from there. The venv reuses this interpreter's installed dependencies through a .pth file (no
network), but cctrace itself must come from the wheel."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT

BUILD_INPUTS = ("pyproject.toml", "README.md", "cctrace", "queries", "probes")
PILOT = """
import asyncio, sys
from cctrace.ui.explore import Explorer

async def main():
    app = Explorer(sys.argv[1])
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        await pilot.pause()
        print("pilot ok", app.query_one("TabbedContent").active)

asyncio.run(main())
"""


def _build_wheel(out: Path) -> Path:
    """`pip wheel --no-deps` from a copy of what the build reads (it writes build/ and egg-info beside
    the sources); without build isolation when setuptools is here, so it works offline."""
    src = out / "src"
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so")
    for name in BUILD_INPUTS:
        (
            shutil.copytree(ROOT / name, src / name, ignore=skip)
            if (ROOT / name).is_dir()
            else shutil.copy(ROOT / name, src)
        )
    isolation = ["--no-build-isolation"] if _setuptools_builds_wheels() else []
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(out), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=out)
    if r.returncode and not isolation and "No matching distribution found for setuptools" in r.stderr:
        pytest.skip("building the wheel needs setuptools>=70.1 here or a package index to fetch it from")
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = out.glob("cctrace-*.whl")
    return wheel


def _setuptools_builds_wheels() -> bool:
    """setuptools new enough for pyproject metadata (68) and with its own bdist_wheel (70.1)."""
    try:
        version = importlib.metadata.version("setuptools")  # not imported: it patches distutils
    except importlib.metadata.PackageNotFoundError:
        return False
    return tuple(int(x) for x in version.split(".")[:2]) >= (70, 1)


def _fresh_venv(where: Path, wheel: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    py = where / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # this interpreter's installed packages after the venv's own: the dependencies, not an editable cctrace
    # (a plain path entry runs none of the .pth hooks an editable install relies on)
    deps = [p for p in [*site.getsitepackages(), site.getusersitepackages()] if os.path.isdir(p)]
    deps += [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and p not in deps]
    Path(purelib, "zz_deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    return where


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if importlib.util.find_spec("pip") is None:
        pytest.skip("needs pip to build the wheel")
    base = tmp_path_factory.mktemp("wheel")
    env_dir = _fresh_venv(base / "venv", _build_wheel(base))
    work = base / "work"
    work.mkdir()
    for name in ("serve-baseline", "serve-bridge"):
        shutil.copytree(ROOT / "sample_traces" / name, work / name, ignore=shutil.ignore_patterns("trace.duckdb"))
    return env_dir, work


def _run(installed, *args: str) -> subprocess.CompletedProcess:
    work = installed[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=120)


def _cctrace(installed, *args: str) -> subprocess.CompletedProcess:
    r = _run(installed, str(installed[0] / "bin" / "cctrace"), *args)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_the_venv_runs_the_wheels_cctrace(installed):
    env_dir, _ = installed
    r = _run(installed, str(env_dir / "bin" / "python"), "-c", "import cctrace; print(cctrace.__file__)")
    assert Path(r.stdout.strip()).is_relative_to(env_dir), r.stdout + r.stderr


def test_every_analysis_command_answers_from_the_wheel(installed):
    _, work = installed
    rep = json.loads(_cctrace(installed, "report", "serve-bridge", "--json").stdout)
    assert rep["categories"]
    names = _cctrace(installed, "query", "--list").stdout
    assert "small_crossings" in names
    assert _cctrace(installed, "query", "small_crossings", "serve-bridge").stdout.strip()
    diff = json.loads(_cctrace(installed, "diff", "serve-baseline", "serve-bridge", "--json").stdout)
    assert diff["gap_ms_per_step"] > 0
    _cctrace(installed, "export", "serve-bridge", "--format", "perfetto", "-o", str(work / "t.json"))
    assert json.loads((work / "t.json").read_text())
    _cctrace(installed, "export", "serve-bridge", "--format", "parquet", "-o", str(work / "pq"))
    assert sorted(p.suffix for p in (work / "pq").iterdir()) and all(
        p.suffix == ".parquet" for p in (work / "pq").iterdir()
    )


def test_the_explorer_runs_from_the_wheel(installed):
    env_dir, _ = installed
    r = _run(installed, str(env_dir / "bin" / "python"), "-c", PILOT, "serve-bridge")
    assert r.returncode == 0 and r.stdout.strip() == "pilot ok tables", r.stderr[-2000:]
