"""The KV cache, measured: prefill vs decode, with and without the cache, and its size in memory.

Generating token t needs the keys and values of all tokens before it, in every layer. With the cache,
the prompt is run once (prefill: all prompt tokens in one forward pass, compute-bound) and every later
step runs only the one new token against the stored K and V (decode: memory-bound, almost constant
time). Without it, every step runs the whole sequence again, so step t costs ~t token-forwards.

Size: 2 (K and V) x KV heads x head_dim x bytes per element x the tokens each layer holds, per sequence
(all tokens, or `sliding_window - 1` on a sliding-window layer): `core.models.memory.kv_cache_bytes`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache

from core.models.loading import LoadedModel
from core.models.memory import kv_cache_bytes

MAX_NEW_TOKENS = 256
# The page's caps. Without the cache, step t feeds all prompt + t - 1 tokens again, so one measurement runs
# ~ n·P + n²/2 tokens through the model: a 4,500-token prompt took minutes. The CLI takes any length.
MAX_PAGE_PROMPT_TOKENS = 512
MAX_UNCACHED_WORK = 32_768  # tokens the run without the cache may feed, in all
WHY_PROMPT_CAP = "measuring without the cache runs the whole prompt again for every new token"


def uncached_work(prompt_tokens: int, new_tokens: int) -> int:
    """Tokens fed to the model by the run without the cache: Σ_{t=1..n} (P + t − 1)."""
    return new_tokens * prompt_tokens + new_tokens * (new_tokens - 1) // 2


def max_new_tokens_for(prompt_tokens: int, work: int = MAX_UNCACHED_WORK) -> int:
    """The most new tokens (≤ MAX_NEW_TOKENS) whose run without the cache stays within `work` tokens."""
    n = MAX_NEW_TOKENS
    while n > 1 and uncached_work(prompt_tokens, n) > work:
        n -= 1
    return n


@dataclass(frozen=True)
class DecodeTiming:
    use_cache: bool
    token_ids: list[int]  # greedy new tokens
    seconds: list[float]  # wall time of the forward pass that produced each new token
    top2_gaps: list[float] = field(default_factory=list)  # logit of the chosen token minus the runner-up's

    @property
    def total(self) -> float:
        return float(sum(self.seconds))

    @property
    def decode_mean(self) -> float:
        """Mean seconds per token after the first (the first is the prefill with the cache)."""
        rest = self.seconds[1:]
        return float(sum(rest) / len(rest)) if rest else float("nan")


@dataclass(frozen=True)
class KVMeasurement:
    prompt_tokens: int
    with_cache: DecodeTiming
    without_cache: DecodeTiming

    @property
    def speedup(self) -> float:
        return self.without_cache.total / self.with_cache.total

    @property
    def same_tokens(self) -> bool:
        return self.with_cache.token_ids == self.without_cache.token_ids

    def first_difference(self) -> tuple[int, float, float] | None:
        """(new-token index from 0, top-2 logit gap with the cache, without) where the runs first part; None if
        they never do. A gap near 0 on both sides is a near tie that rounding differences can flip."""
        pairs = zip(self.with_cache.token_ids, self.without_cache.token_ids)
        k = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
        if k is None:
            return None
        return k, self.with_cache.top2_gaps[k], self.without_cache.top2_gaps[k]


@dataclass(frozen=True)
class CacheSize:
    tokens: int
    formula_bytes: int
    actual_bytes: int
    formula: str  # the per-token formula with the model's numbers
    dtype: str
    layer_shapes: list[tuple[int, ...]]  # the K tensor of each layer: [batch, kv_heads, tokens, head_dim]
    note: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def decode_timed(lm: LoadedModel, ids: list[int], new_tokens: int, use_cache: bool,
                 progress: Callable[[], None] | None = None) -> DecodeTiming:
    """Greedy decode of `new_tokens`, timing each forward pass (prefill included as the first).
    `progress()` is called after each pass, outside the timed part."""
    model, device = lm.model, lm.device
    seq = torch.tensor([ids], device=device)
    cache = DynamicCache(config=model.config) if use_cache else None
    step_input, tokens, seconds, gaps = seq, [], [], []
    for _ in range(new_tokens):
        _sync(device)
        start = time.perf_counter()
        out = model(input_ids=step_input, past_key_values=cache, use_cache=use_cache, logits_to_keep=1)
        token = out.logits[0, -1].argmax()
        _sync(device)
        seconds.append(time.perf_counter() - start)
        top2 = out.logits[0, -1].float().topk(min(2, out.logits.shape[-1])).values
        gaps.append(float(top2[0] - top2[-1]))
        tokens.append(int(token))
        seq = torch.cat((seq, token.view(1, 1)), dim=1)
        step_input = token.view(1, 1) if use_cache else seq  # with the cache only the new token goes in
        if progress is not None:
            progress()
    return DecodeTiming(use_cache, tokens, seconds, gaps)


def measure_peak_bytes(lm: LoadedModel, prompt_tokens: int, new_tokens: int) -> int:
    """What `measure` holds beyond the loaded model, declared so the server admits it: the cache at its
    longest, and the uncached run's longest forward pass (its activations, one layer at a time, and logits)."""
    tokens = prompt_tokens + new_tokens
    kv = kv_cache_bytes(lm.config, tokens, 1, lm.model.dtype)
    hidden = int(getattr(lm.config, "hidden_size", 0) or getattr(lm.config, "n_embd", 0) or 0)
    vocab = int(getattr(lm.config, "vocab_size", 0) or 0)
    return int(2 * (kv.bytes or 0) + 4 * tokens * (16 * hidden + vocab))


