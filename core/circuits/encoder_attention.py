"""Attention of encoder models (BERT style) and encoder-decoder models (T5 style): the view BertViz draws.

    encoder   self-attention over the input text, both ways (no mask)     [layers, heads, src, src]
    decoder   the decoder's self-attention over its own input, causal     [dec_layers, heads, tgt, tgt]
    cross     each decoder token reading the encoder's output             [dec_layers, heads, tgt, src]

The decoder runs with teacher forcing: its input is the model's decoder start token followed by the target
text, so each decoder position is where the model predicts the next target token. Every matrix is the
model's own (eager attention, `output_attentions=True`); each row is a softmax and sums to 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.inspect.attention import is_causal
from core.models.capture import InputError, token_display
from core.models.loading import LoadedModel

MAX_TOKENS = 512  # BERT's context; 12 layers x 12 heads x 512 x 512 floats = 150 MB
WHICH = {"encoder": "encoder self-attention", "decoder": "decoder self-attention", "cross": "cross-attention"}


@dataclass(frozen=True)
class EncoderAttention:
    kind: str  # "encoder" | "encoder-decoder"
    source_ids: list[int]  # the text as the encoder reads it, special tokens included ([CLS] ... [SEP], ... </s>)
    source_tokens: list[str]
    target_ids: list[int]  # the decoder's input: start token + target text ([] for an encoder)
    target_tokens: list[str]
    encoder: torch.Tensor  # [layers, heads, src, src]
    decoder: torch.Tensor | None  # [dec_layers, heads, tgt, tgt]
    cross: torch.Tensor | None  # [dec_layers, heads, tgt, src]
    source_in_text: int  # tokens of the text before the cap
    target_in_text: int  # tokens of the target before the cap (0 for an encoder)

    @property
    def available(self) -> tuple[str, ...]:
        """The attentions this model has: ("encoder",) or ("encoder", "decoder", "cross")."""
        return ("encoder",) if self.kind == "encoder" else ("encoder", "decoder", "cross")

    def stack(self, which: str) -> torch.Tensor:
        """[layers, heads, queries, keys] of `which` (encoder | decoder | cross)."""
        found = {"encoder": self.encoder, "decoder": self.decoder, "cross": self.cross}[which]
        if found is None:
            raise KeyError(f"a {self.kind} model has no {WHICH[which]}")
        return found

    def query_tokens(self, which: str) -> list[str]:
        return self.source_tokens if which == "encoder" else self.target_tokens

    def key_tokens(self, which: str) -> list[str]:
        return self.target_tokens if which == "decoder" else self.source_tokens

    def causal(self, which: str) -> bool:
        """Is the matrix masked above the diagonal (a query never reads a later key)? Read from the numbers."""
        stack = self.stack(which)
        return stack.shape[-2] == stack.shape[-1] and is_causal(stack)

    @property
    def notices(self) -> list[str]:
        """What was cut: the cap applies to the text and to the target separately."""
        out = []
        if self.source_in_text > len(self.source_ids):
            out.append(f"The text has {self.source_in_text:,} tokens; the encoder read the first "
                       f"{len(self.source_ids):,} (special tokens included).")
        if self.target_ids and self.target_in_text > len(self.target_ids) - 1:
            out.append(f"The target has {self.target_in_text:,} tokens; the decoder read the first "
                       f"{len(self.target_ids) - 1:,} after its start token.")
        return out

    def shapes(self) -> dict[str, list[int]]:
        return {w: list(self.stack(w).shape) for w in self.available}


def labels(tokens: list[str]) -> list[str]:
    """Unique, readable axis labels: '3·␣the' (as core.models.capture.Capture.labels)."""
    return [f"{i}·{token_display(t)}" for i, t in enumerate(tokens)]


def token_cap(lm: LoadedModel, max_tokens: int = MAX_TOKENS) -> int:
    """At most `max_tokens`, and no more than the model's learned positions (BERT: 512; T5 has none)."""
    context = getattr(lm.config, "max_position_embeddings", None)
    return max(2, min(max_tokens, context)) if context else max_tokens


def encode_source(lm: LoadedModel, text: str, cap: int) -> tuple[list[int], int]:
    """(ids with the model's special tokens, tokens before the cap): `truncation` keeps [SEP] / </s> at the end."""
    if text is None or not text.strip():
        raise InputError("The text is empty: type a sentence (whitespace alone has nothing to show).")
    with lm.tokenizer_lock:
        ids = list(lm.tokenizer(text, truncation=True, max_length=cap)["input_ids"])
        n = len(lm.tokenizer(text)["input_ids"]) if len(ids) >= cap else len(ids)
    return ids, n


