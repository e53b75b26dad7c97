"""The traced program of tests/test_inprocess_switch.py: benchmarks/cupti_inprocess.py's Switch put into
each config named in argv[2] (comma-separated), over the stand-in CUPTI and the preloaded interposer, with
one stand-in CUDA call after each (a block's first call, which finalizes a detach). It prints, per block,
whether CUPTI was attached and whether the interposer recorded (null: not recording in this run), then
leaves the process as the benchmark does at its end."""

import ctypes
import json
import os
import sys

sys.path.insert(0, sys.argv[1])  # benchmarks/
import cupti_inprocess as C

from cctrace.record import tracer

lib = ctypes.CDLL(os.environ["CCTRACE_TEST_LIBCUPTI"])


def poke() -> None:
    lib.fake_memcpy(1)


switch = C.Switch()
out = []
for config in sys.argv[2].split(","):
    C.enter_block(switch, config, poke)
    poke()
    out.append(
        {
            "config": config,
            "cupti_attached": tracer._active.attached,
            "interposer": switch.ip.lib.cct_ip_active() if switch.ip is not None else None,
        }
    )
switch.restore(poke)
print(json.dumps(out), flush=True)
