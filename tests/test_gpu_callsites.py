"""Call sites on a real GPU: each crossing of examples/serve.py names its exact line, and the per-token
readbacks of a transformers `generate()` run come from its generation loop. Lines are read from the
sources, never written here. Shards are read with pyarrow only (the GPU machine has no duckdb)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, cctrace

pytestmark = pytest.mark.gpu
SERVE_PY = ROOT / "examples" / "serve.py"
HF = ROOT / "tests" / "workloads" / "hf_generate.py"
SERVE_ARGS = ["--hidden", "512", "--layers", "2", "--vocab", "4096", "--batch", "8", "--max-blocks", "16",
              "--kv-blocks", "256", "--swap-blocks", "8", "--steps", "30", "--swap-every", "10"]  # fmt: skip
COPY_OR_SYNC = re.compile(r"^cuda(Memcpy|Memset|StreamSynchronize|DeviceSynchronize|EventSynchronize)")


def _rows(trace: Path, table: str) -> list[dict]:
    from cctrace.trace.shards import read_shard

    return [r for f in sorted(trace.glob(f"{table}.*.arrows")) for r in read_shard(f).data.to_pylist()]


def serve_crossing_lines() -> dict[str, set[int]]:
    """serve.py's crossing points, from its source: the statement before each `self._count("h2d"|"d2h",
    ...)` is a crossing in that direction. The remedies' branches (packed_h2d, async_readback) are
    left out: the run here uses none of them."""
    lines = SERVE_PY.read_text().splitlines()
    remedy = set()
    for i, text in enumerate(lines):
        m = re.match(r"(\s*)if a\.(packed_h2d|async_readback):", text)
        if m:
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > len(m.group(1))):
                remedy.add(j)
                j += 1
    out: dict[str, set[int]] = {"HtoD": set(), "DtoH": set()}
    for i, text in enumerate(lines):
        m = re.search(r'self\._count\("(h2d|d2h)"', text)
        if m and i not in remedy:
            j = i - 1
            while not lines[j].strip() or lines[j].strip().startswith("#"):
                j -= 1
            out["HtoD" if m.group(1) == "h2d" else "DtoH"].add(j + 1)
    return out


def _note(name: str, value) -> None:
    """A figure for the lead: printed (pytest -s) and written under $OUT when set."""
    print(name, json.dumps(value))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], f"callsites-{name}.json").write_text(json.dumps(value, indent=1))


def _sites(trace: Path) -> dict[tuple[int, int], tuple[str, int, str]]:
    return {
        (r["pid"], r["stack_id"]): (r["file"], r["line"], r["function"])
        for r in _rows(trace, "stacks")
        if r["is_callsite"]
    }


@pytest.fixture(scope="module")
def serve_trace(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_sites") / "serve"
    r = cctrace("record", "-q", "--no-load", "--nvtx", "-o", str(out), "--", sys.executable, str(SERVE_PY), *SERVE_ARGS,
                timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_manifest_says_stacks_were_captured(serve_trace):
    m = json.loads((serve_trace / "manifest.json").read_text())
    assert m["stacks"]["captured"] is True, m["stacks"]
    assert m["stacks"]["calls_with_stack"] > 0


def test_every_crossing_of_serve_names_its_line(serve_trace):
    steps = [r for r in _rows(serve_trace, "markers") if r["name"].startswith("step ")]
    lo, hi = min(r["start_ns"] for r in steps), max(r["end_ns"] for r in steps)
    calls = {(r["pid"], r["correlation_id"]): r for r in _rows(serve_trace, "api_calls") if r["stack_id"] is not None}
    sites = _sites(serve_trace)
    got: dict[str, dict[int, int]] = {"HtoD": {}, "DtoH": {}}
    for c in _rows(serve_trace, "copies"):
        if c["op"] != "memcpy" or c["copy_kind"] not in got or not lo <= c["start_ns"] <= hi:
            continue
        call = calls.get((c["pid"], c["correlation_id"]))
        assert call is not None, c
        file, line, _ = sites[(call["pid"], call["stack_id"])]
        assert Path(file).resolve() == SERVE_PY.resolve(), (file, line)
        got[c["copy_kind"]][line] = got[c["copy_kind"]].get(line, 0) + 1
    want = serve_crossing_lines()
    assert {k: set(v) for k, v in got.items()} == want
    _note("serve-crossings-per-line", got)


def test_copies_and_syncs_carry_a_call_site(serve_trace):
    rows = [r for r in _rows(serve_trace, "api_calls") if r["source"] == "cupti" and COPY_OR_SYNC.match(r["name"])]
    sites = _sites(serve_trace)
    with_site = sum(1 for r in rows if (r["pid"], r["stack_id"]) in sites)
    _note("coverage", {"copy_sync_calls": len(rows), "with_call_site": with_site})
    assert rows and with_site >= 0.99 * len(rows)


def test_no_stacks_records_none(tmp_path):
    out = tmp_path / "nostacks"
    r = cctrace("record", "-q", "--no-load", "--no-stacks", "-o", str(out), "--", sys.executable, str(SERVE_PY),
                *SERVE_ARGS[:-4], "--steps", "5", timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert not _rows(out, "stacks")
    assert all(r["stack_id"] is None for r in _rows(out, "api_calls"))
    m = json.loads((out / "manifest.json").read_text())
    assert m["stacks"]["captured"] is False and "off (--no-stacks)" in m["stacks"]["processes"].values()


def test_generate_readbacks_come_from_the_generation_loop(tmp_path):
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed")
    out = tmp_path / "hf"
    r = cctrace("record", "-q", "--no-load", "-o", str(out), "--", sys.executable, str(HF), "--json", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    frames: dict[tuple[int, int], list[tuple[str, int, str]]] = {}
    for s in sorted(_rows(out, "stacks"), key=lambda s: s["depth"]):
        frames.setdefault((s["pid"], s["stack_id"]), []).append((s["file"], s["line"], s["function"]))
    sites = _sites(out)
    calls = {(r["pid"], r["correlation_id"]): r for r in _rows(out, "api_calls") if r["stack_id"] is not None}
    small = [c for c in _rows(out, "copies") if c["op"] == "memcpy" and c["copy_kind"] == "DtoH" and c["bytes"] <= 8]
    assert small
    keys = [(c["pid"], (calls.get((c["pid"], c["correlation_id"])) or {}).get("stack_id")) for c in small]
    # the per-token readback's stack runs through the generation loop ...
    in_loop = [k for k in keys if any(f.endswith("transformers/generation/utils.py") and fn.endswith("_sample")
                                      for f, _, fn in frames.get(k, []))]  # fmt: skip
    # (7 requests of 64 new tokens by default: one readback per token, bar the last of each request)
    assert len(in_loop) >= 7 * 63, {k: frames.get(k, [])[:4] for k in set(keys) - set(in_loop)}
    # ... and its call site, transformers being a framework, is the script's generate() line
    (gen_line,) = [i for i, t in enumerate(HF.read_text().splitlines(), 1) if "model.generate(" in t]
    assert {(Path(sites[k][0]).resolve(), sites[k][1]) for k in in_loop} == {(HF.resolve(), gen_line)}


DRIVER_COPY_OR_SYNC = re.compile(r"^cu(Memcpy|Memset|StreamSynchronize|CtxSynchronize|EventSynchronize)")


def test_interposer_only_crossings_of_serve_name_their_lines(tmp_path):
    """The CUPTI-free path (`--kinds none --interpose on`): serve.py's copies name the same lines from the
    interposer's stacks, and its copies and syncs carry a call site."""
    out = tmp_path / "interposer"
    r = cctrace("record", "-q", "--no-load", "--kinds", "none", "--interpose", "on", "-o", str(out), "--",
                sys.executable, str(SERVE_PY), *SERVE_ARGS, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["stacks"]["captured"] is True, m["stacks"]
    calls = [c for c in _rows(out, "api_calls") if c["source"] == "interposer"]
    by_corr = {(c["pid"], c["correlation_id"]): c for c in calls}
    sites = _sites(out)
    got: dict[str, dict[int, int]] = {"HtoD": {}, "DtoH": {}}
    elsewhere: dict[str, int] = {}
    for c in _rows(out, "copies"):
        if c["source"] != "interposer" or c["op"] != "memcpy" or c["copy_kind"] not in got:
            continue
        call = by_corr[(c["pid"], c["correlation_id"])]
        file, line, _ = sites.get((call["pid"], call["stack_id"]), ("(no stack)", 0, ""))
        if Path(file).resolve() != SERVE_PY.resolve():
            elsewhere[f"{file}:{line}"] = elsewhere.get(f"{file}:{line}", 0) + 1
            continue
        got[c["copy_kind"]][line] = got[c["copy_kind"]].get(line, 0) + 1
    _note("interposer-serve-crossings-per-line", {"serve.py": got, "elsewhere": elsewhere})
    assert {k: set(v) for k, v in got.items()} == serve_crossing_lines()
    rows = [c for c in calls if DRIVER_COPY_OR_SYNC.match(c["name"])]
    with_site = sum(1 for c in rows if (c["pid"], c["stack_id"]) in sites)
    _note("interposer-coverage", {"copy_sync_calls": len(rows), "with_call_site": with_site})
    assert rows and with_site >= 0.99 * len(rows)
