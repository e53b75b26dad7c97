"""The C structs and constants that Python decodes are compiled with the system `cc` and checked against
the numpy dtypes and Python constants that read them: sizeof, each member's offset, size and signedness,
the block magic numbers and the event types."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cctrace.record import bridge
from cctrace.record.native import BRIDGE_SOURCE, SOURCE
from cctrace.record.sources import cupti_raw, host_probes
from cctrace.record.sources.cupti_source import API_DTYPE
from cctrace.resources import data_dir

PROBES = data_dir("probes") / "cuda_boundary.c"
BPF_TYPES = "typedef uint32_t u32; typedef uint64_t u64; typedef int64_t s64; typedef int32_t s32;"

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")


def _uncommented(text: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)


def _struct(path: Path, name: str) -> tuple[str, list[str]]:
    """The declaration of `struct name` in `path`, and its member names in order."""
    m = re.search(rf"struct {name} \{{(.*?)\}};", _uncommented(path.read_text()), re.S)
    assert m, f"no struct {name} in {path}"
    members = [d.strip().split()[-1] for decl in m.group(1).split(";") if decl.strip() for d in decl.split(",")]
    return f"struct {name} {{{m.group(1)}}};", members


def _c_layout(tmp: Path, decl: str, name: str, members: list[str], prelude: str = "") -> dict:
    """Compile and run a program that prints sizeof, then offset, size and signedness of each member."""
    lines = [f'printf("sizeof %zu\\n", sizeof(struct {name}));']
    for f in members:
        m = f"((struct {name} *)0)->{f}"
        lines.append(
            f'printf("{f} %zu %zu %d\\n", offsetof(struct {name}, {f}), sizeof({m}), (__typeof__({m}))-1 < 0);'
        )
    src = tmp / f"{name}.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <stdint.h>\n"
        f"{prelude}\n{decl}\nint main(void) {{\n" + "\n".join(lines) + "\nreturn 0; }\n"
    )
    exe = tmp / name
    subprocess.run(["cc", "-o", str(exe), str(src)], check=True)
    out: dict = {}
    for line in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines():
        key, *vals = line.split()
        out[key] = tuple(int(v) for v in vals)
    return out


def _mismatches(c: dict, dtype: np.dtype) -> list[str]:
    """What differs between the compiled layout and the dtype; empty when they agree."""
    bad = []
    if c["sizeof"] != (dtype.itemsize,):
        bad.append(f"sizeof {c['sizeof'][0]} != itemsize {dtype.itemsize}")
    names = [k for k in c if k != "sizeof"]
    if names != list(dtype.names):
        bad.append(f"members {names} != dtype fields {list(dtype.names)}")
    for f in names:
        if f not in dtype.fields:
            continue
        ft, off = dtype.fields[f][:2]
        want = (off, ft.itemsize, int(ft.kind == "i"))
        if c[f] != want:
            bad.append(f"{f}: C (offset, size, signed) {c[f]} != dtype {want}")
    return bad


def _defines(path: Path) -> dict[str, int]:
    pairs = re.findall(r"^#define (\w+) (0x[0-9A-Fa-f]+|\d+)(?:ULL|U|L)*\b", path.read_text(), re.M)
    return {k: int(v, 0) for k, v in pairs}


def test_api_rec_matches_api_dtype(tmp_path: Path) -> None:
    decl, members = _struct(SOURCE, "api_rec")
    assert _mismatches(_c_layout(tmp_path, decl, "api_rec", members), API_DTYPE) == []


def test_event_t_matches_event_dtype(tmp_path: Path) -> None:
    decl, members = _struct(PROBES, "event_t")
    c = _c_layout(tmp_path, decl, "event_t", members, BPF_TYPES)
    assert _mismatches(c, host_probes.EVENT_DTYPE) == []
    assert c["sizeof"] == (host_probes.EVENT_SIZE,)


def test_a_changed_layout_is_caught(tmp_path: Path) -> None:
    decl, members = _struct(SOURCE, "api_rec")
    c = _c_layout(tmp_path, decl.replace("int32_t ret;", "int64_t ret;"), "api_rec", members)
    bad = _mismatches(c, API_DTYPE)
    assert any(b.startswith("sizeof") for b in bad) and any(b.startswith("ret:") for b in bad)
    swapped = np.dtype([(n, "<i4" if n == "tid" else API_DTYPE.fields[n][0]) for n in API_DTYPE.names])
    assert _mismatches(_c_layout(tmp_path, decl, "api_rec", members), swapped) == [
        "tid: C (offset, size, signed) (28, 4, 0) != dtype (28, 4, 1)"
    ]


@pytest.mark.parametrize(
    ("source", "name", "value"),
    [
        (SOURCE, "CCT_MAGIC", cupti_raw.MAGIC),  # the raw file's block magic numbers
        (SOURCE, "CCT_STR_MAGIC", cupti_raw.STR_MAGIC),
        (SOURCE, "CCT_API_MAGIC", cupti_raw.API_MAGIC),
        (PROBES, "EV_CALL", host_probes.EV_CALL),  # the eBPF event types
        (PROBES, "EV_OFFCPU", host_probes.EV_OFFCPU),
        (PROBES, "EV_IOCTL", host_probes.EV_IOCTL),
    ],
)
def test_constants_agree(source: Path, name: str, value: int) -> None:
    assert _defines(source)[name] == value


def test_bridge_counters_agree() -> None:
    """cct_bridge_stats fills STAT_NAMES then the two histograms: count what the C writes."""
    src = _uncommented(BRIDGE_SOURCE.read_text())
    enum = re.search(r"enum \{\s*(S_COPIES.*?)\};", src, re.S)
    assert enum
    counters = [e.strip() for e in enum.group(1).split(",") if e.strip()]
    assert counters[-1] == "S_FIXED"
    assert len(counters) - 1 == len(bridge.STAT_NAMES)
    assert _defines(BRIDGE_SOURCE)["HIST"] == bridge.HIST


def test_dump_bpf_prints_the_program() -> None:
    from tests.conftest import cctrace

    r = cctrace("doctor", "--dump-bpf")
    assert r.returncode == 0, r.stderr
    assert "struct event_t {" in r.stdout and "RINGBUF_PAGES_LOG2" not in r.stdout
    assert f"BPF_RINGBUF_OUTPUT(events, 1 << {host_probes.RINGBUF_PAGES_LOG2})" in r.stdout
    probed = re.findall(r"^int enter_(\d+)\(", r.stdout, re.M)
    assert probed == [str(i) for i in range(len(probed))] and probed
    assert "--dump-bpf" not in cctrace("doctor", "--help").stdout
