"""Hugging Face `transformers` `generate()` on a small random-init Llama (config built in code: no
download), KV cache on, greedy, `min_new_tokens == max_new_tokens` so every request decodes exactly
--new-tokens tokens.

Expected, inside the fence window (see _common.py):
  iterations  = --requests * --new-tokens forward passes (default 6 * 64 = 384; the first of each
                request is its prefill), each ending in generate's stopping check, a blocking readback
  copies the script issues itself, exactly: per request 2 H2D (input ids and attention mask, each
                --batch * --prompt * 8 bytes, pageable) and 1 D2H (the output, --batch * (--prompt +
                --new-tokens) * 8 bytes)
  copies transformers issues (prefill masks, stopping checks: version-dependent, not knowable a priori):
                counted with --count-copies, which runs the window under a torch dispatch mode that
                counts every aten op that crosses host<->device (cross-device _to_copy/copy_,
                _local_scalar_dense, lift_fresh of a CUDA tensor, nonzero). Its counts are then `window`;
                without it `window` holds only the script's own copies (`window_exact` false).
"""

from __future__ import annotations

from collections import Counter

from _common import FENCE_BYTES, Timer, emit, parser


def copy_counter():
    """A TorchDispatchMode that counts host<->device crossings by (direction, bytes)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten

    def is_cuda(t) -> bool:
        return isinstance(t, torch.Tensor) and t.is_cuda

    def nbytes(t) -> int:
        return t.numel() * t.element_size()

    class CopyCounter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.copies: Counter = Counter()  # (direction, bytes) -> count
            self.ops: Counter = Counter()  # which aten op crossed

        def _add(self, op: str, direction: str, n: int) -> None:
            if n != 0:
                self.copies[(direction, n)] += 1
                self.ops[op] += 1

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            pkt = func.overloadpacket
            if pkt is aten._local_scalar_dense and is_cuda(args[0]):
                self._add("_local_scalar_dense", "d2h", args[0].element_size())
            elif pkt is aten._to_copy and isinstance(out, torch.Tensor):
                src = args[0]
                if is_cuda(src) != is_cuda(out):
                    self._add("_to_copy", "d2h" if is_cuda(src) else "h2d", nbytes(out if is_cuda(src) else src))
            elif pkt is aten.copy_:
                dst, src = args[0], args[1]
                if isinstance(src, torch.Tensor) and is_cuda(dst) != is_cuda(src):
                    self._add("copy_", "h2d" if is_cuda(dst) else "d2h", nbytes(dst if is_cuda(src) else src))
            elif pkt in (aten.lift_fresh, aten.lift_fresh_copy) and is_cuda(out):
                self._add("lift_fresh", "h2d", nbytes(out))
            elif pkt is aten.nonzero and is_cuda(args[0]):
                self._add("nonzero", "d2h", 4)  # the count of nonzeros (an int) read back to size the output
            return out

    return CopyCounter()


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--requests", type=int, default=6)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens per sequence")
    p.add_argument("--warmup", type=int, default=1, help="untimed requests before the window")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--count-copies", action="store_true", help="count transformers' own copies (slower)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if not torch.cuda.is_available():
        raise SystemExit("hf_generate.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    dev = torch.device("cuda")
    special = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    cfg = LlamaConfig(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        intermediate_size=2 * a.hidden,
        num_hidden_layers=a.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=a.prompt + a.new_tokens + 16,
        **special,
    )
    torch.manual_seed(a.seed)
    with dev:  # random init on the GPU: no weight copies
        model = LlamaForCausalLM(cfg)
    model = model.to(torch.float16).eval()
    gen = GenerationConfig(
        max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False, use_cache=True, **special
    )
    g = torch.Generator().manual_seed(a.seed)

    def request() -> None:
        ids_h = torch.randint(3, a.vocab, (a.batch, a.prompt), generator=g)
        ids = ids_h.to(dev)  # H2D
        mask = torch.ones_like(ids_h).to(dev)  # H2D
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
        tokens = out.cpu()  # D2H
        assert tokens.shape == (a.batch, a.prompt + a.new_tokens), tokens.shape

    with torch.inference_mode():
        for _ in range(a.warmup):
            request()
        torch.cuda.synchronize()
        torch.zeros(FENCE_BYTES, dtype=torch.uint8).to(dev)  # fence: the window starts
        torch.cuda.synchronize()
        counter = copy_counter() if a.count_copies else None
        t = Timer()
        if counter is not None:
            counter.__enter__()
        try:
            for _ in range(a.requests):
                request()
                t.tick()
        finally:
            if counter is not None:
                counter.__exit__(None, None, None)
        torch.cuda.synchronize()
        torch.zeros(FENCE_BYTES, dtype=torch.uint8).to(dev)  # fence: the window ends
        torch.cuda.synchronize()
    own = {
        "h2d": 2 * a.requests,
        "h2d_bytes": 2 * a.requests * a.batch * a.prompt * 8,
        "d2h": a.requests,
        "d2h_bytes": a.requests * a.batch * (a.prompt + a.new_tokens) * 8,
    }
    if counter is not None:
        win = {"h2d": 0, "d2h": 0, "h2d_bytes": 0, "d2h_bytes": 0}
        for (direction, n), k in counter.copies.items():
            win[direction] += k
            win[direction + "_bytes"] += k * n
        by_size = sorted([d, n, k] for (d, n), k in counter.copies.items())
        counted = {"by_size": by_size, "ops": dict(counter.ops)}
    else:
        win, counted = own, None
    timing = t.summary()
    summary = {
        "workload": "hf_generate",
        "params": vars(a) | {"json": None},
        "iterations": a.requests * a.new_tokens,
        "iterations_total": (a.warmup + a.requests) * a.new_tokens,
        "per_iteration": {"blocking_waits_min": 1},
        "script_copies": own,
        "counted": counted,
        "window": win,
        "window_exact": counter is not None,
        "seconds": timing["seconds"],
        "request_ms_median": timing.get("step_ms_median"),
        "step_ms_median": (timing.get("step_ms_median") or 0) / a.new_tokens,
    }
    emit(a, summary)
    return summary


if __name__ == "__main__":
    main()
