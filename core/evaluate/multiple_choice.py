"""Multiple-choice scoring in the HellaSwag style: which ending does the model find most likely?

For a context c and an ending e = (e_1 .. e_n) the model's log-likelihood of the ending is

    LL(e | c) = sum_i log p(e_i | c, e_<i)          (summed: favours short endings)
    LL_norm   = LL(e | c) / n                       (length-normalised: mean per token)

The model "answers" with the ending of highest score; accuracy is the share of items where that is
the labelled ending. Chance is 1 / (number of endings). The ending is tokenized on its own with a
leading space and appended to the context's ids, so the context's tokens are the same for every ending.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from core.data import DATA_DIR
from core.models.capture import InputError
from core.models.loading import LoadedModel

DATASET = DATA_DIR / "multiple_choice.jsonl"


@dataclass(frozen=True)
class Item:
    id: int
    context: str
    endings: tuple[str, ...]
    label: int  # index of the correct ending


@dataclass
class ItemScore:
    item: Item
    summed: list[float]  # per ending: sum of log p over its tokens (nats)
    n_tokens: list[int]  # per ending

    @property
    def normalised(self) -> list[float]:
        return [s / n for s, n in zip(self.summed, self.n_tokens)]

    @property
    def pick_summed(self) -> int:
        return max(range(len(self.summed)), key=self.summed.__getitem__)

    @property
    def pick_normalised(self) -> int:
        norm = self.normalised
        return max(range(len(norm)), key=norm.__getitem__)


@dataclass
class MCResult:
    scores: list[ItemScore]

    @property
    def accuracy_summed(self) -> float:
        return sum(s.pick_summed == s.item.label for s in self.scores) / len(self.scores)

    @property
    def accuracy_normalised(self) -> float:
        return sum(s.pick_normalised == s.item.label for s in self.scores) / len(self.scores)

    @property
    def chance(self) -> float:
        return sum(1 / len(s.item.endings) for s in self.scores) / len(self.scores)

    def as_dict(self) -> dict:
        return {
            "items": len(self.scores), "chance": self.chance,
            "accuracy_summed": self.accuracy_summed, "accuracy_normalised": self.accuracy_normalised,
            "scores": [{"id": s.item.id, "label": s.item.label, "pick_summed": s.pick_summed,
                        "pick_normalised": s.pick_normalised, "summed": s.summed, "normalised": s.normalised,
                        "n_tokens": s.n_tokens} for s in self.scores],
        }


def load_items(path: Path | str = DATASET) -> list[Item]:
    """The shipped items (data/multiple_choice.jsonl): {"id", "context", "endings": [4 strings], "label"}."""
    items = []
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        raw = json.loads(line)
        endings = tuple(raw["endings"])
        if not 0 <= raw["label"] < len(endings) or len(endings) < 2:
            raise ValueError(f"{path}:{line_no}: label {raw['label']} is not an index into {len(endings)} endings")
        items.append(Item(int(raw["id"]), raw["context"], endings, int(raw["label"])))
    return items


def encode_pair(lm: LoadedModel, context: str, ending: str) -> tuple[list[int], list[int]]:
    """(context ids, ending ids); BOS first where the tokenizer adds one. The ending gets its leading space."""
    ctx = lm.encode(context)
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    if getattr(lm.tokenizer, "add_bos_token", False) and bos is not None:
        ctx = [bos] + ctx
    return ctx, lm.encode(" " + ending.strip())


@torch.inference_mode()
def ending_log_likelihoods(lm: LoadedModel, context: str, endings: Sequence[str]) -> tuple[list[float], list[int]]:
    """Summed log p of each ending's tokens given the context, and each ending's token count.

    All endings go through the model as one right-padded batch [endings, seq]: with right padding and
    a causal mask the real tokens never see the padding, so each row equals its own unpadded pass."""
    if not context.strip():
        raise InputError("The context is empty.")
    pairs = [encode_pair(lm, context, e) for e in endings]
    if not pairs[0][0] or any(not end for _, end in pairs):
        raise InputError("Both the context and every ending need at least one token.")
    rows = [ctx + end for ctx, end in pairs]
    width = max(len(r) for r in rows)
    pad = lm.tokenizer.pad_token_id or 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=lm.device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=lm.device)
    logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    logp = torch.log_softmax(logits, dim=-1).cpu()  # [endings, seq, vocab]
    summed, counts = [], []
    for b, (ctx, end) in enumerate(pairs):
        # logits at position t predict token t + 1: the ending's tokens sit at len(ctx) .. len(ctx)+len(end)-1
        pos = torch.arange(len(ctx) - 1, len(ctx) + len(end) - 1)
        summed.append(float(logp[b, pos, torch.tensor(end)].sum()))
        counts.append(len(end))
    return summed, counts


def score_items(lm: LoadedModel, items: Sequence[Item] | None = None,
                progress: Callable[[int, int, list[ItemScore]], None] | None = None) -> MCResult:
    """Score every item (one batched forward pass per item); `progress(done, total, scores so far)` after each
    (a background job reports and checks for a stop there)."""
    items = list(items if items is not None else load_items())
    if not items:
        raise InputError("There are no items to score.")
    scores = []
    for k, item in enumerate(items):
        summed, counts = ending_log_likelihoods(lm, item.context, item.endings)
        if not all(math.isfinite(s) for s in summed):
            raise InputError(f"Item {item.id}: the model produced a non-finite log-likelihood.")
        scores.append(ItemScore(item, summed, counts))
        if progress is not None:
            progress(k + 1, len(items), scores)
    return MCResult(scores)
