"""A small vLLM-like decode loop: the host<->device crossing pattern of an LLM server, on random weights.

Each step builds its inputs from Python lists on the host and copies them to the GPU as several
small crossings (token ids, positions, sequence lengths, slot mapping, block table; pageable and
pinned), runs a memory-bound forward pass, and reads the sampled tokens back with a blocking D2H
(`.tolist()`). Every --swap-every steps it swaps a KV-cache block out to pinned host memory and
back in (large D2H/H2D). Each step is an NVTX range "step N".

Remedy flags (each off by default): --packed-h2d (one pinned H2D per step instead of five),
--staging-stream (H2D on an idle side stream, the compute stream waits on an event),
--async-readback (sampled tokens stay on the GPU for the next step; the host copy is drained by a
worker thread).

At the end it prints one JSON line, prefixed `SERVE_SUMMARY `, with what it issued, so a trace
can be checked against it.
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time

import torch

FIELDS = ("token_ids", "positions", "seq_lens", "slot_mapping", "block_table")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16, help="sequences per decode step")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before the timed ones")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    p.add_argument("--max-blocks", type=int, default=64, help="block-table width per sequence")
    p.add_argument("--kv-blocks", type=int, default=2048, help="KV-cache blocks on the GPU")
    p.add_argument("--swap-every", type=int, default=25, help="swap a KV block out and in every N steps (0: never)")
    p.add_argument("--swap-blocks", type=int, default=64, help="KV blocks per swap")
    p.add_argument("--packed-h2d", action="store_true", help="remedy: one packed pinned H2D per step")
    p.add_argument("--staging-stream", action="store_true", help="remedy: H2D on an idle staging stream")
    p.add_argument("--async-readback", action="store_true", help="remedy: D2H drained on a worker thread")
    p.add_argument("--no-nvtx", action="store_true", help="do not emit an NVTX range per step")
    p.add_argument(
        "--torch-profiler", action="store_true", help="run the timed steps under torch.profiler (for comparison)"
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


class Server:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.dev = torch.device("cuda")
        g = torch.Generator(device="cpu").manual_seed(a.seed)
        gd = torch.Generator(device=self.dev).manual_seed(a.seed)  # weights are made on the GPU: fast start
        dt = torch.float16

        def weights(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gd, dtype=dt, device=self.dev) * 0.02

        self.emb = weights(a.vocab, a.hidden)
        self.w = [weights(a.hidden, a.hidden) for _ in range(a.layers)]
        self.w_out = weights(a.hidden, a.vocab)
        # KV cache: [blocks, block_size, hidden]
        self.kv = torch.zeros(a.kv_blocks, a.block_size, a.hidden, dtype=dt, device=self.dev)
        self.swap_host = torch.empty(a.swap_blocks, a.block_size, a.hidden, dtype=dt).pin_memory()
        self.pinned_pos = torch.empty(a.batch, dtype=torch.int64).pin_memory()
        self.pinned_slots = torch.empty(a.batch, dtype=torch.int64).pin_memory()
        self.packed = torch.empty(a.batch * (4 + a.max_blocks), dtype=torch.int64).pin_memory()
        self.stage = torch.cuda.Stream() if a.staging_stream else None
        self.tokens = [int(t) for t in torch.randint(0, a.vocab, (a.batch,), generator=g)]
        self.seq_lens = [int(s) for s in torch.randint(16, a.block_size * a.max_blocks // 2, (a.batch,), generator=g)]
        self.issued = {
            "h2d": 0,
            "h2d_bytes": 0,
            "d2h": 0,
            "d2h_bytes": 0,
            "h2d_pinned": 0,
            "h2d_pageable": 0,
            "swaps": 0,
            "steps": 0,
        }
        self.dev_tokens: torch.Tensor | None = None
        self.readback: queue.Queue = queue.Queue()
        self.drained: list[list[int]] = []
        self.drainer = threading.Thread(target=self._drain, daemon=True) if a.async_readback else None
        if self.drainer:
            self.drainer.start()

    # ---- host-side inputs ------------------------------------------------------------------
    def host_inputs(self) -> dict[str, list]:
        a = self.a
        positions = [s - 1 for s in self.seq_lens]
        blocks = [[(i * a.max_blocks + j) % a.kv_blocks for j in range(a.max_blocks)] for i in range(a.batch)]
        slots = [
            blocks[i][(positions[i] // a.block_size) % a.max_blocks] * a.block_size + positions[i] % a.block_size
            for i in range(a.batch)
        ]
        return {
            "token_ids": self.tokens,
            "positions": positions,
            "seq_lens": self.seq_lens,
            "slot_mapping": slots,
            "block_table": blocks,
        }

    def _count(self, direction: str, nbytes: int, kind: str | None = None) -> None:
        self.issued[direction] += 1
        self.issued[direction + "_bytes"] += nbytes
        if kind:
            self.issued[f"h2d_{kind}"] += 1

    def copy_inputs(self, inp: dict[str, list]) -> dict[str, torch.Tensor]:
        """Five small crossings per step (the pattern that a CC bridge taxes), or one packed one."""
        a, dev = self.a, self.dev
        if a.packed_h2d:
            flat = [*inp["token_ids"], *inp["positions"], *inp["seq_lens"], *inp["slot_mapping"]]
            for row in inp["block_table"]:
                flat.extend(row)
            self.packed.copy_(torch.tensor(flat, dtype=torch.int64))
            d = self.packed.to(dev, non_blocking=True)
            self._count("h2d", d.numel() * 8, "pinned")
            b = a.batch
            return {
                "token_ids": d[:b],
                "positions": d[b : 2 * b],
                "seq_lens": d[2 * b : 3 * b],
                "slot_mapping": d[3 * b : 4 * b],
                "block_table": d[4 * b :].view(b, a.max_blocks),
            }
        out = {}
        if self.dev_tokens is not None:  # async readback: next inputs stay on the GPU
            out["token_ids"] = self.dev_tokens
        else:
            out["token_ids"] = torch.tensor(inp["token_ids"], dtype=torch.int64, device=dev)  # alloc-and-copy, pageable
            self._count("h2d", a.batch * 8, "pageable")
        self.pinned_pos.copy_(torch.tensor(inp["positions"], dtype=torch.int64))
        out["positions"] = self.pinned_pos.to(dev, non_blocking=True)  # pinned
        self._count("h2d", a.batch * 8, "pinned")
        out["seq_lens"] = torch.tensor(inp["seq_lens"], dtype=torch.int32).to(dev)  # pageable
        self._count("h2d", a.batch * 4, "pageable")
        self.pinned_slots.copy_(torch.tensor(inp["slot_mapping"], dtype=torch.int64))
        out["slot_mapping"] = self.pinned_slots.to(dev, non_blocking=True)  # pinned
        self._count("h2d", a.batch * 8, "pinned")
        out["block_table"] = torch.tensor(inp["block_table"], dtype=torch.int32).to(dev)  # pageable
        self._count("h2d", a.batch * a.max_blocks * 4, "pageable")
        return out

    # ---- GPU work --------------------------------------------------------------------------
    def forward(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        a = self.a
        x = self.emb[t["token_ids"]]
        ctx = self.kv[t["block_table"][:, :4].long()].mean(dim=(1, 2))  # gather a few KV blocks per sequence
        x = x + ctx
        for w in self.w:
            x = torch.nn.functional.gelu(x @ w)
        self.kv.view(-1, a.hidden)[t["slot_mapping"]] = x  # write this step's KV
        logits = x @ self.w_out
        return torch.argmax(logits, dim=-1)

    def swap(self) -> None:
        """Swap KV blocks out to pinned host memory and back in: large D2H then H2D."""
        n = self.a.swap_blocks
        self.swap_host.copy_(self.kv[:n])
        self._count("d2h", self.swap_host.numel() * 2)
        self.kv[:n].copy_(self.swap_host)
        self._count("h2d", self.swap_host.numel() * 2, "pinned")
        self.issued["swaps"] += 1

    def _drain(self) -> None:
        while True:
            item = self.readback.get()
            if item is None:
                return
            host, ev = item
            ev.synchronize()
            self.drained.append(host.tolist())

    def step(self, i: int) -> None:
        a = self.a
        inp = self.host_inputs()
        if self.stage is not None:
            with torch.cuda.stream(self.stage):
                t = self.copy_inputs(inp)
            ready = torch.cuda.Event()
            ready.record(self.stage)
            torch.cuda.current_stream().wait_event(ready)
            for v in t.values():
                v.record_stream(torch.cuda.current_stream())
        else:
            t = self.copy_inputs(inp)
        sampled = self.forward(t)
        if a.async_readback:
            self.dev_tokens = sampled
            host = torch.empty(a.batch, dtype=torch.int64).pin_memory()
            host.copy_(sampled, non_blocking=True)
            self._count("d2h", a.batch * 8)
            ev = torch.cuda.Event()
            ev.record()
            self.readback.put((host, ev))
        else:
            self.tokens = sampled.tolist()  # blocking D2H readback
            self._count("d2h", a.batch * 8)
        self.seq_lens = [s + 1 if s + 1 < a.block_size * a.max_blocks else 16 for s in self.seq_lens]
        if a.swap_every and (i + 1) % a.swap_every == 0:
            self.swap()
        self.issued["steps"] += 1

    def close(self) -> None:
        if self.drainer:
            self.readback.put(None)
            self.drainer.join()


def main(argv=None) -> dict:
    a = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("serve.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    srv = Server(a)
    nvtx = not a.no_nvtx
    for i in range(a.warmup):
        srv.step(i)
    torch.cuda.synchronize()
    warm = dict(srv.issued)
    prof = None
    if a.torch_profiler:
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        prof = torch.profiler.profile(activities=acts)
        prof.__enter__()
    t0 = time.perf_counter()
    ends = []  # each step's end: the median step time shrugs off the steps another tenant's work slowed
    for i in range(a.warmup, a.warmup + a.steps):
        if nvtx:
            torch.cuda.nvtx.range_push(f"step {i}")
        srv.step(i)
        if nvtx:
            torch.cuda.nvtx.range_pop()
        ends.append(time.perf_counter())
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    durations = sorted(b - a_ for a_, b in zip([t0, *ends[:-1]], ends, strict=True))
    if prof is not None:
        prof.__exit__(None, None, None)
    srv.close()
    timed = {k: srv.issued[k] - warm[k] for k in srv.issued}
    summary = {
        "steps": a.steps,
        "warmup": a.warmup,
        "batch": a.batch,
        "seconds": elapsed,
        "steps_per_s": a.steps / elapsed,
        "step_ms_median": 1e3 * durations[len(durations) // 2],
        "step_ms_p90": 1e3 * durations[int(len(durations) * 0.9)],
        "step_ms_p10": 1e3 * durations[int(len(durations) * 0.1)],  # the machine's quiet steps
        "issued_total": srv.issued,
        "issued_timed": timed,
        "remedies": {
            "packed_h2d": a.packed_h2d,
            "staging_stream": a.staging_stream,
            "async_readback": a.async_readback,
        },
    }
    print("SERVE_SUMMARY " + json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
