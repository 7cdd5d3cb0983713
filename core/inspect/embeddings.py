"""Token embeddings and position information, read from the loaded model's own weights.

Token side: the input embedding matrix `W_E [vocab, hidden]`, one token's row, its nearest neighbours by
cosine similarity over the whole vocabulary, and a 2-D PCA map of chosen tokens.
Position side: the sinusoidal encoding of the original Transformer (Vaswani et al. 2017), the learned
position table of GPT-2 style models (`wpe`), and the rotary frequencies of Llama style models (RoPE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from core.inspect import rope as _rope
from core.inspect.rope import rope_dim, rope_theta  # noqa: F401  (the one home of RoPE's base and width)

NEIGHBOUR_CHUNK = 16_384  # rows per matmul: bounds the float32 copy of a bf16 or GPU matrix


# ---------------------------------------------------------------- token embeddings


def embedding_matrix(lm: Any) -> torch.Tensor:
    """The input embedding weight `[vocab, hidden]` as the model holds it (shared, never modify)."""
    return lm.model.get_input_embeddings().weight.detach()


def usable_vocab(lm: Any) -> int:
    """Rows that are real tokens: matrices are often padded past the tokenizer's size."""
    return min(embedding_matrix(lm).shape[0], len(lm.tokenizer))


def token_vector(lm: Any, token_id: int) -> torch.Tensor:
    """`[hidden]` float32 on the CPU: the row of W_E the model looks up for this id."""
    W = embedding_matrix(lm)
    if not 0 <= token_id < W.shape[0]:
        raise ValueError(f"Token id {token_id} is outside the embedding matrix (0 … {W.shape[0] - 1}).")
    return W[token_id].float().cpu()


@torch.inference_mode()
def row_norms(lm: Any) -> torch.Tensor:
    """`[vocab]` L2 norm of every embedding row, float32 on the CPU (cache it: it is the only O(vocab)
    state cosine similarity needs, far smaller than a normalized copy of the matrix)."""
    W = embedding_matrix(lm)
    return torch.cat([W[i:i + NEIGHBOUR_CHUNK].float().norm(dim=-1).cpu()
                      for i in range(0, W.shape[0], NEIGHBOUR_CHUNK)])


