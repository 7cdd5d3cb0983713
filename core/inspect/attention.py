"""Reading attention weights: per-head statistics, head averages, rollout, token-to-token edges, GQA groups.

Every function takes attention probabilities as returned by the model with eager attention
(`Capture.attentions`: layers x [heads, seq, seq], row = query position, column = key position,
rows sum to 1, upper triangle 0 for a causal model) and never runs the model itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.inspect.architecture import config_dims
from core.models.capture import Capture, InputError

STATISTICS = {
    "entropy": "Entropy (nats): how spread out the attention is; 0 = all on one token, ln(i+1) = uniform",
    "sink": "Attention to the first token (the 'attention sink')",
    "previous": "Attention to the previous token",
    "self": "Attention to the token itself (the diagonal)",
    "distance": "Mean distance, in tokens, between a query and the keys it attends to",
}
HEAD_TYPES = ("previous token", "first token (sink)", "self", "broad", "mixed")


def attention_stack(capture: Capture) -> torch.Tensor:
    """[layers, heads, seq, seq] float32: all layers' attention probabilities in one tensor."""
    if not capture.attentions:
        raise InputError("This model returned no attention weights (it needs eager attention).")
    return torch.stack([a.float() for a in capture.attentions])


def is_causal(attn: torch.Tensor) -> bool:
    """True when no query attends to a later key (the upper triangle is exactly 0: masked before softmax)."""
    return bool((torch.triu(attn.float(), diagonal=1) == 0).all())


def require_two_tokens(attn: torch.Tensor) -> None:
    """Statistics over query positions 1.. need at least two tokens."""
    if attn.shape[-1] < 2:
        raise InputError("Attention needs at least two tokens: with one token the only possible attention "
                         "is the token to itself (a 1 x 1 matrix of weight 1). Type a longer text.")


def entropy_per_query(attn: torch.Tensor) -> torch.Tensor:
    """[..., seq] entropy in nats of each query row of `attn` [..., seq, seq] (0 log 0 = 0)."""
    p = attn.float()
    return -(torch.special.xlogy(p, p)).sum(-1)


