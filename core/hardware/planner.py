"""Memory and speed planner: will a model fit on an accelerator, and how fast can it go at best?

Everything is arithmetic on the config (parameters counted on the meta device, tied embeddings once) and
the datasheet figures of data/accelerators.csv:

    weights      = parameters x bytes per parameter
    KV cache     = 2 (K and V) x layers x KV heads x head_dim x seq x batch x bytes per element
    prefill      = compute bound:    peak FLOP/s / (2 x parameters FLOPs per token)
    decode       = bandwidth bound:  each step reads all weights and the whole KV cache once and yields
                                      one token per sequence in the batch
    training     = weights + gradients + Adam states: 16 bytes per parameter in mixed precision
                   (bf16 weights 2 + bf16 gradients 2 + fp32 master copy 4 + Adam m and v 4 + 4)
    train time   = 6 N D FLOPs / (peak x MFU x GPUs)

Rooflines are upper bounds: real kernels reach a fraction of the peak (the MFU), and activations, the CUDA
context and fragmentation take memory the planner does not count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from transformers import PretrainedConfig

from core.hardware.gpus import Accelerator
from core.inspect.architecture import config_dims, decoder_layers, kv_cache_per_token

# Bytes per weight for each storage format. 4-bit also stores a scale per block of 64 weights (NF4 adds
# ~0.5 bit per weight with bitsandbytes' default block size); the planner counts the bare 4 bits.
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "4bit": 0.5}
# Activations (and so the KV cache) stay in 16 bits when the weights are quantized.
KV_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "bfloat16", "4bit": "bfloat16"}
ADAM_MIXED_BYTES = 16  # per trained parameter
MAX_SEQ = 10_000_000
MAX_BATCH = 100_000


@dataclass(frozen=True)
class Plan:
    model: str
    gpu: str
    dtype: str
    seq: int
    batch: int
    parameters: int
    tied_embeddings: bool
    bytes_per_parameter: float
    weights_bytes: int
    weights_bytes_by_dtype: dict[str, int]
    kv_cache_bytes: int
    kv_bytes_per_token: float  # per sequence, all layers
    total_bytes: int
    gpu_memory_bytes: int
    fits: bool
    gpus_needed: int
    peak_flops: float
    peak_label: str
    bandwidth_bytes_per_s: float
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


def kv_bytes_per_token(config: PretrainedConfig, dtype: str = "bf16") -> float:
    """2 x layers x KV heads x head_dim x bytes: what one more token of one sequence adds to the cache."""
    info = kv_cache_per_token(config, KV_DTYPE[dtype])
    return float(info["bytes"] or 0)  # encoder-only models keep no cache


def kv_cache_bytes(config: PretrainedConfig, seq: int, batch: int, dtype: str = "bf16") -> int:
    """Llama-2-7B (32 layers, 32 KV heads, head_dim 128), fp16, 2048 tokens, batch 1: 1,073,741,824 bytes."""
    check_shape(seq, batch)
    return int(kv_bytes_per_token(config, dtype) * seq * batch)


def weights_bytes(parameters: int, dtype: str) -> int:
    if dtype not in WEIGHT_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(WEIGHT_BYTES)}")
    return int(parameters * WEIGHT_BYTES[dtype])


def parameter_count(config_or_model: Any) -> tuple[int, bool]:
    """(parameters, tied) from the parameter accountant: a config is built on the meta device."""
    from core.models.params import count_parameters

    counted = count_parameters(config_or_model)
    return int(counted["total"]), bool(counted["tied_embeddings"])


def plan(config: PretrainedConfig, gpu: Accelerator, dtype: str = "bf16", seq: int = 2048, batch: int = 1,
         *, parameters: int | None = None, tied: bool | None = None, name: str = "") -> Plan:
    """The whole plan for serving `config` on one or more `gpu`s."""
    check_shape(seq, batch)
    if dtype not in WEIGHT_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(WEIGHT_BYTES)}")
    if parameters is None:
        parameters, tied = parameter_count(config)
    weights = weights_bytes(parameters, dtype)
    per_token = kv_bytes_per_token(config, dtype)
    kv = int(per_token * seq * batch)
    total = weights + kv
    # Weight-only quantization (bitsandbytes, GGUF) dequantizes to 16 bits before each matmul: the 16-bit peak.
    peak, peak_label = gpu.peak_flops("bf16"), gpu.peak_source("bf16")
    if dtype == "fp32":  # no fp32 tensor figure in the table: plain fp32 runs at a small fraction of it
        peak_label += " (fp32 weights would run slower: the table has no fp32 tensor figure)"
    elif dtype in ("int8", "4bit"):
        peak_label += " (weight-only quantization: weights are dequantized to 16 bits for the matmul)"
    flops_per_token = 2 * parameters
    prefill = peak / flops_per_token
    # One decode step reads every weight once plus the cache of every sequence (at its full length).
    step_bytes = weights + kv
    memory_bound = batch * gpu.bandwidth_bytes_per_s / step_bytes
    compute_bound = peak / flops_per_token
    return Plan(
        model=name or getattr(config, "name_or_path", "") or getattr(config, "model_type", "model"),
        gpu=gpu.name, dtype=dtype, seq=seq, batch=batch, parameters=parameters, tied_embeddings=bool(tied),
        bytes_per_parameter=WEIGHT_BYTES[dtype], weights_bytes=weights,
        weights_bytes_by_dtype={d: weights_bytes(parameters, d) for d in WEIGHT_BYTES},
        kv_cache_bytes=kv, kv_bytes_per_token=per_token, total_bytes=total,
        gpu_memory_bytes=gpu.memory_bytes, fits=total <= gpu.memory_bytes,
        gpus_needed=max(1, math.ceil(total / gpu.memory_bytes)),
        peak_flops=peak, peak_label=peak_label, bandwidth_bytes_per_s=gpu.bandwidth_bytes_per_s,
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
    total_bytes: int


def training_memory(parameters: int, lora_trainable: int | None = None, base_dtype: str = "bf16") -> TrainingMemory:
    """Full training: 16 bytes per parameter. LoRA: the frozen base in `base_dtype` + 16 bytes per adapter
    parameter. Activations come on top (they grow with batch x sequence) and are not counted here."""
    if lora_trainable is None:
        return TrainingMemory("full (mixed precision, Adam)", parameters, weights_bytes=2 * parameters,
                              gradients_bytes=2 * parameters, optimizer_bytes=12 * parameters,
                              total_bytes=ADAM_MIXED_BYTES * parameters)
    base = weights_bytes(parameters, base_dtype)
    w, g, o = 2 * lora_trainable, 2 * lora_trainable, 12 * lora_trainable
    return TrainingMemory("LoRA", lora_trainable, weights_bytes=base + w, gradients_bytes=g, optimizer_bytes=o,
                          total_bytes=base + w + g + o)


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
