"""Memory and speed planner: will a model fit on an accelerator, and how fast can it go at best?

Everything is arithmetic on the config (tensors counted on the meta device, tied embeddings once) and
the datasheet figures of data/accelerators.csv; the byte counts come from core/models/memory.py:

    weights      = per tensor: 16/32-bit formats store every parameter; 8-bit and NF4 (bitsandbytes)
                   quantize the linear layers only, plus their scales, and keep embeddings, LM head and
                   norms in 16 bits
    KV cache     = sum over layers of 2 (K and V) x KV heads x head_dim x tokens held x batch x bytes;
                   a sliding-window layer holds at most window - 1 tokens (transformers' cache)
    prefill      = compute bound:    peak FLOP/s / (2 x parameters + 4 x layers x keys x d_attn FLOPs per token)
    decode       = bandwidth bound:  each step reads all weights and the whole KV cache once and yields
                                      one token per sequence in the batch
    training     = weights + gradients + Adam states: 16 bytes per parameter in mixed precision
                   (bf16 weights 2 + bf16 gradients 2 + fp32 master copy 4 + Adam m and v 4 + 4)
                   + activations (Korthikanti et al. 2022), on as many GPUs as that needs
    train time   = 6 N D FLOPs / (peak x MFU x GPUs)

Rooflines are upper bounds: real kernels reach a fraction of the peak (the MFU), and the CUDA context
and fragmentation take memory the planner does not count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import PretrainedConfig

from core.dtypes import as_dtype
from core.hardware.gpus import Accelerator
from core.inspect.architecture import config_dims, decoder_layers
from core.models import memory

# The storage formats the planner offers, with their nominal bytes per weight (the per-tensor count,
# scales and kept 16-bit tensors included, is `Plan.weights_bytes`).
WEIGHT_BYTES = {d: as_dtype(d).bytes for d in ("fp32", "bf16", "fp16", "int8", "4bit")}
# Activations (and so the KV cache) stay in 16 bits when the weights are quantized; so do the tensors
# bitsandbytes leaves alone (embeddings, LM head, norms).
KV_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "bfloat16", "4bit": "bfloat16"}
ADAM_MIXED_BYTES = 16  # per trained parameter
MAX_SEQ = 10_000_000
MAX_BATCH = 100_000
# Total memory `nvidia-smi` reports (MiB) for the cards whose figure we have seen printed; the rest read the
# datasheet's "80 GB" as GiB, which is how HBM and GDDR are sized (the driver reports a little less).
REPORTED_MIB = {"T4": 15_360, "L4": 23_034, "H100 SXM": 81_559, "H200": 143_771, "B200": 183_359}


@dataclass(frozen=True)
class Plan:
    model: str
    gpu: str
    dtype: str
    seq: int
    batch: int
    parameters: int
    tied_embeddings: bool
    bytes_per_parameter: float  # weights_bytes / parameters, scales and 16-bit tensors included
    weights_bytes: int
    weights_state_bytes: int  # of which quantization scales (8-bit, NF4)
    weights_rule: str
    weights_bytes_by_dtype: dict[str, int]
    kv_cache_bytes: int | None  # None: unknown (the config lacks the dimensions)
    kv_bytes_per_token: float | None  # per sequence, all layers, below any window
    kv_rule: str
    total_bytes: int
    gpu_memory_bytes: int
    gpu_memory_source: str
    fits: bool
    gpus_needed: int
    peak_flops: float
    peak_label: str
    bandwidth_bytes_per_s: float
    weight_flops_per_token: float  # 2 N
    attention_flops_per_token: float  # 4 x layers x keys x d_attn at the end of a `seq`-token prefill
    prefill_tokens_per_s: float
    decode_tokens_per_s: float  # all sequences of the batch together
    decode_bound: str  # "memory bandwidth" | "compute"
    decode_bytes_per_step: int
    ridge_flops_per_byte: float  # arithmetic intensity where the roofline bends

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_shape(seq: int, batch: int) -> None:
    if not isinstance(seq, int) or seq < 1:
        raise ValueError(f"sequence length must be at least 1 token, got {seq}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be at least 1 sequence, got {batch}")
    if seq > MAX_SEQ or batch > MAX_BATCH:
        raise ValueError(f"sequence length ≤ {MAX_SEQ:,} and batch ≤ {MAX_BATCH:,}, please")


def _check_dtype(dtype: str) -> None:
    if dtype not in WEIGHT_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(WEIGHT_BYTES)}")


def kv_cache(config: PretrainedConfig, seq: int, batch: int, dtype: str = "bf16") -> memory.KVCacheSize:
    """The cache a `dtype` model holds after `seq` tokens of `batch` sequences (windows honoured)."""
    check_shape(seq, batch)
    _check_dtype(dtype)
    return memory.kv_cache_bytes(config, seq, batch, KV_DTYPE[dtype])


def kv_cache_bytes(config: PretrainedConfig, seq: int, batch: int, dtype: str = "bf16") -> int | None:
    """Llama-2-7B (32 layers, 32 KV heads, head_dim 128), fp16, 2048 tokens, batch 1: 1,073,741,824 bytes."""
    return kv_cache(config, seq, batch, dtype).bytes


def weights(config: PretrainedConfig, dtype: str) -> memory.WeightBytes:
    """Per-tensor weight bytes of `config` stored as `dtype` (quantized formats keep the rest in bf16)."""
    _check_dtype(dtype)
    return memory.weight_bytes(memory.config_weight_tensors(config), dtype, kept_dtype="bfloat16")


def parameter_count(config_or_model: Any) -> tuple[int, bool]:
    """(parameters, tied) from the parameter accountant: a config is built on the meta device."""
    from core.models.params import count_parameters

    counted = count_parameters(config_or_model)
    return int(counted["total"]), bool(counted["tied_embeddings"])


def gpu_memory(gpu: Accelerator) -> tuple[int, str]:
    """(bytes, where the figure comes from): this machine's own report when it holds this card, else the
    total nvidia-smi prints for it, else the datasheet's GB read as GiB."""
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            if gpu.name.split()[0].lower() in props.name.lower() and abs(props.total_memory / 2**30 - gpu.memory_gb) < 0.1 * gpu.memory_gb:
                return int(props.total_memory), f"reported by this machine's {props.name} (torch.cuda)"
    if gpu.name in REPORTED_MIB:
        mib = REPORTED_MIB[gpu.name]
        return mib * 2**20, f"{mib:,} MiB, the total nvidia-smi reports for the {gpu.name}"
    return int(gpu.memory_gb * 2**30), (f"datasheet {gpu.memory_gb:g} GB read as {gpu.memory_gb:g} GiB (memory chips "
                                        "are sized in binary units; the driver reports slightly less)")


