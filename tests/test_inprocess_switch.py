"""benchmarks/cupti_inprocess.py puts one traced process into each config between blocks of steps. Here its
Switch runs for real over the stand-in CUPTI (tests/standin/) and the preloaded interposer: the interposer
must record in the `interposer` blocks only, whatever came before, and CUPTI be attached exactly in the
configs that attach it (a window edge switches the interposer too, so the order of the switches matters)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, STANDIN

ALL_KINDS = "memcpy,memcpy2,memset,memory,runtime,overhead,sync,kernel,nvtx"
CONFIGS = ["off", "interposer", "fresh:none", "interposer", "detached", "interposer", "default", "fresh:activity", "off"]


def _switched(tmp_path, env: dict, interpose: str, configs: list[str]) -> list[dict]:
    cmd = [sys.executable, "-m", "cctrace", "record", "-o", str(tmp_path / "t"), "--kinds", ALL_KINDS,
           "--interpose", interpose, "--host-probes", "off", "--no-load", "-q", "--",
           sys.executable, str(STANDIN / "inprocess_switch.py"), str(ROOT / "benchmarks"), ",".join(configs)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_interposer_records_in_its_blocks_only(tmp_path, standin_env):
    blocks = _switched(tmp_path, standin_env, "on", CONFIGS)
    assert [b["config"] for b in blocks] == CONFIGS
    assert [b["interposer"] for b in blocks] == [int(c == "interposer") for c in CONFIGS]
    assert [b["cupti_attached"] for b in blocks] == [c not in ("interposer", "detached") for c in CONFIGS]


def test_a_standby_interposer_is_left_alone(tmp_path, standin_env):
    """Without an interposer config the run has the interposer on standby (auto, CUPTI recording): the
    benchmark neither switches it nor asks it back on at the end (it cannot record: that failed once)."""
    configs = ["off", "detached", "fresh:none", "default"]
    blocks = _switched(tmp_path, standin_env, "auto", configs)
    assert [b["interposer"] for b in blocks] == [None] * len(configs)
    assert [b["cupti_attached"] for b in blocks] == [True, False, True, True]
