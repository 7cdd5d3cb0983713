"""Bytes: a model's weights per tensor (bitsandbytes' 8-bit and NF4 included), its KV cache (sliding windows
and per-layer types included), and how much this machine has: the one home for these counts."""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import PretrainedConfig

from core.dtypes import Dtype, as_dtype

if TYPE_CHECKING:
    from core.models.loading import ModelSpec


def estimate_weight_bytes(config: PretrainedConfig, dtype: str = "float32", quantization: str = "none") -> int:
    """Weights only, counted per tensor on the meta device (no memory is allocated): 8-bit and 4-bit
    quantize the linear layers only and keep the rest in `dtype`."""
    storage = {"8bit": "int8", "4bit": "int4"}.get(quantization, dtype)
    return weight_bytes(config_weight_tensors(config), storage, kept_dtype=dtype).bytes


def available_bytes(device: str) -> int:
    """What a load may use: free GPU memory plus free RAM where accelerate can spread a model."""
    ram = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                ram = int(line.split()[1]) * 1024
    if not ram:
        import psutil  # pragma: no cover - non-Linux hosts

        ram = psutil.virtual_memory().available
    gpu = 0
    if device in ("auto", "cuda") and torch.cuda.is_available():
        gpu = sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
    return gpu if device == "cuda" else ram + gpu


def check_fits(config: PretrainedConfig, spec: ModelSpec) -> int:
    """Refuse, with the figures, what cannot fit; returns the estimate in bytes."""
    from core.models.loading import ModelLoadError, shown

    need = estimate_weight_bytes(config, spec.dtype, spec.quantization)
    have = available_bytes(spec.device)
    # 20% headroom for activations, the tokenizer and the app itself.
    if need * 1.2 > have:
        raise ModelLoadError(
            f"`{shown(spec.source)}` needs about {need / 2**30:.1f} GiB for its weights in {spec.dtype}"
            f"{'' if spec.quantization == 'none' else ' ' + spec.quantization}, but only "
            f"{have / 2**30:.1f} GiB is free here. Try bf16, 8-bit or 4-bit, or a smaller model.")
    return need


# ---------------------------------------------------------------- weights, counted per tensor
# bitsandbytes replaces the linear layers only (nn.Linear, GPT-2's Conv1D), never the output embedding:
# embeddings, the LM head, norms and biases stay in the model's floating dtype. 8-bit keeps one fp32 scale
# per output row (`SCB`); NF4 one fp32 absmax per block of 64 weights, or, double-quantized, one uint8 per
# block plus an fp32 absmax per 256 blocks (bitsandbytes' defaults).
BNB_BLOCK = 64
BNB_DOUBLE_BLOCK = 256


@dataclass(frozen=True)
class LinearTensor:
    numel: int
    rows: int  # output features: 8-bit keeps one scale per row


@dataclass(frozen=True)
class WeightTensors:
    """The weights as bitsandbytes sees them: the linear layers it would quantize, and everything else."""
    linear: tuple[LinearTensor, ...]
    other: int  # parameters kept in floating point: embeddings, LM head, norms, biases, positions

    @property
    def parameters(self) -> int:
        return sum(t.numel for t in self.linear) + self.other


@dataclass(frozen=True)
class WeightBytes:
    dtype: str  # the storage asked for (Dtype.short)
    kept_dtype: str  # where the rest stays (quantized formats only)
    parameters: int
    quantized_parameters: int
    kept_parameters: int
    storage_bytes: int  # the tensors as stored: what `model.get_memory_footprint()` counts
    state_bytes: int  # quantization constants held beside them (scales, absmax)
    rule: str

    @property
    def bytes(self) -> int:
        return self.storage_bytes + self.state_bytes


def weight_tensors(model: nn.Module) -> WeightTensors:
    """Walk a (meta or real) model: tied parameters once, the output embedding never quantized."""
    from transformers.pytorch_utils import Conv1D

    from core.models.params import unpacked_numel

    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skip = {id(out.weight)} if out is not None and getattr(out, "weight", None) is not None else set()
    seen: set[int] = set()
    linear: list[LinearTensor] = []
    for module in model.modules():
        w = getattr(module, "weight", None)
        if isinstance(w, torch.Tensor) and id(w) not in skip and id(w) not in seen and (
                isinstance(module, (nn.Linear, Conv1D)) or hasattr(w, "SCB") or hasattr(w, "quant_state")):
            seen.add(id(w))
            n = unpacked_numel(w)
            rows = getattr(module, "out_features", None) or getattr(module, "nf", None) or w.shape[0]
            linear.append(LinearTensor(n, int(rows)))
    other = 0
    for p in model.parameters():  # each Parameter object once: tied weights count once
        if id(p) not in seen:
            seen.add(id(p))
            other += unpacked_numel(p)
    return WeightTensors(tuple(linear), other)


