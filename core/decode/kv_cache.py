"""The KV cache, measured: prefill vs decode, with and without the cache, and its size in memory.

Generating token t needs the keys and values of all tokens before it, in every layer. With the cache,
the prompt is run once (prefill: all prompt tokens in one forward pass, compute-bound) and every later
step runs only the one new token against the stored K and V (decode: memory-bound, almost constant
time). Without it, every step runs the whole sequence again, so step t costs ~t token-forwards.

Size: 2 (K and V) x layers x KV heads x head_dim x tokens x bytes per element, per sequence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from core.inspect.architecture import cache_window, kv_cache_per_token
from core.models.loading import LoadedModel

MAX_NEW_TOKENS = 256


@dataclass(frozen=True)
class DecodeTiming:
    use_cache: bool
    token_ids: list[int]  # greedy new tokens
    seconds: list[float]  # wall time of the forward pass that produced each new token

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
def decode_timed(lm: LoadedModel, ids: list[int], new_tokens: int, use_cache: bool) -> DecodeTiming:
    """Greedy decode of `new_tokens`, timing each forward pass (prefill included as the first)."""
    model, device = lm.model, lm.device
    seq = torch.tensor([ids], device=device)
    cache = DynamicCache(config=model.config) if use_cache else None
    step_input, tokens, seconds = seq, [], []
    for _ in range(new_tokens):
        _sync(device)
        start = time.perf_counter()
        out = model(input_ids=step_input, past_key_values=cache, use_cache=use_cache, logits_to_keep=1)
        token = out.logits[0, -1].argmax()
        _sync(device)
        seconds.append(time.perf_counter() - start)
        tokens.append(int(token))
        seq = torch.cat((seq, token.view(1, 1)), dim=1)
        step_input = token.view(1, 1) if use_cache else seq  # with the cache only the new token goes in
    return DecodeTiming(use_cache, tokens, seconds)


def measure(lm: LoadedModel, ids: list[int], new_tokens: int) -> KVMeasurement:
    """The same greedy continuation with and without the cache (a warm-up pass first)."""
    if not 1 <= new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"new tokens must be between 1 and {MAX_NEW_TOKENS} (got {new_tokens})")
    context = getattr(lm.config, "max_position_embeddings", None)
    if context is not None and len(ids) + new_tokens > context:
        raise ValueError(f"{len(ids)} prompt tokens + {new_tokens} new tokens exceed the model's context "
                         f"of {context} tokens")
    decode_timed(lm, ids, 2, True)  # warm-up: first-call allocations would land on one side only
    with_cache = decode_timed(lm, ids, new_tokens, True)
    without_cache = decode_timed(lm, ids, new_tokens, False)
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
    per_token = kv_cache_per_token(lm.config, dtype)
    window = cache_window(lm.config)
    tokens = min(len(ids), window) if window else len(ids)
    formula_bytes = int(per_token["bytes"] * tokens) if per_token["bytes"] is not None else -1
    return CacheSize(tokens, formula_bytes, cache_tensor_bytes(cache), per_token["formula"], dtype,
                     [tuple(layer.keys.shape) for layer in cache.layers], per_token["note"])


def formula_bytes(lm: LoadedModel, tokens: int, batch: int = 1) -> int | None:
    """The formula alone, for any length (e.g. the full context)."""
    per = kv_cache_per_token(lm.config, str(lm.model.dtype).replace("torch.", ""))["bytes"]
    return None if per is None else int(per * tokens * batch)
