"""A torch CUDA-graph replay loop: one captured step holds a pinned H2D memcpy node (inputs), a small
matmul + argmax, and a D2H memcpy node into pinned memory (the sampled ids); the host replays it and
waits on the stream (`synchronize`) each iteration, as a decode loop over captured graphs does.

Expected, inside the fence window (see _common.py), exactly, from the parameters:
  iterations  = --replays (default 150), each one graph launch followed by one stream sync
  H2D copies  = --replays, each --hidden * 4 bytes (pinned; a memcpy node replayed)
  D2H copies  = --replays, each --batch * 8 bytes (int64 ids into pinned memory; a memcpy node replayed)
Before the window: --warmup eager steps on a side stream (each 1 H2D + 1 D2H, as the capture needs)
and the capture itself (which copies nothing).
"""

from __future__ import annotations

from _common import FENCE_BYTES, Timer, parser, report


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--replays", type=int, default=150)
    p.add_argument("--warmup", type=int, default=3, help="eager steps on a side stream before capturing")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("graph_replay.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    torch.manual_seed(a.seed)
    dev = torch.device("cuda")
    host_in = torch.empty(a.hidden, dtype=torch.float32).pin_memory()
    host_out = torch.empty(a.batch, dtype=torch.int64).pin_memory()
    dev_in = torch.empty(a.hidden, dtype=torch.float32, device=dev)
    w = torch.randn(a.hidden, a.batch * a.vocab, device=dev) * 0.05
    inputs = [torch.randn(a.hidden) for _ in range(8)]

    def step() -> None:
        dev_in.copy_(host_in, non_blocking=True)  # H2D pinned
        logits = (dev_in @ w).view(a.batch, a.vocab)
        host_out.copy_(logits.argmax(-1), non_blocking=True)  # D2H into pinned

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(a.warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    torch.cuda.synchronize()

    def fence() -> None:
        torch.zeros(FENCE_BYTES, dtype=torch.uint8).to(dev)  # pageable H2D, synchronous
        torch.cuda.synchronize()

    fence()
    t = Timer()
    stream = torch.cuda.current_stream()
    for i in range(a.replays):
        host_in.copy_(inputs[i % len(inputs)])  # host-side write into pinned memory, no CUDA copy
        graph.replay()
        stream.synchronize()
        ids = host_out.tolist()  # host memory already: no copy
        assert len(ids) == a.batch
        t.tick()
    fence()
    per = [
        {"direction": "h2d", "bytes": a.hidden * 4, "memory": "pinned"},
        {"direction": "d2h", "bytes": a.batch * 8, "memory": "pinned"},
    ]
    per_iteration = {"blocking_waits": 1, "graph_launches": 1}
    before = {"h2d": a.warmup, "d2h": a.warmup}
    return report(a, "graph_replay", per, a.replays, a.replays, t, per_iteration, before_window=before)


if __name__ == "__main__":
    main()
