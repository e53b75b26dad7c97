"""Hugging Face `transformers` `generate()` on a small random-init Llama (config built in code: no
download), KV cache on, greedy, `min_new_tokens == max_new_tokens` so every request decodes exactly
--new-tokens tokens.

Expected, inside the fence window (see _common.py), exactly:
  iterations  = --requests * --new-tokens forward passes (default 6 * 64 = 384; the first of each
                request is its prefill), each ending in generate's stopping check, a blocking readback
  copies the script issues itself: per request 2 H2D (input ids and attention mask, each
                --batch * --prompt * 8 bytes, pageable) and 1 D2H (the output, --batch * (--prompt +
                --new-tokens) * 8 bytes)
  copies transformers issues, read from its generate() source (5.x, checked on 5.17.0 by an op count
                on the CPU and by CUPTI on an H200; `derived_window`):
                per request 3 H2D of 8 bytes (`_prepare_special_tokens`: torch.tensor of the bos, eos
                and pad ids on the device) and 3 D2H of 1 byte (its checks `isin(eos, pad).any()`,
                `(eos < 0).any()` and `has_right_padding = any(mask[:, -1] == 0).item()`);
                per forward pass 2 D2H of 1 byte (masking_utils' `fast_all(padding_mask)` deciding
                whether SDPA may skip the causal mask, and `StopCheck`'s `bool(unfinished.max() == 0)`)
                Each 1-byte readback is `_local_scalar_dense` of a bool: a D2H copy into pinned memory
                followed by cudaStreamSynchronize.
`window` is that derivation. --count-copies also counts the crossings independently, under a torch
dispatch mode (`counted`): run under inference_mode, composite ops (`to`, `item`, `is_nonzero`) reach
a mode whole, and their copies inside stay unseen, so the mode decomposes them itself and counts the
primitives that cross (cross-device `_to_copy`/`copy_`, `_local_scalar_dense`, `lift_fresh` of a
CUDA tensor, `nonzero`, `equal`). `counted_agrees` says whether the two counts are the same.
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
            kwargs = kwargs or {}
            # a composite op (to, item, is_nonzero under inference_mode) reaches the mode whole: run its
            # decomposition with the mode active, so the primitive copies inside are the ones counted
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
            out = func(*args, **kwargs)
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
                self._add("lift_fresh", "h2d", nbytes(out))  # torch.tensor(data, device=cuda)
            elif pkt is aten.nonzero and is_cuda(args[0]):
                self._add("nonzero", "d2h", 4)  # the count of nonzeros (an int) read back to size the output
            elif pkt is aten.equal and is_cuda(args[0]):
                self._add("equal", "d2h", 1)  # its bool result, read inside the CUDA kernel's wrapper
            return out

    return CopyCounter()


def script_copies(params: dict) -> Counter:
    """(direction, bytes) -> count of the copies the script itself issues in the window."""
    requests, batch, prompt = params["requests"], params["batch"], params["prompt"]
    return Counter(
        {("h2d", batch * prompt * 8): 2 * requests, ("d2h", batch * (prompt + params["new_tokens"]) * 8): requests}
    )


def derived_window(params: dict) -> dict:
    """The crossings in the fence window, from the parameters and transformers 5.x generate()'s source
    (see the module docstring): the script's own copies plus generate's. The totals per direction and
    `by_size` ([direction, bytes, count] rows, sorted), as `window_counts` reads them from a trace."""
    requests, passes = params["requests"], params["requests"] * params["new_tokens"]
    sizes = script_copies(params)
    sizes[("h2d", 8)] += 3 * requests  # bos, eos, pad ids made on the device
    sizes[("d2h", 1)] += 3 * requests + 2 * passes  # the bool checks read back
    return _totals(sizes)


def _totals(sizes: Counter) -> dict:
    out: dict = {"h2d": 0, "d2h": 0, "h2d_bytes": 0, "d2h_bytes": 0}
    for (direction, n), k in sizes.items():
        out[direction] += k
        out[direction + "_bytes"] += k * n
    out["by_size"] = sorted([d, n, k] for (d, n), k in sizes.items())
    return out


def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--requests", type=int, default=6)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens per sequence")
    p.add_argument("--warmup", type=int, default=1, help="untimed requests before the window")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument(
        "--count-copies",
        action="store_true",
        help="also count the crossings under a torch dispatch mode (slower): `counted`",
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_request(a):
    """The model, built on the GPU, and one request's work (prompt up, generate, output down), to be run
    under torch.inference_mode(); benchmarks/cupti_inprocess.py times it as a step."""
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

    return request


def main(argv=None) -> dict:
    a = parse_args(argv)
    import torch
    import transformers

    request = make_request(a)
    dev = torch.device("cuda")
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
    derived = derived_window(vars(a))
    counted = None
    if counter is not None:
        counted = _totals(counter.copies) | {"ops": dict(counter.ops)}
    timing = t.summary()
    summary = {
        "workload": "hf_generate",
        "params": vars(a) | {"json": None},
        "iterations": a.requests * a.new_tokens,
        "iterations_total": (a.warmup + a.requests) * a.new_tokens,
        "per_iteration": {"blocking_waits_min": 1},
        "script_copies": _totals(script_copies(vars(a))),
        "transformers": transformers.__version__,
        "window": {k: v for k, v in derived.items() if k != "by_size"},
        "by_size": derived["by_size"],
        "window_exact": True,
        "counted": counted,
        "counted_agrees": None if counted is None else counted["by_size"] == derived["by_size"],
        "seconds": timing["seconds"],
        "request_ms_median": timing.get("step_ms_median"),
        "step_ms_median": (timing.get("step_ms_median") or 0) / a.new_tokens,
    }
    emit(a, summary)
    return summary


if __name__ == "__main__":
    main()
