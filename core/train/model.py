"""The lab's own small GPT: a decoder-only transformer in one file, with the switches a teacher wants to flip.

Shaped after nanoGPT's model.py (Karpathy 2022), with each design choice of the last years as a switch:

    norm_position   "pre"  x + f(norm(x))              (GPT-2, Llama: trains without warmup tricks)
                    "post" norm(x + f(x))              (the original Transformer, Vaswani et al. 2017)
    norm            "layernorm" (Ba et al. 2016) | "rmsnorm" (Zhang & Sennrich 2019, Llama)
    position        "learned" absolute embeddings (GPT-2) | "rope" rotary queries/keys (Su et al. 2021)
    mlp             "gelu"  W2 gelu(W1 x)             (GPT-2, width 4d)
                    "swiglu" W2 (silu(Wg x) * (Wu x))   (Shazeer 2020, Llama; width ~8d/3 so params match)
    tie_weights     the output head reuses the token embedding matrix (Press & Wolf 2017)
    init            "normal"  every weight N(0, 0.02)
                    "scaled"  N(0, 0.02), residual output projections N(0, 0.02/sqrt(2 n_layer)) (GPT-2)
                    "bad"     every weight N(0, 1): logits start huge, the first loss is far above ln(vocab)
    dropout, bias

Two switch settings map onto stock transformers classes (see core.train.export): GPT-2 style and Llama style.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.inspect.rope import inverse_frequencies, rotate_half

NORM_POSITIONS = ("pre", "post")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
MLPS = ("gelu", "swiglu")
INITS = ("normal", "scaled", "bad")


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    norm_position: str = "pre"
    norm: str = "layernorm"
    position: str = "learned"
    mlp: str = "gelu"
    tie_weights: bool = True
    init: str = "scaled"
    norm_eps: float = 1e-5
    rope_theta: float = 10_000.0

    def validate(self) -> None:
        """ValueError with a readable message for a configuration that cannot be built."""
        for name, allowed in (("norm_position", NORM_POSITIONS), ("norm", NORMS), ("position", POSITIONS),
                              ("mlp", MLPS), ("init", INITS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"the width n_embd={self.n_embd} must be divisible by the number of heads "
                             f"n_head={self.n_head} (each head gets n_embd / n_head dimensions)")
        if self.position == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"RoPE rotates pairs of dimensions: the head size {self.n_embd // self.n_head} "
                             "must be even")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        """4d for GELU; for SwiGLU 2/3 of that (three matrices instead of two), rounded up to a multiple of 8."""
        if self.mlp == "gelu":
            return 4 * self.n_embd
        return 8 * math.ceil(8 * self.n_embd / 3 / 8)

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * g, computed in float32 like Llama's."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


def rope_cos_sin(config: GPTConfig, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`[seq, head_dim]` cos and sin of t * theta_i, theta_i = base^(-2i/d), each angle used for both halves."""
    d = config.head_dim
    inv_freq = inverse_frequencies(config.rope_theta, d).to(device)
    freqs = torch.arange(seq_len, dtype=torch.float, device=device)[:, None] * inv_freq[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos(), angles.sin()


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """[batch, seq, n_embd] -> [batch, seq, n_embd]"""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # [B, h, T, d]
        if rope is not None:
            cos, sin = rope
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        # softmax(q k^T / sqrt(d) + causal mask) v, fused
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        hidden = config.mlp_hidden
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        if self.swiglu:
            self.c_gate = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            h = F.silu(self.c_gate(x)) * self.c_fc(x)
        else:
            h = F.gelu(self.c_fc(x))  # exact erf GELU (GPT-2 used the tanh approximation)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.pre = config.norm_position == "pre"
        self.ln_1, self.attn = make_norm(config), CausalSelfAttention(config)
        self.ln_2, self.mlp = make_norm(config), MLP(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        if self.pre:
            x = x + self.attn(self.ln_1(x), rope)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, rope))
        return self.ln_2(x + self.mlp(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, generator: torch.Generator | None = None):
        super().__init__()
        config.validate()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.position == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        # post-LN already normalises the last block's output; pre-LN needs a final norm before the head
        self.ln_f = make_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight
        self._init_weights(generator)

    def _init_weights(self, generator: torch.Generator | None) -> None:
        std = 1.0 if self.config.init == "bad" else 0.02
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std, generator=generator)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if self.config.init == "scaled":
            # each residual branch adds to the stream: 2 per layer, keep the sum's variance ~ constant
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * self.config.n_layer), generator=generator)

    def num_parameters(self) -> int:
        """Distinct parameters (a tied head counts once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx [batch, seq] token ids -> logits [batch, seq, vocab], mean cross-entropy against targets."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than the block size {self.config.block_size}")
        x = self.wte(idx)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        else:
            rope = rope_cos_sin(self.config, T, idx.device)
        x = self.drop(x)
        for block in self.h:
            x = block(x, rope)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.8,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample `max_new_tokens` ids after idx [batch, seq], cropping the context to the block size."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size:])
            logits = logits[:, -1, :] / max(temperature, 1e-5)
            if top_k:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            probs = F.softmax(logits, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
        return idx