@torch.inference_mode()
def cosine_to_all(lm: Any, vector: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
    """`[vocab]` cosine similarity of `vector [hidden]` with every embedding row (0 for zero rows)."""
    W = embedding_matrix(lm)
    norms = row_norms(lm) if norms is None else norms
    v = vector.float().to(W.device)
    dots = torch.cat([(W[i:i + NEIGHBOUR_CHUNK].float() @ v).cpu() for i in range(0, W.shape[0], NEIGHBOUR_CHUNK)])
    denom = norms * vector.float().norm()
    return torch.where(denom > 0, dots / denom.clamp_min(1e-30), torch.zeros_like(dots))


def nearest_neighbours(lm: Any, token_id: int, k: int = 10, norms: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """The k tokens whose embeddings point most nearly the same way (the token itself first, cosine 1)."""
    sims = cosine_to_all(lm, token_vector(lm, token_id), norms)[: usable_vocab(lm)]
    k = max(1, min(int(k), sims.shape[0]))
    values, ids = torch.topk(sims, k)
    ids_list = ids.tolist()
    return [{"rank": r, "id": i, "token": t, "cosine": float(v)}
            for r, (i, t, v) in enumerate(zip(ids_list, lm.token_strings(ids_list), values.tolist()))]


def token_vectors(lm: Any, token_ids: list[int]) -> torch.Tensor:
    """`[n, hidden]` float32 on the CPU: the rows of W_E of these ids, stacked."""
    return torch.stack([token_vector(lm, i) for i in token_ids])


def cosine_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """`[n, n]` pairwise cosine similarity of `vectors [n, d]`."""
    unit = torch.nn.functional.normalize(vectors.float(), dim=-1)
    return unit @ unit.T


def pca_2d(vectors: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Project `vectors [n, d]` on their two main directions: (coords [n, 2], explained variance ratio [2]).

    SVD of the centred matrix; each axis's sign is fixed so its largest loading is positive, which makes
    the map stable between runs (PCA axes are only defined up to sign).
    """
    X = vectors.double().cpu().numpy()
    if X.shape[0] < 2:
        raise ValueError("PCA needs at least two tokens.")
    Xc = X - X.mean(axis=0)
    U, S, Vt = np.linalg.svd(Xc, full_matrices=False)
    k = min(2, Vt.shape[0])
    axes = Vt[:k]
    signs = np.sign(axes[np.arange(k), np.abs(axes).argmax(axis=1)])
    axes = axes * signs[:, None]
    coords = Xc @ axes.T
    variance = S**2
    ratio = variance[:k] / variance.sum() if variance.sum() > 0 else np.zeros(k)
    if k < 2:  # two identical-rank edge cases: pad so callers always get two columns
        coords = np.pad(coords, ((0, 0), (0, 2 - k)))
        ratio = np.pad(ratio, (0, 2 - k))
    return coords, ratio


# ---------------------------------------------------------------- positions


def sinusoidal_encoding(n_positions: int, d_model: int, base: float = 10_000.0) -> torch.Tensor:
    """`[n_positions, d_model]`: PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(pos / base^(2i/d))."""
    if n_positions < 1 or d_model < 2:
        raise ValueError("Need at least one position and two dimensions.")
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)
    angle = pos / base ** (two_i / d_model)  # [pos, ceil(d/2)]
    pe = torch.zeros(n_positions, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return pe.float()


def learned_position_module(lm: Any) -> nn.Embedding | None:
    """The learned position table if the model has one (GPT-2's `wpe`, OPT's `embed_positions`, ...)."""
    model = lm.model
    n_pos = getattr(lm.config, "max_position_embeddings", None) or getattr(lm.config, "n_positions", None)
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Embedding) and (leaf in ("wpe", "embed_positions", "position_embeddings")
                                                 or (n_pos and "pos" in leaf and module.num_embeddings >= n_pos)):
            return module
    return None


@torch.inference_mode()
def learned_position_similarity(lm: Any, n_positions: int) -> torch.Tensor:
    """`[n, n]` cosine similarity between the learned vectors of positions 0 … n-1."""
    module = learned_position_module(lm)
    if module is None:
        raise ValueError("This model has no learned position table.")
    n = max(1, min(int(n_positions), module.num_embeddings))
    return cosine_matrix(module.weight.detach()[:n].float().cpu())


def rotary_module(lm: Any) -> nn.Module | None:
    """The model's rotary embedding (`model.model.rotary_emb` in Llama/Qwen/Mistral), if any."""
    for _name, module in lm.model.named_modules():
        if "Rotary" in type(module).__name__ and hasattr(module, "inv_freq"):
            return module
    return None


def rope_inv_freq(config: Any) -> torch.Tensor:
    """`[rope_dim / 2]` frequencies theta_i = base^(-2i/d) of the original RoPE (Su et al. 2021), float64
    (`core.inspect.rope.rope_inv_freq`, computed in float32 as transformers does)."""
    return _rope.rope_inv_freq(config).double()


def model_inv_freq(lm: Any) -> torch.Tensor | None:
    """The frequencies the model really uses (scaled variants such as Llama 3's differ from the formula)."""
    module = rotary_module(lm)
    return None if module is None else module.inv_freq.detach().double().cpu()


def rope_angles(inv_freq: torch.Tensor, n_positions: int) -> torch.Tensor:
    """`[n_positions, d/2]` rotation angle pos * theta_i (radians) of each frequency at each position."""
    return torch.arange(n_positions, dtype=torch.float64)[:, None] * inv_freq.double()[None, :]


@torch.inference_mode()
def model_rope_cos_sin(lm: Any, n_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) `[n_positions, head_dim]` from the model's own rotary embedding module."""
    module = rotary_module(lm)
    if module is None:
        raise ValueError("This model has no rotary position embedding.")
    x = torch.zeros(1, 1, dtype=torch.float32, device=module.inv_freq.device)
    position_ids = torch.arange(n_positions, device=module.inv_freq.device)[None, :]
    cos, sin = module(x, position_ids)
    return cos[0].float().cpu(), sin[0].float().cpu()


def rope_max_difference(lm: Any, inv_freq: torch.Tensor, n_positions: int) -> float:
    """Largest |cos| gap between `rope_angles(inv_freq)` and the model's own rotary_emb over n positions."""
    cos, _sin = model_rope_cos_sin(lm, n_positions)
    half = inv_freq.shape[0]
    return float((cos[:, :half].double() - torch.cos(rope_angles(inv_freq, n_positions))).abs().max())


def rope_follows_formula(lm: Any) -> bool:
    """Does the model's own `inv_freq` equal the plain formula (False for scaled variants: llama3, yarn, ...)?"""
    inv, formula = model_inv_freq(lm), rope_inv_freq(lm.config)
    return inv is not None and inv.shape == formula.shape and torch.allclose(inv, formula, rtol=1e-5)


def rope_cos_table(inv_freq: torch.Tensor, n_positions: int) -> torch.Tensor:
    """`[d/2, n_positions]` cos(pos * theta_i): one row per frequency pair, fastest first."""
    return torch.cos(rope_angles(inv_freq, n_positions)).T


def rotate_pair(pair: tuple[float, float], angles: torch.Tensor) -> torch.Tensor:
    """`[n, 2]`: the 2-D vector `pair` rotated by each angle, as RoPE rotates one (x_i, x_{i+d/2}) pair."""
    x, y = pair
    c, s = torch.cos(angles.double()), torch.sin(angles.double())
    return torch.stack([x * c - y * s, x * s + y * c], dim=-1)


def rope_relative_score(inv_freq: torch.Tensor, max_distance: int) -> torch.Tensor:
    """`[max_distance + 1]`: q · R(m-n) k / (q · k) for q = k with equal energy in every pair, i.e. the mean
    over frequencies of cos(Δ * theta_i). It depends on the distance Δ only: RoPE is relative."""
    return torch.cos(rope_angles(inv_freq, max_distance + 1)).mean(dim=-1)


def position_kind(lm: Any) -> str:
    """'learned', 'rope' or 'none' (e.g. ALiBi or a model this lab does not recognise)."""
    if learned_position_module(lm) is not None:
        return "learned"
    if rotary_module(lm) is not None:
        return "rope"
    return "none"


def wavelengths(inv_freq: torch.Tensor) -> torch.Tensor:
    """`[d/2]` positions a frequency needs for one full turn: 2π / theta_i."""
    return 2 * math.pi / inv_freq.double()


@dataclass(frozen=True)
class RopeSummary:
    """What the Embeddings page shows about a model's rotary embedding, from the model's own `inv_freq`.

    inv_freq        [d/2]        theta_i, radians per position, fastest first
    wavelengths     [d/2]        2 pi / theta_i, positions per full turn
    relative_score  [max_distance + 1]  mean_i cos(distance * theta_i)
    cos_table       [d/2, n_positions]  cos(pos * theta_i)
    max_difference  largest |cos| gap between these angles and the model's rotary_emb over n_positions
    """

    theta: float | None
    dim: int
    rope_type: str
    follows_formula: bool
    inv_freq: torch.Tensor
    wavelengths: torch.Tensor
    relative_score: torch.Tensor
    cos_table: torch.Tensor
    max_difference: float


def rope_summary(lm: Any, n_positions: int = 512, max_distance: int = 256) -> RopeSummary:
    """The rotary embedding of `lm` (position_kind(lm) == "rope") read and checked against its module."""
    inv = model_inv_freq(lm)
    if inv is None:
        raise ValueError("This model has no rotary position embedding.")
    return RopeSummary(rope_theta(lm.config), rope_dim(lm.config), _rope.rope_type(lm.config),
                       rope_follows_formula(lm), inv, wavelengths(inv), rope_relative_score(inv, max_distance),
                       rope_cos_table(inv, n_positions), rope_max_difference(lm, inv, n_positions))
