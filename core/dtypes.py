"""One dtype type for every byte count in the lab: weights, the KV cache, the planner's formats.

The lab used to spell the same thing four ways ("bf16", "bfloat16", "4bit", "int4"); `as_dtype` reads
any of them (and a `torch.dtype`) and returns one `Dtype`. `name` is torch's spelling where torch has
one; `short` is the planner's label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dtype:
    name: str  # "float32", "bfloat16", "float16", "float8", "int8", "int4"
    short: str  # "fp32", "bf16", "fp16", "fp8", "int8", "4bit"
    bits: int  # bits per stored element
    # Weight-only quantization (bitsandbytes LLM.int8 / NF4): only the linear layers are stored this way,
    # the rest stays in 16 bits and activations (so the KV cache of a quantized model) stay 16-bit.
    weight_only: bool = False

    @property
    def bytes(self) -> float:
        return self.bits / 8

    def __str__(self) -> str:
        return self.name


DTYPES = (Dtype("float32", "fp32", 32), Dtype("bfloat16", "bf16", 16), Dtype("float16", "fp16", 16),
          Dtype("float8", "fp8", 8), Dtype("int8", "int8", 8, weight_only=True),
          Dtype("int4", "4bit", 4, weight_only=True))
_ALIASES = {"float": "float32", "half": "float16", "8bit": "int8", "nf4": "int4", "fp4": "int4", "4-bit": "int4",
            "float8_e4m3fn": "float8", "float8_e5m2": "float8", "uint8": "int8"}
_BY_NAME = {**{d.name: d for d in DTYPES}, **{d.short: d for d in DTYPES},
            **{alias: next(d for d in DTYPES if d.name == name) for alias, name in _ALIASES.items()}}

# Bytes per element by torch-style name (the Architecture page's KV element types).
BYTES_PER_ELEMENT = {d.name: d.bytes for d in DTYPES}


def as_dtype(value: str | torch.dtype | Dtype) -> Dtype:
    """Any spelling -> the one Dtype; ValueError lists the known names."""
    if isinstance(value, Dtype):
        return value
    key = str(value).replace("torch.", "").strip().lower()
    if key not in _BY_NAME:
        raise ValueError(f"unknown dtype {value!r}; choose one of {', '.join(d.name for d in DTYPES)} "
                         f"(or {', '.join(d.short for d in DTYPES)})")
    return _BY_NAME[key]