def head_statistics(attn: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-head summaries of `attn` [layers, heads, seq, seq], each [layers, heads].

    All are means over query positions i = 1 .. seq-1: in a causal model position 0 can only attend
    to itself, so including it would push every head towards "sink" and "self".
      entropy   sum_j -a[i,j] ln a[i,j], in nats (a uniform causal row i has ln(i+1))
      sink      a[i, 0]                 attention to the first token
      previous  a[i, i-1]               attention to the previous token
      self      a[i, i]                 attention to the token itself
      distance  sum_j a[i,j] |i - j|    how far back the head looks, in tokens
    """
    require_two_tokens(attn)
    seq = attn.shape[-1]
    rows = attn[..., 1:, :].float()  # [layers, heads, seq-1, seq]
    i = torch.arange(1, seq)
    j = torch.arange(seq)
    distance = (i[:, None] - j[None, :]).abs().float()  # [seq-1, seq]
    return {
        "entropy": entropy_per_query(rows).mean(-1),
        "sink": rows[..., 0].mean(-1),
        # rows[k] is query i = k + 1: its previous token is column k, itself column k + 1.
        "previous": rows.diagonal(offset=0, dim1=-2, dim2=-1).mean(-1),
        "self": rows.diagonal(offset=1, dim1=-2, dim2=-1).mean(-1),
        "distance": (rows * distance).sum(-1).mean(-1),
    }


def head_average(attn: torch.Tensor) -> torch.Tensor:
    """[layers, seq, seq]: the mean over heads of each layer (still row-stochastic)."""
    return attn.float().mean(1)


def layer_matrix(attn: torch.Tensor, layer: int, head: int | None = None) -> torch.Tensor:
    """[seq, seq] of one layer of `attn` [layers, heads, seq, seq]: one head, or the mean of its heads."""
    return attn[layer].float().mean(0) if head is None else attn[layer, head].float()


def head_summary(stats: dict, layer: int, head: int | None = None) -> dict[str, float]:
    """One head's statistics (a `head_statistics` result, tensors or arrays [layers, heads]) by name, or the
    mean over the layer's heads when `head` is None (for entropy: the heads' mean entropy, not the entropy
    of the averaged map)."""
    return {name: float(stats[name][layer].mean() if head is None else stats[name][layer, head])
            for name in STATISTICS}


def attention_rollout(attn: torch.Tensor, residual: float = 0.5) -> torch.Tensor:
    """[layers, seq, seq] attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow").

    Each layer's head-averaged attention A is mixed with the residual connection as
    A' = residual * I + (1 - residual) * A (the paper uses 0.5: half of what a token carries forward
    is itself), rows renormalised, then multiplied layer by layer: R_l = A'_l @ R_{l-1}, R_{-1} = I.
    Entry [l, i, j] says how much of token j reaches position i after layer l.
    """
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual weight must be between 0 and 1, got {residual}")
    mean = head_average(attn)
    eye = torch.eye(mean.shape[-1], dtype=mean.dtype)
    mixed = residual * eye + (1.0 - residual) * mean
    mixed = mixed / mixed.sum(-1, keepdim=True)
    out = []
    rolled = eye
    for layer in mixed:
        rolled = layer @ rolled
        out.append(rolled)
    return torch.stack(out)


@dataclass(frozen=True)
class Edge:
    query: int  # the position doing the attending (row)
    key: int  # the position attended to (column)
    weight: float


def token_edges(matrix: torch.Tensor, threshold: float = 0.1, query: int | None = None) -> list[Edge]:
    """The entries of one attention matrix [seq, seq] at or above `threshold`, strongest first.

    `query` keeps only the edges leaving that position.
    """
    m = matrix.float()
    if query is not None:
        m = torch.zeros_like(m).index_copy(0, torch.tensor([query]), m[query:query + 1])
    qs, ks = torch.nonzero(m >= threshold, as_tuple=True)
    edges = [Edge(int(q), int(k), float(m[q, k])) for q, k in zip(qs.tolist(), ks.tolist())]
    return sorted(edges, key=lambda e: -e.weight)


def kv_head_of(head: int, heads: int, kv_heads: int) -> int:
    """The key/value head that query head `head` reads under grouped-query attention.

    Query heads are split into kv_heads consecutive groups of heads // kv_heads (repeat_kv in HF).
    """
    return head // (heads // kv_heads)


def head_groups(heads: int, kv_heads: int) -> list[list[int]]:
    """[[query heads sharing KV head 0], [.. KV head 1], ...]: the one home of the GQA grouping."""
    groups: list[list[int]] = [[] for _ in range(kv_heads)]
    for h in range(heads):
        groups[kv_head_of(h, heads, kv_heads)].append(h)
    return groups


def kv_groups(config) -> list[list[int]]:
    """head_groups of a config; one group per head without GQA."""
    dims = config_dims(config)
    return head_groups(dims["heads"], dims["kv_heads"] or dims["heads"])


def head_types(stats: dict[str, torch.Tensor], seq: int, threshold: float = 0.5) -> list[list[str]]:
    """A rough label per head [layers][heads], from its statistics (a heuristic to start looking, not a proof).

    "previous token", "first token (sink)" or "self" when that one target gets at least `threshold` of the
    attention on average; "broad" when the entropy is above 80% of the uniform-causal entropy; else "mixed".
    """
    layers, heads = stats["sink"].shape
    broad = 0.8 * uniform_causal_entropy(seq)
    out: list[list[str]] = []
    for layer in range(layers):
        row = []
        for h in range(heads):
            scores = {"previous token": float(stats["previous"][layer, h]),
                      "first token (sink)": float(stats["sink"][layer, h]),
                      "self": float(stats["self"][layer, h])}
            name, best = max(scores.items(), key=lambda kv: kv[1])
            if best >= threshold:
                row.append(name)
            elif broad > 0 and float(stats["entropy"][layer, h]) >= broad:
                row.append("broad")
            else:
                row.append("mixed")
        out.append(row)
    return out


def uniform_causal_entropy(seq: int) -> float:
    """The entropy (nats) head_statistics reports for a head attending uniformly to all earlier tokens."""
    if seq < 2:
        return 0.0
    return sum(math.log(i + 1) for i in range(1, seq)) / (seq - 1)
