"""Head roles: scores for every layer x head from the attention pattern on a random token sequence repeated twice.

    sequence  [bos] r_1 .. r_N r_1 .. r_N      (N random tokens; the BOS only where the model uses one)
For a query i in the second copy, its token's previous occurrence is i - N:
    induction   a[i, i - N + 1]   attends to the token *after* the previous occurrence (it predicts that token
                                 comes next: the in-context copying of Olsson et al. 2022)
    duplicate   a[i, i - N]       attends to the previous occurrence itself
    previous    a[i, i - 1]       attends to the token just before (over every query i >= 1)
Random tokens make the roles unambiguous: nothing but the repetition links the two copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.circuits.components import forward_ids, layout
from core.inspect.attention import head_statistics
from core.models.loading import LoadedModel

ROLES = {
    "induction": "attends from a token to the token that followed its previous occurrence, so it can copy "
                 "what came next last time (A B … A → B)",
    "previous": "attends from each token to the one just before it, so the next layers know which token preceded "
                "(what an induction head's key reads)",
    "duplicate": "attends from a token to its own earlier occurrence, marking that it has been seen before",
}
DEFAULT_LENGTH = 25
MAX_LENGTH = 200


@dataclass
class HeadRoles:
    role: str
    scores: torch.Tensor  # [layers, heads]
    ids: list[int]
    offset: int  # 1 with a BOS token, else 0
    length: int  # N
    attentions: torch.Tensor  # [layers, heads, seq, seq] the patterns the scores come from

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """[(layer, head, score)] the k highest-scoring heads."""
        heads = self.scores.shape[1]
        values, idx = torch.topk(self.scores.flatten(), min(k, self.scores.numel()))
        return [(int(i) // heads, int(i) % heads, float(v)) for v, i in zip(values, idx)]


def repeated_random_tokens(vocab: int, length: int, seed: int, bos: int | None = None) -> list[int]:
    """[bos] + r + r, r = `length` ids drawn uniformly (seeded) from the vocabulary, skipping the first 100
    ids (special and byte tokens in most vocabularies)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(min(100, vocab - 1), vocab, (length,), generator=g).tolist()
    return ([bos] if bos is not None else []) + r + r


def role_scores(attn: torch.Tensor, role: str, length: int, offset: int = 0) -> torch.Tensor:
    """[layers, heads] score of `role` from attention probabilities attn [layers, heads, seq, seq] on a
    sequence whose two copies of `length` tokens start at `offset` and `offset + length`."""
    if role == "previous":
        return head_statistics(attn)["previous"]
    i = torch.arange(offset + length, offset + 2 * length)  # queries in the second copy
    j = i - length + 1 if role == "induction" else i - length
    if role not in ("induction", "duplicate"):
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return attn[..., i, j].mean(-1)


def head_roles(lm: LoadedModel, role: str, length: int = DEFAULT_LENGTH, seed: int = 0) -> HeadRoles:
    """Run the model once on a repeated random sequence and score every head for `role`."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not 2 <= length <= MAX_LENGTH:
        raise ValueError(f"the length must lie in 2..{MAX_LENGTH} (the sequence is twice as long), got {length}")
    context = getattr(lm.config, "max_position_embeddings", None)
    if context is not None and 2 * length + 1 > context:
        raise ValueError(f"twice {length} tokens do not fit the model's context of {context} tokens; "
                         f"use a length up to {(context - 1) // 2}")
    layout(lm)  # a family the circuits know, or a clear message
    bos = lm.tokenizer.bos_token_id if getattr(lm.tokenizer, "add_bos_token", False) else None
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    ids = repeated_random_tokens(vocab, length, seed, bos)
    _, attn = forward_ids(lm, torch.tensor([ids]), attentions=True)
    stack = torch.stack([a[0] for a in attn])  # [layers, heads, seq, seq]
    offset = 1 if bos is not None else 0
    return HeadRoles(role, role_scores(stack, role, length, offset), ids, offset, length, stack)