def measure(lm: LoadedModel, ids: list[int], new_tokens: int,
            progress: Callable[[int, int], None] | None = None) -> KVMeasurement:
    """The same greedy continuation with and without the cache (a warm-up pass first).
    `progress(done, total)` counts forward passes (2 + 2·new_tokens in all)."""
    if not 1 <= new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"new tokens must be between 1 and {MAX_NEW_TOKENS} (got {new_tokens})")
    context = getattr(lm.config, "max_position_embeddings", None)
    if context is not None and len(ids) + new_tokens > context:
        raise ValueError(f"{len(ids)} prompt tokens + {new_tokens} new tokens exceed the model's context "
                         f"of {context} tokens")
    total, done = 2 + 2 * new_tokens, [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    decode_timed(lm, ids, 2, True, tick)  # warm-up: first-call allocations would land on one side only
    with_cache = decode_timed(lm, ids, new_tokens, True, tick)
    without_cache = decode_timed(lm, ids, new_tokens, False, tick)
    return KVMeasurement(len(ids), with_cache, without_cache)


def cache_tensor_bytes(cache: DynamicCache) -> int:
    """Bytes the cache's K and V tensors actually hold."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
               if t is not None and t.numel())


@torch.inference_mode()
def cache_size(lm: LoadedModel, ids: list[int]) -> CacheSize:
    """Run the prompt with a cache; compare its bytes with the formula."""
    model = lm.model
    out = model(input_ids=torch.tensor([ids], device=lm.device), past_key_values=DynamicCache(config=model.config),
                use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    dtype = str(cache.layers[0].keys.dtype).replace("torch.", "")
    size = kv_cache_bytes(lm.config, len(ids), 1, dtype)
    held = max(size.layer_tokens, default=len(ids))
    note = "; ".join(x for x in (size.rule, size.note) if x)
    return CacheSize(held, -1 if size.bytes is None else size.bytes, cache_tensor_bytes(cache), size.formula, dtype,
                     [tuple(layer.keys.shape) for layer in cache.layers], note)


def formula_bytes(lm: LoadedModel, tokens: int, batch: int = 1) -> int | None:
    """The formula alone, for any length (e.g. the full context)."""
    return kv_cache_bytes(lm.config, tokens, batch, lm.model.dtype).bytes
