"""Where each component writes into the residual stream, and small shared pieces of the circuits package.

A decoder block adds two things to the residual stream x (pre-norm transformers, GPT-2 and Llama alike):
    x <- x + out_proj(z)          z [seq, heads * head_dim]: the heads' outputs side by side
    x <- x + mlp(norm(x))
and out_proj(z) = sum_h W_O[:, h*d:(h+1)*d] z_h (+ b_O): each head enters through its own slice of the
output projection's *input*. With grouped-query attention (the embedded model, Qwen2) there are as many
slices as *query* heads; query heads that share a KV head still have their own slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.inspect.anatomy import Anatomy, anatomy
from core.models.capture import InputError
from core.models.loading import LoadedModel


@dataclass(frozen=True)
class Layout:
    """Module names the circuits hook, from `core.inspect.anatomy` (the one place that knows the families)."""

    anatomy: Anatomy
    out_proj: tuple[str, ...]  # per layer: the attention output projection (o_proj | attn.c_proj)
    attention: tuple[str, ...]  # per layer: the attention module
    mlp: tuple[str, ...]  # per layer: the MLP module (its output is what enters the residual stream)
    layers: tuple[str, ...]  # per layer: the decoder block (its input is the residual stream before it)
    final_norm: str

    @property
    def n_layers(self) -> int:
        return self.anatomy.n_layers

    @property
    def n_heads(self) -> int:
        return self.anatomy.n_heads

    @property
    def head_dim(self) -> int:
        return self.anatomy.head_dim

    def head_slice(self, head: int) -> slice:
        """Columns of the output projection's input that belong to query head `head`."""
        return slice(head * self.head_dim, (head + 1) * self.head_dim)


def layout(lm: LoadedModel) -> Layout:
    """The layout, or UnsupportedModel (a ValueError with a message for the user) for other families."""
    a = anatomy(lm)
    n = a.names
    return Layout(a, tuple(f"{b}.{n.attention}.{n.out_proj}" for b in a.layer_names),
                  tuple(f"{b}.{n.attention}" for b in a.layer_names),
                  tuple(f"{b}.mlp" for b in a.layer_names), a.layer_names, a.final_norm_name)


def head_weights(module: nn.Module, n_heads: int, head_dim: int) -> torch.Tensor:
    """[heads, hidden, head_dim] float32: W_O cut per head, so head h writes W_O[h] @ z_h.

    nn.Linear stores W [out=hidden, in=heads*d]; GPT-2's Conv1D stores it transposed, [in, out]."""
    w = module.weight.detach().float().cpu()
    if type(module).__name__ == "Conv1D":
        return w.reshape(n_heads, head_dim, -1).transpose(1, 2).contiguous()
    return w.reshape(w.shape[0], n_heads, head_dim).permute(1, 0, 2).contiguous()


def resolve_token(lm: LoadedModel, token: str | int | None) -> int | None:
    """A token id from an id (int or digits) or a text (its first token; ' Paris' keeps its space)."""
    if token is None or (isinstance(token, str) and token == ""):
        return None
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    if isinstance(token, int) or (isinstance(token, str) and token.strip().isdigit() and token == token.strip()):
        i = int(token)
        if not 0 <= i < vocab:
            raise InputError(f"Token id {i} is outside the vocabulary (0..{vocab - 1}).")
        return i
    ids = lm.encode(token)
    if not ids:
        raise InputError(f"{token!r} encodes to no token.")
    return ids[0]


def parse_heads(text: str | None) -> list[tuple[int, int]]:
    """'3.1,5.0' -> [(3, 1), (5, 0)]: layer.head pairs, both from 0."""
    heads = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        try:
            layer, head = part.strip().split(".")
            heads.append((int(layer), int(head)))
        except ValueError as exc:
            raise ValueError(f"heads are written LAYER.HEAD (e.g. 3.1), got {part.strip()!r}") from exc
    return heads


def parse_layers(text: str | None) -> list[int]:
    try:
        return [int(p) for p in (text or "").split(",") if p.strip()]
    except ValueError as exc:
        raise ValueError(f"layers are comma-separated integers, got {text!r}") from exc


def check_units(lay: Layout, heads=(), layers=()) -> None:
    """Raise InputError naming the first head or layer the model does not have."""
    for layer, head in heads:
        if not (0 <= layer < lay.n_layers and 0 <= head < lay.n_heads):
            raise InputError(f"Head {layer}.{head} does not exist: layers 0..{lay.n_layers - 1}, "
                             f"heads 0..{lay.n_heads - 1}.")
    for layer in layers:
        if not 0 <= layer < lay.n_layers:
            raise InputError(f"Layer {layer} does not exist: layers 0..{lay.n_layers - 1}.")


@torch.inference_mode()
def forward_ids(lm: LoadedModel, ids: torch.Tensor, attentions: bool = False) -> tuple[torch.Tensor, list]:
    """Run the model on a batch of ids [batch, seq] (no text): (last-position logits [batch, vocab] float32,
    attentions: layers x [batch, heads, seq, seq] on the CPU, empty unless asked)."""
    input_ids = ids.to(lm.device)
    out = lm.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False,
                   output_attentions=attentions, logits_to_keep=1)
    return out.logits[:, -1].float().cpu(), [a.float().cpu() for a in (out.attentions or ()) if a is not None]
