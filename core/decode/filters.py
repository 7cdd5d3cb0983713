"""Logit filters: how a sampler reshapes the next-token distribution before it draws.

Each function takes logits `[rows, vocab]` and returns new logits of the same shape; a cut token gets
-inf, so that softmax gives it probability 0. They follow the papers and agree with transformers'
logits processors (tests/test_decoding.py checks them on random logits):

- temperature (Ackley et al. 1985): p ∝ exp(z / T)
- top-k (Fan et al. 2018): keep the k largest logits
- top-p / nucleus (Holtzman et al. 2020): keep the smallest set of most likely tokens whose mass reaches p
- min-p (Nguyen et al. 2024): keep tokens with p ≥ min_p · p_max
- typical (Meister et al. 2023): keep tokens whose surprisal −log p is closest to the entropy H, up to mass τ
- repetition penalty (Keskar et al. 2019, CTRL): divide a seen token's positive logit by θ, multiply a negative one
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CUT = -float("inf")


def temperature(logits: torch.Tensor, t: float) -> torch.Tensor:
    """z / T: T < 1 sharpens the distribution, T > 1 flattens it."""
    return logits / t


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest logits of each row."""
    k = min(int(k), logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # [rows, 1]
    return logits.masked_fill(logits < kth, CUT)


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: sorted by probability, keep a token while the mass of the tokens above it is below p."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    mass_above = probs.cumsum(-1) - probs  # exclusive cumulative sum: the top token always stays
    cut_sorted = mass_above >= p
    cut = cut_sorted.scatter(-1, order, cut_sorted)
    return logits.masked_fill(cut, CUT)


def min_p(logits: torch.Tensor, m: float) -> torch.Tensor:
    """Keep tokens at least m times as likely as the most likely token."""
    probs = logits.softmax(-1)
    threshold = m * probs.max(-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, CUT)


def typical(logits: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling: order tokens by |−log p − H| and keep them up to `mass` of probability."""
    logp = logits.log_softmax(-1)
    probs = logp.exp()
    entropy = -(probs * logp).nansum(-1, keepdim=True)  # H = −Σ p log p
    distance = (-logp - entropy).abs()
    sorted_distance, order = torch.sort(distance, dim=-1)
    sorted_probs = probs.gather(-1, order)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    cut_sorted = mass_before >= mass
    # tokens at exactly the same distance as the last kept one stay too (as transformers does)
    last_kept = (~cut_sorted).sum(-1, keepdim=True) - 1
    cut_sorted = sorted_distance > sorted_distance.gather(-1, last_kept)
    cut = cut_sorted.scatter(-1, order, cut_sorted)
    return logits.masked_fill(cut, CUT)


def repetition_penalty(logits: torch.Tensor, seen_ids: torch.Tensor, theta: float) -> torch.Tensor:
    """CTRL's penalty on every token already in the sequence (prompt included): z/θ if z > 0, else z·θ.

    seen_ids [rows, seq] (a token seen twice is penalised once).
    """
    seen = logits.gather(-1, seen_ids)
    penalised = torch.where(seen < 0, seen * theta, seen / theta)
    return logits.scatter(-1, seen_ids, penalised)


@dataclass(frozen=True)
class Filters:
    """One row's sampling settings; None (or 1.0 for the penalty) leaves that filter out."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical: float | None = None
    repetition_penalty: float | None = None

    def check(self) -> None:
        """Raise ValueError with a sentence a user can act on."""
        t, k, p, m, ty, r = (self.temperature, self.top_k, self.top_p, self.min_p, self.typical,
                             self.repetition_penalty)
        if t is not None and not (math.isfinite(t) and t > 0):
            raise ValueError(f"temperature must be above 0 (got {t}); for the single most likely token use greedy")
        if k is not None and k < 1:
            raise ValueError(f"top-k must be at least 1 (got {k}); top-k 0 would cut every token")
        if p is not None and not (0 < p <= 1):
            raise ValueError(f"top-p must lie in (0, 1] (got {p}); 1 keeps every token")
        if m is not None and not (0 <= m <= 1):
            raise ValueError(f"min-p must lie in [0, 1] (got {m})")
        if ty is not None and not (0 < ty < 1):
            raise ValueError(f"typical mass must lie in (0, 1) (got {ty})")
        if r is not None and not (math.isfinite(r) and r > 0):
            raise ValueError(f"repetition penalty must be above 0 (got {r}); 1 means no penalty")

    def describe(self) -> str:
        parts = [f"T={self.temperature:g}" if self.temperature is not None else "",
                 f"top-k={self.top_k}" if self.top_k is not None else "",
                 f"top-p={self.top_p:g}" if self.top_p is not None else "",
                 f"min-p={self.min_p:g}" if self.min_p is not None else "",
                 f"typical={self.typical:g}" if self.typical is not None else "",
                 f"rep. penalty={self.repetition_penalty:g}" if self.repetition_penalty not in (None, 1.0) else ""]
        return ", ".join(p for p in parts if p) or "no filter"


def apply(logits: torch.Tensor, f: Filters, seen_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The filters in transformers' order: repetition penalty, temperature, top-k, top-p, min-p, typical."""
    if f.repetition_penalty not in (None, 1.0) and seen_ids is not None:
        logits = repetition_penalty(logits, seen_ids, f.repetition_penalty)
    if f.temperature is not None and f.temperature != 1.0:
        logits = temperature(logits, f.temperature)
    if f.top_k is not None:
        logits = top_k(logits, f.top_k)
    if f.top_p is not None and f.top_p < 1.0:
        logits = top_p(logits, f.top_p)
    if f.min_p is not None and f.min_p > 0:
        logits = min_p(logits, f.min_p)
    if f.typical is not None:
        logits = typical(logits, f.typical)
    return logits
