"""The GPU program of tests/test_gpu_windows.py: H2D copies of a size per phase, in phases that follow
the tracer's state as this process sees it (the test answers "off?"/"on?" with the toggle signal).
Sizes: 1001 bytes attached at start, 1002 while detached, 1003 attached again; 3003 while waiting for a
change (in or out of the window, either way)."""

import json
import sys
import time

import torch

from cctrace.record import tracer


def copies(nbytes: int, n: int) -> None:
    src = torch.ones(nbytes, dtype=torch.uint8)
    for _ in range(n):
        src.to("cuda")
    torch.cuda.synchronize()


def until(attached: bool) -> None:
    while tracer._active.attached != attached:
        copies(3003, 1)
        time.sleep(0.002)


def say(at: str) -> None:
    print(json.dumps({"at": at}), flush=True)


copies(16, 10)  # CUDA up before the first window ends
copies(1001, 50)
say("off?")
until(False)
copies(1002, 50)
time.sleep(0.5)
say("on?")
until(True)
copies(1003, 50)
say("done")
sys.exit(0)