_TENSORS_CACHE: dict[str, WeightTensors] = {}


def config_weight_tensors(config: PretrainedConfig) -> WeightTensors:
    """`weight_tensors` of the model a config describes, built on the meta device (cached per config)."""
    key = config.to_json_string()
    if key not in _TENSORS_CACHE:
        from core.models.params import meta_model_from_config

        if len(_TENSORS_CACHE) >= 64:  # pasted configs: keep the cache small
            _TENSORS_CACHE.clear()
        _TENSORS_CACHE[key] = weight_tensors(meta_model_from_config(config))
    return _TENSORS_CACHE[key]


def weight_bytes(tensors: WeightTensors, dtype: str | Dtype, kept_dtype: str | Dtype = "bfloat16",
                 double_quant: bool = False) -> WeightBytes:
    """Bytes of the weights stored in `dtype`, per tensor. Plain dtypes: every parameter x its bytes.
    int8 / 4-bit (bitsandbytes): linear weights at 1 / 0.5 byte plus their scales, the rest in `kept_dtype`."""
    d, kept = as_dtype(dtype), as_dtype(kept_dtype)
    n = tensors.parameters
    if not d.weight_only:
        return WeightBytes(d.short, d.short, n, 0, n, int(n * d.bytes), 0,
                           f"every parameter in {d.name}: {n:,} x {d.bytes:g} bytes")
    q = sum(t.numel for t in tensors.linear)
    kept_bytes = int(tensors.other * kept.bytes)
    if d.bits == 8:
        storage = q + kept_bytes
        state = 4 * sum(t.rows for t in tensors.linear)
        rule = (f"bitsandbytes LLM.int8: {q:,} linear weights x 1 byte + one fp32 scale per output row; "
                f"{tensors.other:,} others (embeddings, LM head, norms, biases) in {kept.name}")
    else:
        storage = sum(-(-t.numel // 2) for t in tensors.linear) + kept_bytes
        blocks = [-(-t.numel // BNB_BLOCK) for t in tensors.linear]
        if double_quant:  # uint8 absmax per block, fp32 absmax per 256 blocks, a 256-entry fp32 code
            state = sum(b + 4 * -(-b // BNB_DOUBLE_BLOCK) + 4 * 256 + 4 for b in blocks)
        else:
            state = 4 * sum(blocks)
        rule = (f"bitsandbytes NF4: {q:,} linear weights x 0.5 byte + one {'uint8 (double-quantized)' if double_quant else 'fp32'} "
                f"absmax per {BNB_BLOCK} weights; {tensors.other:,} others (embeddings, LM head, norms, biases) "
                f"in {kept.name}")
    return WeightBytes(d.short, kept.short, n, q, tensors.other, storage, state, rule)


# ---------------------------------------------------------------- activations


def activation_bytes(layers: int, seq: int, batch: int, hidden: int, heads: int) -> int:
    """Activations one training micro-batch keeps for the backward pass, in bytes for 16-bit activations:
    per layer s·b·h·(34 + 5·a·s/h) (Korthikanti et al. 2022, eq. 1, no recomputation, no parallelism).
    The formula is already in bytes: 34 counts 2-byte values and 1-byte dropout masks together."""
    return int(layers * seq * batch * hidden * (34 + 5 * heads * seq / hidden))


# ---------------------------------------------------------------- the KV cache
# transformers' DynamicSlidingWindowLayer keeps the last `sliding_window - 1` tokens of a sliding layer
# (the token being processed is the window's last); a full-attention layer keeps every token.
_SLIDING_TYPES = ("sliding_attention", "hybrid_sliding", "reference_sliding_attention")


@dataclass(frozen=True)
class KVCacheSize:
    tokens: int
    batch: int
    dtype: str  # torch-style name of the cache's elements
    bytes_per_element: float
    layers: int | None  # decoder layers
    kv_heads: int | None
    head_dim: int | None
    layer_tokens: tuple[int, ...]  # tokens each layer holds after `tokens` tokens
    full_layers: int
    window_layers: int
    window: int | None  # the sliding window (or attention chunk) of the window layers
    per_token_bytes: float | None  # one more token of one sequence, all layers, below any window
    bytes: int | None  # None: unknown (the note says why)
    rule: str  # which rule gave `layer_tokens`
    formula: str
    note: str

    @property
    def known(self) -> bool:
        return self.bytes is not None


def _layer_limits(config: PretrainedConfig, layers: int) -> tuple[list[int | None], str]:
    """Per decoder layer, the most tokens its cache keeps (None: no limit), and where that came from."""
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", True) is False:
        window = None
    chunk = getattr(config, "attention_chunk_size", None)
    types = getattr(config, "layer_types", None)
    if types:
        limits: list[int | None] = []
        for t in list(types)[:layers]:
            if t in _SLIDING_TYPES and window:
                limits.append(int(window) - 1)
            elif t == "chunked_attention" and chunk:
                limits.append(int(chunk) - 1)
            elif t in ("full_attention", "attention") or t in _SLIDING_TYPES:
                limits.append(None)
            else:  # "dummy", "conv", "linear_attention", ...: no K and V of their own
                limits.append(0)
        return limits, "layer_types"
    if window:
        return [int(window) - 1] * layers, "sliding_window"
    return [None] * layers, "full"


def kv_cache_bytes(config: PretrainedConfig, tokens: int, batch: int = 1,
                   dtype: str | Dtype = "bfloat16") -> KVCacheSize:
    """K and V of every decoder layer after `tokens` tokens of `batch` sequences:
    sum over layers of 2 x kv_heads x head_dim x bytes x min(tokens, kept) x batch, where `kept` is
    `sliding_window - 1` for a sliding layer (transformers' DynamicSlidingWindowLayer) and all tokens otherwise.
    Llama-2-7B fp16 at 2,048 tokens: 1 GiB; Mistral-7B bf16 at 32,768 tokens: 32 x 4,095 tokens, 512 MiB."""
    from core.inspect.architecture import config_dims, decoder_layers, detect_family

    if tokens < 0 or batch < 0:
        raise ValueError(f"tokens and batch cannot be negative (got {tokens}, {batch})")
    d = as_dtype(dtype)
    dims = config_dims(config)
    layers, kv, hd = decoder_layers(config), dims["kv_heads"], dims["head_dim"]
    base = dict(tokens=tokens, batch=batch, dtype=d.name, bytes_per_element=d.bytes, layers=layers, kv_heads=kv,
                head_dim=hd)
    kind = detect_family(config).kind
    if kind == "encoder-only":
        return KVCacheSize(**base, layer_tokens=(), full_layers=0, window_layers=0, window=None, per_token_bytes=0,
                           bytes=0, rule="encoder-only: no KV cache", formula="",
                           note="encoder-only: it reads the whole input at once and never generates, "
                                "so it keeps no KV cache")
    if not (layers and kv and hd):
        return KVCacheSize(**base, layer_tokens=(), full_layers=0, window_layers=0, window=None,
                           per_token_bytes=None, bytes=None, rule="unknown", formula="",
                           note="unknown: the config does not give layers, KV heads and head size")
    limits, source = _layer_limits(config, layers)
    held = tuple(tokens if lim is None else min(tokens, lim) for lim in limits)
    per_layer_token = 2 * kv * hd * d.bytes
    total = per_layer_token * sum(held) * batch
    windowed = [lim for lim in limits if lim]
    window = (windowed[0] + 1) if windowed else None
    full = sum(lim is None for lim in limits)
    caching = sum(lim != 0 for lim in limits)
    if windowed:
        rule = (f"{len(windowed)} of {layers} layers use a sliding window of {window:,} tokens ({source}) and keep "
                f"at most {window - 1:,} (transformers' DynamicSlidingWindowLayer)"
                + (f"; {full} keep every token" if full else ""))
    else:
        rule = f"every one of the {caching} attention layers keeps every token"
    if caching < layers:
        rule += f"; {layers - caching} layers keep no K and V of their own"
    groups = [f"{n} layers × {t:,} tokens" for t, n in sorted(Counter(h for h in held if h).items(), reverse=True)]
    held_text = groups[0] if len(groups) == 1 else "(" + " + ".join(groups) + ")" if groups else "0 tokens"
    formula = (f"2 (K and V) × {kv} KV heads × {hd} head_dim × {d.bytes:g} bytes ({d.name}) × {held_text} × "
               f"batch {batch} = {total:,.0f} bytes")
    notes = []
    if kind == "encoder-decoder":
        notes.append("decoder self-attention only; cross-attention also caches K and V of every encoder token once")
    if getattr(config, "kv_lora_rank", None):
        notes.append("this model compresses K and V (multi-head latent attention): the real cache is smaller")
    return KVCacheSize(**base, layer_tokens=held, full_layers=full, window_layers=len(windowed), window=window,
                       per_token_bytes=per_layer_token * caching, bytes=int(round(total)), rule=rule,
                       formula=formula, note="; ".join(notes))
