"""How far apart two models' next-token distributions are, position by position, on the same tokens.

    KL(P || Q) at position t = sum_v P(v | x_<=t) [log P(v | x_<=t) - log Q(v | x_<=t)]   (nats)

P is the reference (full precision, the later checkpoint), Q the model compared with it (quantized,
the earlier checkpoint). KL is 0 exactly when the two distributions agree and is not symmetric.
Top-1 agreement is the share of positions where both models' most likely next token is the same.
Both models must share one tokenizer: the same ids must mean the same text, else the numbers compare
unrelated vocabularies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from core.evaluate.perplexity import context_length, text_ids
from core.models.capture import InputError
from core.models.loading import LoadedModel

MAX_KL_TOKENS = 1024


@dataclass
class KLResult:
    ids: list[int]
    tokens: list[str]
    per_position: torch.Tensor  # [seq] KL(P || Q) in nats at each position (prediction of token t+1)
    top1_p: list[int]  # [seq] argmax of P at each position
    top1_q: list[int]  # [seq] argmax of Q
    entropy_p: torch.Tensor  # [seq] nats, for scale: a KL small next to the entropy is a small change
    truncated: bool = False

    @property
    def mean(self) -> float:
        return float(self.per_position.mean())

    @property
    def max(self) -> float:
        return float(self.per_position.max())

    @property
    def top1_agreement(self) -> float:
        """Share of positions (0..1) where both models pick the same most likely next token."""
        return sum(a == b for a, b in zip(self.top1_p, self.top1_q)) / len(self.top1_p)

    def as_dict(self) -> dict:
        return {"mean_kl": self.mean, "max_kl": self.max, "top1_agreement": self.top1_agreement,
                "positions": len(self.ids), "truncated": self.truncated,
                "per_position": [{"token": t, "kl": k, "top1_p": a, "top1_q": b, "entropy_p": h}
                                 for t, k, a, b, h in zip(self.tokens, self.per_position.tolist(), self.top1_p,
                                                          self.top1_q, self.entropy_p.tolist())]}


def output_size(lm: LoadedModel) -> int:
    """How many logits the model produces (its LM head's rows; quantized heads keep `out_features`)."""
    head = lm.model.get_output_embeddings()
    return int(getattr(head, "out_features", None) or lm.config.vocab_size)


def same_tokenizer(a: LoadedModel, b: LoadedModel) -> str | None:
    """None when both models read ids the same way, else the reason they do not (for the user)."""
    va, vb = output_size(a), output_size(b)
    if va != vb:
        return f"{a.name} predicts over {va:,} tokens and {b.name} over {vb:,}: their vocabularies differ."
    if a.tokenizer is b.tokenizer:
        return None
    with a.tokenizer_lock:
        vocab_a = a.tokenizer.get_vocab()
    with b.tokenizer_lock:
        vocab_b = b.tokenizer.get_vocab()
    if vocab_a != vocab_b:
        differ = len(set(vocab_a.items()) ^ set(vocab_b.items()))
        return (f"{a.name} and {b.name} use different tokenizers ({differ:,} token/id pairs differ), "
                "so the same ids would mean different text.")
    return None


@torch.inference_mode()
def log_probs(lm: LoadedModel, input_ids: Sequence[int]) -> torch.Tensor:
    """[seq, vocab] float32 log-softmax of the model's logits on the CPU."""
    x = torch.tensor([list(input_ids)], device=lm.device)
    logits = lm.model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits[0]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def kl_from_log_probs(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """[seq] KL(P || Q) = sum_v p (log p - log q), with 0 log 0 = 0 where p underflows to zero."""
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
    return terms.sum(-1).clamp(min=0.0)  # tiny negatives are rounding


def next_token_kl(model_p: LoadedModel, model_q: LoadedModel, input_ids: Sequence[int] | torch.Tensor,
                  logp: torch.Tensor | None = None) -> KLResult:
    """KL(P || Q) of the next-token distributions of `model_p` (reference) and `model_q` at every position
    of `input_ids` ([seq] or [1, seq]). `logp` may pass P's log-probs computed earlier (one reference
    pass shared by several Q). Raises InputError for different tokenizers or too few/many ids."""
    ids = input_ids.reshape(-1).tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
    reason = same_tokenizer(model_p, model_q)
    if reason:
        raise InputError(reason)
    if len(ids) < 1:
        raise InputError("There are no tokens to compare: type some text.")
    for lm in (model_p, model_q):
        context = context_length(lm)
        if context is not None and len(ids) > context:
            raise InputError(f"{len(ids)} tokens is longer than the context of {lm.name} ({context}).")
    logp = log_probs(model_p, ids) if logp is None else logp
    logq = log_probs(model_q, ids)
    entropy = -torch.special.xlogy(logp.exp(), logp.exp()).sum(-1)
    return KLResult(ids=ids, tokens=model_p.token_strings(ids), per_position=kl_from_log_probs(logp, logq),
                    top1_p=logp.argmax(-1).tolist(), top1_q=logq.argmax(-1).tolist(), entropy_p=entropy)


def kl_on_text(model_p: LoadedModel, model_q: LoadedModel, text: str, max_tokens: int = MAX_KL_TOKENS) -> KLResult:
    """Tokenize with P's tokenizer (shared by both), cut at `max_tokens` and the shorter context, compare."""
    reason = same_tokenizer(model_p, model_q)
    if reason:
        raise InputError(reason)
    limits = [c for c in (context_length(model_p), context_length(model_q)) if c] + [max_tokens]
    ids, n = text_ids(model_p, text, min(limits))
    result = next_token_kl(model_p, model_q, ids)
    result.truncated = len(ids) < n
    return result
