"""One forward pass that records what the pages show: the one way every page runs the model.

Everything is returned for batch size 1 with the batch dimension dropped, on the CPU in float32,
so pages and tests can read values without caring where or in what dtype the model ran.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import nn

from core.models.loading import LoadedModel

MAX_TOKENS = 512


class InputError(ValueError):
    """Text the model cannot take, with a message meant for the user."""


@dataclass
class Capture:
    text: str
    ids: list[int]
    tokens: list[str]  # each id decoded alone
    truncated: bool
    n_tokens_in_text: int  # before truncation
    attention_mask: torch.Tensor  # [seq]
    logits: torch.Tensor  # [seq, vocab]
    hidden_states: list[torch.Tensor] = field(default_factory=list)  # (layers + 1) x [seq, hidden]; [0] = embeddings
    attentions: list[torch.Tensor] = field(default_factory=list)  # layers x [heads, seq, seq]
    module_outputs: dict[str, torch.Tensor] = field(default_factory=dict)  # hooked module name -> output[0]
    module_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # hooked module name -> input[0]

    @property
    def labels(self) -> list[str]:
        """Unique, readable axis labels: '3·␣the' (charts merge duplicate labels otherwise)."""
        return [f"{i}·{token_display(t)}" for i, t in enumerate(self.tokens)]

    @property
    def seq_len(self) -> int:
        return len(self.ids)

    def next_token_probs(self, position: int = -1) -> torch.Tensor:
        """[vocab] softmax of the logits at one position (the last by default)."""
        return torch.softmax(self.logits[position].float(), dim=-1)

    @property
    def truncation_notice(self) -> str | None:
        if not self.truncated:
            return None
        return (f"The text has {self.n_tokens_in_text:,} tokens; only the first {len(self.ids):,} "
                "were used.")

    @property
    def byte_fragment_notice(self) -> str | None:
        """Emoji and many CJK characters are several bytes; a byte-level BPE may split one character over
        tokens that mean nothing alone, and such a token decodes to the replacement character."""
        n = sum("\ufffd" in t for t in self.tokens)
        if not n:
            return None
        return (f"{n} of the {len(self.tokens)} tokens are fragments of a multi-byte character (an emoji or a "
                "CJK character split into bytes): alone they decode to �, together they spell the character.")


def token_display(token: str) -> str:
    """Make whitespace visible: a leading space as ␣, newlines as ⏎, tabs as ⇥."""
    return token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


def tokenize_for_model(lm: LoadedModel, text: str, max_tokens: int = MAX_TOKENS) -> tuple[list[int], int]:
    """(ids, n_tokens_in_text); a BOS token is prepended where the model was trained with one."""
    if text is None or not text.strip():
        raise InputError("The text is empty: type a sentence (whitespace alone has nothing to show).")
    ids = lm.encode(text)
    n = len(ids)
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    if getattr(lm.tokenizer, "add_bos_token", False) and bos is not None:
        ids = [bos] + ids
    context = getattr(lm.config, "max_position_embeddings", None) or max_tokens
    limit = max(1, min(max_tokens, context))
    return ids[:limit], n


@contextmanager
def hooks(model: nn.Module, names: Sequence[str], capture: dict[str, dict[str, torch.Tensor]]) -> Iterator[None]:
    """Record the first input and output of the named modules; hooks are removed on exit."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise KeyError(f"no module named {missing[0]!r}")
    handles = []

    def make(name: str):
        def hook(_module: nn.Module, args: tuple, output: object) -> None:
            out = output[0] if isinstance(output, tuple) else output
            if args and isinstance(args[0], torch.Tensor):
                capture["inputs"][name] = args[0].detach()[0].float().cpu()
            if isinstance(out, torch.Tensor):
                capture["outputs"][name] = out.detach()[0].float().cpu()
        return hook

    try:
        for n in names:
            handles.append(modules[n].register_forward_hook(make(n)))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def run_forward(lm: LoadedModel, text: str, *, max_tokens: int = MAX_TOKENS, attentions: bool = True,
                hidden_states: bool = True, hook_modules: Sequence[str] = ()) -> Capture:
    """Tokenize `text`, run one forward pass and capture tokens, hidden states, attentions, logits."""
    ids, n_in_text = tokenize_for_model(lm, text, max_tokens)
    input_ids = torch.tensor([ids], device=lm.device)
    mask = torch.ones_like(input_ids)
    recorded: dict[str, dict[str, torch.Tensor]] = {"inputs": {}, "outputs": {}}
    with hooks(lm.model, hook_modules, recorded):
        out = lm.model(input_ids=input_ids, attention_mask=mask, output_attentions=attentions,
                       output_hidden_states=hidden_states, use_cache=False)
    return Capture(
        text=text,
        ids=ids,
        tokens=lm.token_strings(ids),
        truncated=len(ids) < n_in_text,
        n_tokens_in_text=n_in_text,
        attention_mask=mask[0].cpu(),
        logits=out.logits[0].float().cpu(),
        hidden_states=[h[0].float().cpu() for h in (out.hidden_states or ())],
        attentions=[a[0].float().cpu() for a in (out.attentions or ()) if a is not None],
        module_outputs=recorded["outputs"],
        module_inputs=recorded["inputs"],
    )


def top_k(lm: LoadedModel, probs: torch.Tensor, k: int = 10) -> list[dict]:
    """[{token, id, prob}] of the k most likely next tokens."""
    k = max(1, min(int(k), probs.shape[-1]))
    values, indices = torch.topk(probs, k)
    ids = indices.tolist()
    return [{"token": t, "id": i, "prob": float(p)} for t, i, p in zip(lm.token_strings(ids), ids, values.tolist())]


def generation_room(lm: LoadedModel, n_ids: int) -> int | None:
    """How many tokens fit after `n_ids` before the model's context ends (None: no stated limit).
    Past it, learned position tables are indexed out of range (GPT-2) and RoPE models extrapolate."""
    context = getattr(lm.config, "max_position_embeddings", None)
    return None if context is None else max(0, int(context) - n_ids)


@torch.inference_mode()
def greedy_continuation(lm: LoadedModel, ids: list[int], max_new_tokens: int = 20) -> list[int]:
    """The model's own greedy decode (generate, do_sample=False) after `ids`, stopped at the context end."""
    room = generation_room(lm, len(ids))
    if room is not None:
        max_new_tokens = min(max_new_tokens, room)
    if max_new_tokens <= 0:
        return []
    input_ids = torch.tensor([ids], device=lm.device)
    out = lm.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                            max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=lm.tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()
