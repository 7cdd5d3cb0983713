"""Perplexity of a text under a causal LM, with a sliding window (the "fixed-length models" method).

A model with a context of W tokens cannot condition on the whole of a long text. The text is cut into
windows of `window` tokens that start every `stride` tokens; each window scores only the tokens the
previous window did not reach, so every token is scored once, with up to window-1 tokens of context:

    PPL = exp( -1/N  sum_i log p(x_i | x_{max(0, b_i)} .. x_{i-1}) )

where b_i is the start of the window that scores token i. A smaller stride gives each token more
context (a lower, fairer perplexity) at the cost of more forward passes. With stride == window the
windows are disjoint and the first token of each window has no context, so it is not scored (exactly
as in the Hugging Face guide, where it is masked by the label shift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from core.models.capture import InputError
from core.models.loading import LoadedModel

MAX_TEXT_TOKENS = 8192  # a bound on work per call: ~N/stride forward passes of `window` tokens


@dataclass(frozen=True)
class Window:
    """One forward pass: tokens [start, end) go in, tokens [score_start, end) are scored."""

    start: int
    end: int
    score_start: int

    @property
    def scored(self) -> int:
        return self.end - self.score_start


@dataclass
class PerplexityResult:
    ids: list[int]
    tokens: list[str]  # each id decoded alone
    token_nll: torch.Tensor  # [seq] nats, NaN where a token is not scored (position 0, window starts)
    context: torch.Tensor  # [seq] how many tokens of context each scored token had (0 where unscored)
    windows: list[Window]
    window: int
    stride: int
    truncated: bool
    n_tokens_in_text: int

    @property
    def scored_tokens(self) -> int:
        return int((~torch.isnan(self.token_nll)).sum())

    @property
    def mean_nll(self) -> float:
        """Mean negative log-likelihood per scored token, in nats (the cross-entropy)."""
        return float(torch.nanmean(self.token_nll))

    @property
    def ppl(self) -> float:
        return math.exp(self.mean_nll)

    @property
    def bits_per_token(self) -> float:
        return self.mean_nll / math.log(2)

    def as_dict(self) -> dict:
        nll = self.token_nll.tolist()
        return {
            "ppl": self.ppl, "mean_nll": self.mean_nll, "bits_per_token": self.bits_per_token,
            "scored_tokens": self.scored_tokens, "total_tokens": len(self.ids),
            "window": self.window, "stride": self.stride, "truncated": self.truncated,
            "windows": [{"start": w.start, "end": w.end, "score_start": w.score_start} for w in self.windows],
            "tokens": [{"token": t, "id": i, "nll": None if math.isnan(x) else x, "context": int(c)}
                       for t, i, x, c in zip(self.tokens, self.ids, nll, self.context.tolist())],
        }


def text_ids(lm: LoadedModel, text: str, max_tokens: int = MAX_TEXT_TOKENS) -> tuple[list[int], int]:
    """(ids, n_tokens_in_text): the whole text (not cut at the context length), BOS first where the
    tokenizer adds one, at most `max_tokens`."""
    if text is None or not text.strip():
        raise InputError("The text is empty: type at least two tokens of text to score.")
    ids = lm.encode(text)
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    if getattr(lm.tokenizer, "add_bos_token", False) and bos is not None:
        ids = [bos] + ids
    return ids[:max_tokens], len(ids)


def context_length(lm: LoadedModel) -> int | None:
    return getattr(lm.config, "max_position_embeddings", None) or getattr(lm.config, "n_positions", None)


def check_window(n_tokens: int, window: int, stride: int, context: int | None = None) -> None:
    """Every way the three numbers can be impossible, as one readable InputError (a ValueError)."""
    if n_tokens < 2:
        raise InputError(f"The text has {n_tokens} token{'s' if n_tokens != 1 else ''}; perplexity needs at "
                         "least two (the first token has nothing to be predicted from).")
    if window < 2:
        raise InputError(f"The window must hold at least 2 tokens (one context token and one to score), got {window}.")
    if context is not None and window > context:
        raise InputError(f"The window ({window} tokens) is longer than the model's context ({context} tokens).")
    if stride <= 0:
        raise InputError(f"The stride must be a positive number of tokens, got {stride}.")
    if stride > window:
        raise InputError(f"The stride ({stride}) is larger than the window ({window}): the tokens in between "
                         "would never be scored. Use a stride of at most the window.")


def plan_windows(n_tokens: int, window: int, stride: int) -> list[Window]:
    """The HF guide's loop: windows start every `stride` tokens until one reaches the end of the text."""
    windows: list[Window] = []
    prev_end = 0
    for start in range(0, n_tokens, stride):
        end = min(start + window, n_tokens)
        # Position `start` has no context inside its own window, so it can never be scored there.
        windows.append(Window(start, end, max(prev_end, start + 1)))
        prev_end = end
        if end == n_tokens:
            break
    return [w for w in windows if w.scored > 0]