def attention_flops_per_token(config: PretrainedConfig, seq: int) -> float:
    """Q·K^T and the weighted sum of V for the last token of a `seq`-token prefill: 2 matmuls x 2 FLOPs x
    keys x d_attn per layer, keys = min(seq, window) on a sliding layer. A plain kernel computes every
    query against every key; a causal kernel that skips the masked half does half of it on average."""
    d = config_dims(config)
    layers = decoder_layers(config) or d["layers"] or 0
    d_attn = (d["heads"] or 0) * (d["head_dim"] or 0)
    held = memory.kv_cache_bytes(config, seq, 1).layer_tokens or (seq,) * layers
    keys = [min(seq, t + 1) if t < seq else seq for t in held]  # a window layer attends to window keys
    return float(sum(4 * k * d_attn for k in keys))


def plan(config: PretrainedConfig, gpu: Accelerator, dtype: str = "bf16", seq: int = 2048, batch: int = 1,
         *, parameters: int | None = None, tied: bool | None = None, name: str = "") -> Plan:
    """The whole plan for serving `config` on one or more `gpu`s."""
    check_shape(seq, batch)
    _check_dtype(dtype)
    if parameters is None:
        parameters, tied = parameter_count(config)
    w = weights(config, dtype)
    kv = kv_cache(config, seq, batch, dtype)
    total = w.bytes + (kv.bytes or 0)
    gpu_bytes, gpu_source = gpu_memory(gpu)
    # Weight-only quantization (bitsandbytes, GGUF) dequantizes to 16 bits before each matmul: the 16-bit peak.
    peak, peak_label = gpu.peak_flops("bf16"), gpu.peak_source("bf16")
    if dtype == "fp32":  # no fp32 tensor figure in the table: plain fp32 runs at a small fraction of it
        peak_label += " (fp32 weights would run slower: the table has no fp32 tensor figure)"
    elif dtype in ("int8", "4bit"):
        peak_label += " (weight-only quantization: weights are dequantized to 16 bits for the matmul)"
    weight_flops = 2.0 * parameters
    attention = attention_flops_per_token(config, seq)
    prefill = peak / (weight_flops + attention)
    # One decode step reads every weight once plus the cache of every sequence (at its full length).
    step_bytes = total
    memory_bound = batch * gpu.bandwidth_bytes_per_s / step_bytes
    compute_bound = peak / (weight_flops + attention)
    return Plan(
        model=name or getattr(config, "name_or_path", "") or getattr(config, "model_type", "model"),
        gpu=gpu.name, dtype=dtype, seq=seq, batch=batch, parameters=parameters, tied_embeddings=bool(tied),
        bytes_per_parameter=w.bytes / max(1, w.parameters), weights_bytes=w.bytes, weights_state_bytes=w.state_bytes,
        weights_rule=w.rule, weights_bytes_by_dtype={d: weights(config, d).bytes for d in WEIGHT_BYTES},
        kv_cache_bytes=kv.bytes, kv_bytes_per_token=kv.per_token_bytes, kv_rule=kv.rule if kv.known else kv.note,
        total_bytes=total, gpu_memory_bytes=gpu_bytes, gpu_memory_source=gpu_source, fits=total <= gpu_bytes,
        gpus_needed=max(1, math.ceil(total / gpu_bytes)),
        peak_flops=peak, peak_label=peak_label, bandwidth_bytes_per_s=gpu.bandwidth_bytes_per_s,
        weight_flops_per_token=weight_flops, attention_flops_per_token=attention,
        prefill_tokens_per_s=prefill, decode_tokens_per_s=min(memory_bound, compute_bound),
        decode_bound="memory bandwidth" if memory_bound <= compute_bound else "compute",
        decode_bytes_per_step=step_bytes, ridge_flops_per_byte=peak / gpu.bandwidth_bytes_per_s)


