"""Rotary position embeddings (RoPE, Su et al. 2021): the one home for the base theta, the inverse
frequencies and the rotation itself. Used by the architecture diagram, the embeddings page and the
step-by-step forward pass.

    inv_freq_i = theta^(-2i/d)                 i = 0 .. d/2 - 1, d = rotating dims of a head
    angle(t, i) = t * inv_freq_i
    q'_t = q_t * cos(t w) + rotate_half(q_t) * sin(t w)   (HF pairs dim i with i + d/2)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from core.inspect.architecture import config_dims

DEFAULT_THETA = 10_000.0  # transformers' default when a config names none


def rope_parameters(config: Any) -> dict:
    """transformers 5 keeps RoPE settings in `rope_parameters` (a dict, possibly one per layer type)."""
    params = getattr(config, "rope_parameters", None)
    return params if isinstance(params, dict) else {}


def rope_theta(config: Any) -> float | None:
    """The RoPE base: `rope_parameters["rope_theta"]` in transformers 5 (or the first per-layer-type dict
    that has one, e.g. Gemma 3's full_attention / sliding_attention), `rope_theta` in older configs;
    None when the config names none."""
    params = rope_parameters(config)
    if "rope_theta" in params:
        return float(params["rope_theta"])
    for sub in params.values():
        if isinstance(sub, dict) and "rope_theta" in sub:
            return float(sub["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    return float(theta) if isinstance(theta, (int, float)) else None


def rope_type(config: Any) -> str:
    return str(rope_parameters(config).get("rope_type", "default"))


def rope_dim(config: Any) -> int:
    """Dimensions of a head that rotate (all of them unless `partial_rotary_factor` < 1)."""
    head_dim = config_dims(config)["head_dim"]
    factor = rope_parameters(config).get("partial_rotary_factor") or getattr(config, "partial_rotary_factor", None) \
        or 1.0
    return int(head_dim * factor)


def inverse_frequencies(theta: float, dim: int) -> torch.Tensor:
    """`[dim / 2]` float32 frequencies theta^(-2i/dim), computed as transformers' default rotary embedding
    computes them (so they match its `inv_freq` bit for bit)."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float) / dim))


def rope_inv_freq(config: Any) -> torch.Tensor:
    """The original RoPE's `[rope_dim / 2]` inverse frequencies for a Hugging Face config."""
    return inverse_frequencies(rope_theta(config) or DEFAULT_THETA, rope_dim(config))


@dataclass
class RopeTables:
    """Rotary position tables for positions 0..seq-1 (d = head_dim).

    inv_freq  [d/2]       rotation speed of each pair of dims: 1 / theta^(2i/d)
    angles    [seq, d]    t * inv_freq_i, each angle used for the two halves of the head (HF's rotate_half layout)
    cos, sin  [seq, d]    cos/sin of the angles (times the attention scaling of scaled RoPE variants)
    """

    rope_type: str
    theta: float | None
    inv_freq: torch.Tensor
    angles: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor


def rope_tables(config: Any, seq_len: int, device: torch.device | str = "cpu",
                rotary: torch.nn.Module | None = None) -> RopeTables:
    """RoPE computed from the config (default type); scaled variants (llama3, yarn, ...) reshape inv_freq,
    so for those the model's own `inv_freq` and attention scaling are read from its `rotary` module.
    Angles, cos and sin are computed on `device`, as the model does (cos on a GPU may differ by an ulp);
    inv_freq stays on the CPU."""
    kind = rope_type(config)
    scaling = 1.0
    if kind == "default" or rotary is None:
        inv_freq = rope_inv_freq(config)
    else:
        inv_freq = rotary.inv_freq.detach().float().cpu()
        scaling = float(rotary.attention_scaling)
    positions = torch.arange(seq_len, dtype=torch.float, device=device)
    freqs = positions[:, None] * inv_freq.to(device)[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    return RopeTables(kind, rope_theta(config), inv_freq, angles, angles.cos() * scaling, angles.sin() * scaling)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+d/2}) by the angle of its position.  [heads, seq, d] -> [heads, seq, d]."""
    return x * cos[None] + rotate_half(x) * sin[None]
