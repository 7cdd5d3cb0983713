"""Ablation: switch components off and see how the prediction changes.

Zero-ablating head h of layer l zeroes its slice z[:, h*d:(h+1)*d] of the output projection's input at
every position (a forward pre-hook on o_proj / c_proj), so W_O[h] z_h = 0 and nothing else changes.
Mean-ablating replaces the slice by its mean over the text's positions (in this run), which keeps the
component's average contribution and removes only what depends on the token. A whole attention layer or
MLP is switched off at its output (bias included).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch

from core.circuits.components import check_units, layout
from core.models.capture import Capture, run_forward, top_k
from core.models.loading import LoadedModel

MODES = ("zero", "mean")


@dataclass(frozen=True)
class Ablation:
    heads: tuple[tuple[int, int], ...] = ()  # (layer, head) pairs
    attn_layers: tuple[int, ...] = ()  # whole attention layers
    mlps: tuple[int, ...] = ()
    mode: str = "zero"

    @property
    def empty(self) -> bool:
        return not (self.heads or self.attn_layers or self.mlps)

    def label(self) -> str:
        parts = [f"L{l}.H{h}" for l, h in self.heads] + [f"L{l}.attn" for l in self.attn_layers] + \
                [f"L{l}.mlp" for l in self.mlps]
        return ", ".join(parts) or "nothing"


def _knock_out(x: torch.Tensor, mode: str) -> torch.Tensor:
    """[..., seq, n] -> zeros, or the mean over positions broadcast back to every position."""
    return torch.zeros_like(x) if mode == "zero" else x.mean(dim=-2, keepdim=True).expand_as(x)


@contextmanager
def ablated(lm: LoadedModel, ablation: Ablation) -> Iterator[None]:
    """Hooks that switch the components of `ablation` off for every forward pass inside the block."""
    if ablation.mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {ablation.mode!r}")
    lay = layout(lm)
    check_units(lay, ablation.heads, (*ablation.attn_layers, *ablation.mlps))
    by_layer: dict[int, list[int]] = {}
    for layer, head in ablation.heads:
        by_layer.setdefault(layer, []).append(head)
    handles = []

    def pre_hook(heads: list[int]):
        def hook(_module, args):
            z = args[0].clone()  # [batch, seq, heads * d]
            for h in heads:
                sl = lay.head_slice(h)
                z[..., sl] = _knock_out(z[..., sl], ablation.mode)
            return (z, *args[1:])
        return hook

    def out_hook(_module, _args, output):
        if isinstance(output, tuple):
            return (_knock_out(output[0], ablation.mode), *output[1:])
        return _knock_out(output, ablation.mode)

    try:
        for layer, heads in by_layer.items():
            module = lm.model.get_submodule(lay.out_proj[layer])
            handles.append(module.register_forward_pre_hook(pre_hook(heads)))
        for layer in ablation.attn_layers:
            handles.append(lm.model.get_submodule(lay.out_proj[layer]).register_forward_hook(out_hook))
        for layer in ablation.mlps:
            handles.append(lm.model.get_submodule(lay.mlp[layer]).register_forward_hook(out_hook))
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class AblationResult:
    ablation: Ablation
    position: int
    target_id: int  # the top-1 before ablation
    logit_before: float
    logit_after: float
    prob_before: float
    prob_after: float
    kl: float  # KL(before || after) in nats
    top_k_before: list[dict] = field(default_factory=list)
    top_k_after: list[dict] = field(default_factory=list)
    all_heads: bool = False  # every head of every layer switched off

    def as_dict(self) -> dict:
        return {"target_id": self.target_id, "target_logit_before": self.logit_before,
                "target_logit_after": self.logit_after, "kl": self.kl,
                "top_k_before": self.top_k_before, "top_k_after": self.top_k_after}


def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> float:
    """KL(p || q) = sum p (log p - log q), in nats, from two [vocab] logit vectors."""
    lp, lq = torch.log_softmax(logits_p.double(), -1), torch.log_softmax(logits_q.double(), -1)
    return float((lp.exp() * (lp - lq)).sum())


def run_ablated(lm: LoadedModel, text: str, ablation: Ablation, max_tokens: int) -> Capture:
    with ablated(lm, ablation):
        return run_forward(lm, text, max_tokens=max_tokens, attentions=False, hidden_states=False)


def ablate(lm: LoadedModel, text: str, ablation: Ablation, position: int = -1, k: int = 10,
           max_tokens: int = 512, before: Capture | None = None) -> AblationResult:
    """The prediction at `position` with and without the components of `ablation`."""
    before = before or run_forward(lm, text, max_tokens=max_tokens, attentions=False, hidden_states=False)
    after = run_ablated(lm, text, ablation, max_tokens)
    p = position % before.seq_len
    t = int(before.logits[p].argmax())
    pb, pa = before.next_token_probs(p), after.next_token_probs(p)
    lay = layout(lm)
    every = {(l, h) for l in range(lay.n_layers) for h in range(lay.n_heads)}
    all_heads = every <= set(ablation.heads) or set(ablation.attn_layers) >= set(range(lay.n_layers))
    return AblationResult(ablation, p, t, float(before.logits[p, t]), float(after.logits[p, t]), float(pb[t]),
                          float(pa[t]), kl_divergence(before.logits[p], after.logits[p]),
                          top_k(lm, pb, k), top_k(lm, pa, k), all_heads)