def decoder_start_id(lm: LoadedModel) -> int:
    """The token the decoder starts from (T5: <pad>, BART: </s>), from the config or its generation config."""
    for source in (lm.config, getattr(lm.model, "generation_config", None)):
        start = getattr(source, "decoder_start_token_id", None)
        if start is not None:
            return int(start)
    if lm.tokenizer.pad_token_id is not None:
        return int(lm.tokenizer.pad_token_id)
    raise InputError("This model names no decoder start token (decoder_start_token_id), so its decoder cannot run.")


def encode_target(lm: LoadedModel, target: str, cap: int) -> tuple[list[int], int]:
    """The decoder's input [start, target tokens...] (teacher forcing) and the target's tokens before the cap."""
    if target is None or not target.strip():
        raise InputError("The target is empty: an encoder-decoder model's decoder needs a text to read (for T5 "
                         "e.g. the translation or the answer). Type one.")
    ids = lm.encode(target)
    return [decoder_start_id(lm), *ids[:cap - 1]], len(ids)


def _stacked(attentions) -> torch.Tensor:
    """A tuple of layers x [1, heads, q, k] -> [layers, heads, q, k] float32 on the CPU."""
    return torch.stack([a[0].float().cpu() for a in attentions])


@torch.inference_mode()
def encoder_attention(lm: LoadedModel, text: str, target: str | None = None,
                      max_tokens: int = MAX_TOKENS) -> EncoderAttention:
    """Run the model once on `text` (and, for an encoder-decoder, `target`) and return every attention."""
    if lm.kind not in ("encoder", "encoder-decoder"):
        raise InputError(f"{lm.name} is a causal language model; this view is for encoder (BERT style) and "
                         "encoder-decoder (T5 style) models. The Attention page shows a causal model's heads.")
    cap = token_cap(lm, max_tokens)
    src, n_src = encode_source(lm, text, cap)
    inputs = torch.tensor([src], device=lm.device)
    mask = torch.ones_like(inputs)  # one unpadded text: every token is real
    if lm.kind == "encoder":
        out = lm.model(input_ids=inputs, attention_mask=mask, output_attentions=True)
        return EncoderAttention("encoder", src, lm.token_strings(src), [], [], _stacked(out.attentions),
                                None, None, n_src, 0)
    tgt, n_tgt = encode_target(lm, target or "", cap)
    out = lm.model(input_ids=inputs, attention_mask=mask, decoder_input_ids=torch.tensor([tgt], device=lm.device),
                   output_attentions=True, use_cache=False)
    return EncoderAttention("encoder-decoder", src, lm.token_strings(src), tgt, lm.token_strings(tgt),
                            _stacked(out.encoder_attentions), _stacked(out.decoder_attentions),
                            _stacked(out.cross_attentions), n_src, n_tgt)


def head_matrix(att: EncoderAttention, which: str, layer: int, head: int | None) -> torch.Tensor:
    """[queries, keys] of one head, or the mean of the layer's heads (head=None; rows still sum to 1)."""
    stack = att.stack(which)[layer]
    return stack.mean(0) if head is None else stack[head]


def square(stack: torch.Tensor, size: int) -> torch.Tensor:
    """[layers, heads, q, k] -> [layers, heads, size, size] by area averaging (cells repeat where it grows): a
    cross-attention matrix drawn as a square tile beside the self-attention ones."""
    layers, heads, q, k = stack.shape
    flat = torch.nn.functional.adaptive_avg_pool2d(stack.reshape(layers * heads, 1, q, k), (size, size))
    return flat.reshape(layers, heads, size, size)


def right_share(att: EncoderAttention, which: str, layer: int, head: int | None) -> float:
    """Mean over queries of the attention on keys to the query's right (later positions): 0 for a causal matrix."""
    return float(torch.triu(head_matrix(att, which, layer, head), diagonal=1).sum(-1).mean())


def top_keys(matrix: torch.Tensor, query: int, k: int = 5) -> list[tuple[int, float]]:
    """The `k` keys query `query` reads most from: (key position, weight), largest first; masked keys (weight
    exactly 0, a causal decoder's future) are left out."""
    values, idx = matrix[query].topk(min(k, matrix.shape[-1]))
    return [(int(i), float(v)) for i, v in zip(idx, values) if v > 0]


def summary(att: EncoderAttention) -> dict:
    """Shapes and checks, as the CLI prints them: every row sums to 1; which attentions are causal."""
    out = {"kind": att.kind, "source_tokens": att.source_tokens, "target_tokens": att.target_tokens,
           "shapes": att.shapes(), "notices": att.notices}
    out["row_sum_max_error"] = {w: float((att.stack(w).sum(-1) - 1).abs().max()) for w in att.available}
    out["causal"] = {w: att.causal(w) for w in att.available}
    return out
