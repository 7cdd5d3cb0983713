"""How much memory a model's weights need, and how much this machine has: the check before a load."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import PretrainedConfig

if TYPE_CHECKING:
    from core.models.loading import ModelSpec


def bytes_per_parameter(dtype: str, quantization: str) -> float:
    if quantization == "8bit":
        return 1.0
    if quantization == "4bit":
        return 0.5
    return torch.finfo(getattr(torch, dtype)).bits / 8


def estimate_weight_bytes(config: PretrainedConfig, dtype: str = "float32", quantization: str = "none") -> int:
    """Weights only, counted on the meta device (no memory is allocated)."""
    from core.models.params import count_parameters

    return int(count_parameters(config)["total"] * bytes_per_parameter(dtype, quantization))


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
