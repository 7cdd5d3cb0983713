"""One prompt, several decoding strategies, decoded together as one batch.

The prompt is run once (prefill, batch 1); its KV cache is then copied to every row. Each row is one
output: a greedy row, one sampled draw, or one beam of a beam group. Every step is ONE forward pass of
the new token of every row, [rows, 1], against the cache. Each row then picks its next token its own way
(its own filters, its own seeded generator); a beam group reorders its rows of the cache.

Recorded per sampled/greedy row and step: the top-20 of the model's distribution, the same tokens'
probabilities after the row's filters (0 = cut), the token picked. Per output: the model's own log p of
every token, so log-probability and perplexity mean the same thing for every strategy.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache

from core.decode import filters as F
from core.decode.beam import BeamNode, BeamSearch
from core.decode.filters import Filters
from core.decode.strategies import Strategy, row_generator, unique_names
from core.models.capture import InputError
from core.models.loading import LoadedModel

TOP = 20
MAX_NEW_TOKENS = 256
MAX_ROWS = 48
# The page's cap on the prompt: its KV cache is copied to every row (up to 48), so a 4,445-token prompt meant
# ~10 GB of cache on the embedded model and minutes of work. The CLI takes up to the model's context.
MAX_PAGE_PROMPT_TOKENS = 512
WHY_PROMPT_CAP = "its KV cache is copied to every row of the batch"


@dataclass(frozen=True)
class Step:
    """One decoding step of one row."""

    top_ids: list[int]  # the model's 20 most likely next tokens
    p_model: list[float]  # their probabilities under the model (softmax of the raw logits)
    p_filtered: list[float]  # under the row's filtered distribution (0 where cut)
    picked: int
    picked_p_model: float
    picked_p_filtered: float
    picked_rank: int  # 0 = the model's most likely token
    kept: int  # how many tokens of the whole vocabulary survive the filters


@dataclass(frozen=True)
class Output:
    strategy: Strategy
    sample: int
    token_ids: list[int]  # the new tokens (an EOS that ended the text included)
    logprobs: list[float]  # the model's own log p of each new token
    steps: list[Step] = field(default_factory=list)  # empty for beam search (see the tree)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def logprob(self) -> float:
        return float(sum(self.logprobs))

    @property
    def perplexity(self) -> float:
        """exp(−mean log p): the model's average 'surprise' at this text, 1 = fully predictable."""
        return math.exp(-self.logprob / self.length) if self.length else float("nan")


@dataclass(frozen=True)
class Comparison:
    prompt_ids: list[int]
    outputs: list[Output]
    beam_trees: dict[str, list[BeamNode]]  # strategy name -> every candidate of every step
    best_paths: dict[str, list[int]]  # strategy name -> node ids of the returned hypothesis
    rows: int
    forwards: int
    seconds: float
    max_new_tokens: int
    notice: str | None = None

    def of(self, name: str) -> list[Output]:
        return [o for o in self.outputs if o.strategy.name == name]