@torch.inference_mode()
def window_nll(lm: LoadedModel, ids: Sequence[int]) -> torch.Tensor:
    """[len(ids) - 1] nats: -log p(ids[i+1] | ids[:i+1]) from one forward pass, in float32 on the CPU."""
    input_ids = torch.tensor([list(ids)], device=lm.device)
    logits = lm.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits
    logp = torch.log_softmax(logits[0, :-1].float(), dim=-1)  # [seq-1, vocab]
    return -logp.gather(1, input_ids[0, 1:, None]).squeeze(1).cpu()


def perplexity(lm: LoadedModel, text: str, window: int | None = None, stride: int | None = None,
               max_tokens: int = MAX_TEXT_TOKENS, progress: Callable[[int, int], None] | None = None,
               max_work: int | None = None) -> PerplexityResult:
    """Sliding-window perplexity of `text`. window defaults to the model's context (at most 1024 tokens),
    stride to half the window. `progress(done, total)` is called after each window (for a job).
    `max_work` caps the tokens run through the model in all (passes x window), for an interactive page.
    Bad numbers or a text shorter than two tokens raise InputError (a ValueError) with a readable message."""
    ids, n_in_text = text_ids(lm, text, max_tokens)
    context = context_length(lm)
    window = int(window if window is not None else min(context or 1024, 1024))
    stride = int(stride if stride is not None else max(1, window // 2))
    check_window(len(ids), window, stride, context)
    if max_work is not None:
        windows = plan_windows(len(ids), window, stride)
        work = sum(w.end - w.start for w in windows)
        if work > max_work:
            raise InputError(f"A stride of {stride} on {len(ids):,} tokens means {len(windows):,} forward passes "
                             f"({work:,} tokens through the model); this page allows {max_work:,}. Raise the "
                             "stride, shrink the window or shorten the text (the CLI has no such limit).")
    return perplexity_of_ids(lm, ids, window, stride, progress, n_in_text=n_in_text)


def perplexity_of_ids(lm: LoadedModel, ids: Sequence[int], window: int, stride: int,
                      progress: Callable[[int, int], None] | None = None,
                      n_in_text: int | None = None) -> PerplexityResult:
    """Same as `perplexity`, for ids already tokenized (the quantization lab scores the same ids on each model)."""
    ids = list(ids)
    check_window(len(ids), window, stride, context_length(lm))
    windows = plan_windows(len(ids), window, stride)
    nll = torch.full((len(ids),), float("nan"))
    ctx = torch.zeros(len(ids), dtype=torch.long)
    for k, w in enumerate(windows):
        losses = window_nll(lm, ids[w.start:w.end])  # losses[j] scores token w.start + j + 1
        nll[w.score_start:w.end] = losses[w.score_start - w.start - 1:]
        ctx[w.score_start:w.end] = torch.arange(w.score_start, w.end) - w.start
        if progress is not None:
            progress(k + 1, len(windows))
    n = len(ids) if n_in_text is None else n_in_text
    return PerplexityResult(ids=ids, tokens=lm.token_strings(ids), token_nll=nll, context=ctx, windows=windows,
                            window=window, stride=stride, truncated=len(ids) < n, n_tokens_in_text=n)