# ---------------------------------------------------------------- training


def lora_parameters(config: PretrainedConfig, rank: int = 8,
                    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")) -> int:
    """Trainable parameters LoRA adds: r x (d_in + d_out) per adapted matrix per layer."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be at least 1, got {rank}")
    d = config_dims(config)
    hidden, heads, kv, hd = d["hidden_size"], d["heads"], d["kv_heads"], d["head_dim"]
    layers = decoder_layers(config) or d["layers"]
    if not (hidden and heads and hd and layers):
        raise ValueError("the config does not give hidden size, heads, head_dim and layers")
    shapes = {"q_proj": (hidden, heads * hd), "k_proj": (hidden, kv * hd), "v_proj": (hidden, kv * hd),
              "o_proj": (heads * hd, hidden)}
    if d["intermediate_size"]:
        inter = d["intermediate_size"]
        shapes.update({"gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)})
    unknown = [t for t in targets if t not in shapes]
    if unknown:
        raise ValueError(f"unknown LoRA targets {unknown}; choose from {', '.join(shapes)}")
    return layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)


@dataclass(frozen=True)
class TrainingMemory:
    method: str  # "full (mixed precision, Adam)" | "LoRA"
    trainable: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int  # Adam m and v (and the fp32 master copy for full training)
    activations_bytes: int  # one micro-batch of `seq` tokens x `batch` (0 when no shape was given)
    total_bytes: int
    activations_rule: str = ""


def training_memory(parameters: int, lora_trainable: int | None = None, base_dtype: str = "bf16", *,
                    config: PretrainedConfig | None = None, seq: int = 0, batch: int = 0) -> TrainingMemory:
    """Full training: 16 bytes per parameter. LoRA: the frozen base in `base_dtype` (per tensor when the
    config is given) + 16 bytes per adapter parameter. With a config, `seq` and `batch`, the activations
    of one micro-batch in 16 bits (Korthikanti et al. 2022, no recomputation) are added."""
    acts, rule = 0, ""
    if config is not None and seq and batch:
        d = config_dims(config)
        layers = decoder_layers(config) or d["layers"]
        if d["hidden_size"] and d["heads"] and layers:
            acts = memory.activation_bytes(layers, seq, batch, d["hidden_size"], d["heads"])
            rule = (f"{layers} layers × s·b·h·(34 + 5·a·s/h) bytes with s={seq:,}, b={batch:,}, "
                    f"h={d['hidden_size']:,}, a={d['heads']} (16-bit activations, no recomputation)")
    if lora_trainable is None:
        return TrainingMemory("full (mixed precision, Adam)", parameters, weights_bytes=2 * parameters,
                              gradients_bytes=2 * parameters, optimizer_bytes=12 * parameters,
                              activations_bytes=acts, total_bytes=ADAM_MIXED_BYTES * parameters + acts,
                              activations_rule=rule)
    _check_dtype(base_dtype)
    base = weights(config, base_dtype).bytes if config is not None else int(parameters * WEIGHT_BYTES[base_dtype])
    w, g, o = 2 * lora_trainable, 2 * lora_trainable, 12 * lora_trainable
    return TrainingMemory("LoRA", lora_trainable, weights_bytes=base + w, gradients_bytes=g, optimizer_bytes=o,
                          activations_bytes=acts, total_bytes=base + w + g + o + acts, activations_rule=rule)


def training_gpus(train: TrainingMemory, gpu: Accelerator) -> int:
    """GPUs whose memory holds the training state (data parallel with the state sharded, ZeRO-3 / FSDP)."""
    return max(1, math.ceil(train.total_bytes / gpu_memory(gpu)[0]))


def training_flops(parameters: float, tokens: float) -> float:
    """C = 6 N D: 2 N for the forward pass and 4 N for the backward pass, per token."""
    return 6.0 * parameters * tokens


def training_seconds(parameters: float, tokens: float, gpu: Accelerator, mfu: float = 0.4, gpus: int = 1) -> float:
    """Wall time at a model FLOPs utilisation `mfu` (0.3-0.5 is typical of large runs)."""
    if not 0 < mfu <= 1:
        raise ValueError(f"MFU must be in (0, 1], got {mfu}")
    if gpus < 1:
        raise ValueError(f"GPUs must be at least 1, got {gpus}")
    if tokens <= 0:
        raise ValueError(f"training tokens must be positive, got {tokens}")
    return training_flops(parameters, tokens) / (gpu.peak_flops("bf16") * mfu * gpus)