def distinct_n(sequences: list[list[int]], n: int) -> float:
    """Distinct n-grams / all n-grams over the sequences (Li et al. 2016): 1 = no n-gram repeats."""
    grams = [tuple(seq[i:i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def eos_ids(lm: LoadedModel) -> list[int]:
    eos = lm.model.generation_config.eos_token_id
    if eos is None:
        eos = lm.tokenizer.eos_token_id
    return [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])


def prompt_ids(lm: LoadedModel, text: str) -> list[int]:
    """The prompt's ids (BOS where the model uses one); an empty prompt or one filling the context is refused."""
    if text is None or not text.strip():
        raise InputError("The prompt is empty: type the beginning of a text for the model to continue.")
    ids = lm.encode(text)
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    if getattr(lm.tokenizer, "add_bos_token", False) and bos is not None:
        ids = [bos] + ids
    context = getattr(lm.config, "max_position_embeddings", None)
    if context is not None and len(ids) >= context:
        raise InputError(f"The prompt is {len(ids):,} tokens, and the model's context is {context:,} tokens: "
                         "nothing would be left to generate. Shorten the prompt.")
    return ids


def check(strategies: list[Strategy], max_new_tokens: int) -> None:
    if not strategies:
        raise ValueError("choose at least one strategy")
    for s in strategies:
        s.check()
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"new tokens must be between 1 and {MAX_NEW_TOKENS} (got {max_new_tokens})")
    rows = sum(s.rows for s in strategies)
    if rows > MAX_ROWS:
        raise ValueError(f"this comparison needs {rows} rows (beams and samples count one each); "
                         f"at most {MAX_ROWS} fit in one batch")


class _Row:
    """A greedy or sampled row: its strategy, generator, tokens and per-step record."""

    def __init__(self, strategy: Strategy, sample: int, generator: torch.Generator | None):
        self.strategy, self.sample, self.generator = strategy, sample, generator
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.steps: list[tuple] = []
        self.done = False


def _pick(row: _Row, logits: torch.Tensor, probs_model: torch.Tensor, seen: torch.Tensor | None
          ) -> tuple[int, torch.Tensor, int]:
    """(token, filtered probabilities [vocab], tokens kept) for one row; logits [1, vocab]."""
    f = row.strategy.filters
    if f == Filters() or (row.strategy.kind == "greedy" and f.repetition_penalty in (None, 1.0)):
        filtered_probs, kept = probs_model, probs_model.shape[-1]  # nothing reshapes this row's distribution
    else:
        filtered = F.apply(logits, f, seen)[0]
        filtered_probs = filtered.softmax(-1)
        kept = int(torch.isfinite(filtered).sum()) if f.top_k or f.top_p or f.min_p or f.typical \
            else probs_model.shape[-1]
    if row.strategy.kind == "greedy":
        return int(filtered_probs.argmax()), filtered_probs, kept
    return int(torch.multinomial(filtered_probs, 1, generator=row.generator)), filtered_probs, kept


@torch.inference_mode()
def compare(lm: LoadedModel, text: str, strategies: list[Strategy], max_new_tokens: int = 32, seed: int = 0,
            keep_steps: bool = True, ids: list[int] | None = None,
            progress: Callable[[int, int], None] | None = None) -> Comparison:
    """Decode `text` with every strategy in one batch; see the module docstring.

    `progress(done, total)` is called after every forward pass (total = max_new_tokens: the prefill, then one
    per new token; fewer when every row ends early). Whatever it raises stops the decoding before the next
    forward pass: that is how the page's Cancel works (a click's rerun raises inside the progress bar)."""
    strategies = unique_names(list(strategies))
    check(strategies, max_new_tokens)
    ids = list(ids) if ids is not None else prompt_ids(lm, text)
    notice = None
    context = getattr(lm.config, "max_position_embeddings", None)
    if context is not None and len(ids) + max_new_tokens > context:
        notice = (f"Only {context - len(ids)} new tokens fit in the model's context of {context} tokens "
                  f"after the {len(ids)}-token prompt.")
        max_new_tokens = context - len(ids)
    model, device = lm.model, lm.device
    eos = eos_ids(lm)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else (eos[0] if eos else 0)

    rows: list[_Row | None] = []  # None marks a beam row
    beams: list[tuple[Strategy, int, BeamSearch]] = []  # (strategy, first row, search)
    for s in strategies:
        if s.kind == "beam":
            beams.append((s, len(rows), BeamSearch(s.num_beams, len(ids), max_new_tokens, eos)))
            rows.extend([None] * s.num_beams)
        else:
            for k in range(s.samples if s.kind == "sample" else 1):
                gen = row_generator(seed, s, k, device) if s.kind == "sample" else None
                rows.append(_Row(s, k, gen))
    n = len(rows)
    any_penalty = any(r is not None and r.strategy.filters.repetition_penalty not in (None, 1.0) for r in rows) \
        or any(s.filters.repetition_penalty not in (None, 1.0) for s, _, _ in beams)

    start = time.perf_counter()
    prompt = torch.tensor([ids], device=device)
    out = model(input_ids=prompt, past_key_values=DynamicCache(config=model.config), use_cache=True,
                logits_to_keep=1)
    cache = out.past_key_values
    if n > 1:
        cache.batch_repeat_interleave(n)
    logits = out.logits[:, -1].float().expand(n, -1)  # [rows, vocab]
    history = prompt.expand(n, -1) if any_penalty else None  # [rows, seq]: what the penalty looks at
    forwards = 1
    if progress is not None:
        progress(forwards, max_new_tokens)
    for step in range(max_new_tokens):
        log_probs = logits.log_softmax(-1)  # [rows, vocab], the model's own distribution
        probs = log_probs.exp()
        next_tokens = torch.full((n,), pad, dtype=torch.long)
        order = torch.arange(n)
        if keep_steps:
            top_p, top_i = probs.topk(TOP, dim=-1)  # [rows, TOP]
        step_rows = []
        for r, row in enumerate(rows):
            if row is None or row.done:
                continue
            seen = history[r:r + 1] if history is not None else None
            token, filtered_probs, kept = _pick(row, logits[r:r + 1], probs[r], seen)
            row.tokens.append(token)
            row.logprobs.append(float(log_probs[r, token]))
            row.done = token in eos
            next_tokens[r] = token
            if keep_steps:
                step_rows.append(r)
                row.steps.append([top_i[r], top_p[r], filtered_probs[top_i[r]], token, float(probs[r, token]),
                                  float(filtered_probs[token]), None, kept])
        if keep_steps and step_rows:  # the picked token's rank in the model's distribution, all rows at once
            picked = next_tokens[step_rows].to(probs.device)
            ranks = (probs[step_rows] > probs[step_rows].gather(1, picked[:, None])).sum(-1).tolist()
            for r, rank in zip(step_rows, ranks):
                rows[r].steps[-1][6] = rank
        for s, first, search in beams:
            if search.done:
                continue
            group = slice(first, first + s.num_beams)
            scores = log_probs[group]
            if s.filters.repetition_penalty not in (None, 1.0):  # transformers applies it to the log-probs
                scores = F.repetition_penalty(scores, history[group], s.filters.repetition_penalty)
            parent, token = search.advance(scores.cpu(), log_probs[group].cpu())  # B x vocab: CPU bookkeeping
            order[group] = first + parent
            next_tokens[group] = token
        finished = all(r is None or r.done for r in rows) and all(search.done for _, _, search in beams)
        if finished or step == max_new_tokens - 1:
            break
        if beams:
            cache.reorder_cache(order.to(device))
        if history is not None:
            history = torch.cat((history[order.to(history.device)], next_tokens[:, None].to(history.device)), 1)
        out = model(input_ids=next_tokens[:, None].to(device), past_key_values=cache, use_cache=True)
        forwards += 1
        logits = out.logits[:, -1].float()
        if progress is not None:
            progress(forwards, max_new_tokens)
    seconds = time.perf_counter() - start

    outputs, trees, paths = [], {}, {}
    beam_at = {first: (s, search) for s, first, search in beams}
    for r, row in enumerate(rows):
        if r in beam_at:
            s, search = beam_at[r]
            best = search.best()
            outputs.append(Output(s, 0, list(best.token_ids), list(best.logprobs)))
            trees[s.name], paths[s.name] = search.nodes, list(best.path)
        elif row is not None:
            outputs.append(Output(row.strategy, row.sample, row.tokens, row.logprobs, _steps(row.steps)))
    return Comparison(ids, outputs, trees, paths, n, forwards, seconds, max_new_tokens, notice)


def _steps(raw: list[tuple]) -> list[Step]:
    """Tensors to plain lists once at the end (one .tolist() per step, not one per number)."""
    return [Step(ti.tolist(), tp.tolist(), pf.tolist(), tok, pm, pfk, rank, kept)
            for ti, tp, pf, tok, pm, pfk, rank, kept in raw]
