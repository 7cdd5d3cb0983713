"""Direct logit attribution: how much each head, each MLP and the token embedding add to one logit.

The residual stream before the final norm at position p is a sum of what every component wrote:
    x_L = x_0 + sum_l (sum_h W_O[l,h] z[l,h] + b_O[l]) + sum_l mlp_l
The final norm is not linear, but with its scale frozen at the value it has at p it is:
    RMSNorm    norm(x) = g * x / rms(x_L)
    LayerNorm  norm(x) = g * (x - mean(x)) / std(x_L) + b
so logit_t = u . norm(x_L) (+ lm_head bias), u = W_U[t] (or W_U[t] - W_U[c] for a logit difference),
splits exactly into  r . x_0 + sum r . (component) + u . b  with  r = center(g * u) / scale.
The pieces add up to the model's own logit; the page shows that sum as a check.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.circuits.components import Layout, head_weights, layout, resolve_token
from core.inspect.lens import residual_stream
from core.models.capture import Capture, InputError, run_forward
from core.models.loading import LoadedModel

TOLERANCE = 1e-4  # relative, float32


@dataclass
class Attribution:
    position: int
    target_id: int
    contrast_id: int | None
    logit: float  # the model's own logit (or logit difference) at `position`
    embed: float
    heads: torch.Tensor  # [layers, heads]
    attn_bias: torch.Tensor  # [layers] what b_O adds (0 where the projection has no bias)
    mlps: torch.Tensor  # [layers]
    norm_bias: float  # u . b of the final norm (LayerNorm) and the LM head's bias; 0 for RMSNorm
    scale: float  # the frozen divisor: rms(x_L) or std(x_L) at `position`
    norm_kind: str
    has_attn_bias: bool = False  # the output projection has a bias (GPT-2): an 'L<l>.attn_bias' term per layer
    has_norm_bias: bool = False  # the final norm (LayerNorm) or the LM head has a bias: a 'final_norm.bias' term

    @property
    def components(self) -> dict[str, float]:
        """'embed', 'L<l>.H<h>', 'L<l>.mlp' (and the bias terms where the model has them), in layer order."""
        out = {"embed": float(self.embed)}
        layers, heads = self.heads.shape
        for layer in range(layers):
            for head in range(heads):
                out[f"L{layer}.H{head}"] = float(self.heads[layer, head])
            if self.has_attn_bias:
                out[f"L{layer}.attn_bias"] = float(self.attn_bias[layer])
            out[f"L{layer}.mlp"] = float(self.mlps[layer])
        if self.has_norm_bias:
            out["final_norm.bias"] = float(self.norm_bias)
        return out

    @property
    def total(self) -> float:
        return float(sum(self.components.values()))

    @property
    def relative_error(self) -> float:
        return abs(self.total - self.logit) / max(abs(self.logit), 1e-6)

    @property
    def ok(self) -> bool:
        return self.relative_error <= TOLERANCE

    def cumulative(self) -> torch.Tensor:
        """[layers + 1] the logit read from the residual stream after the embeddings and after each layer,
        with the frozen scale (the last entry is the model's logit); the logit lens renormalises instead."""
        per_layer = self.heads.sum(1) + self.attn_bias + self.mlps
        return torch.cat([torch.zeros(1), per_layer.cumsum(0)]) + self.embed + self.norm_bias

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The k components with the largest |contribution| (biases and the embedding included)."""
        return sorted(self.components.items(), key=lambda kv: -abs(kv[1]))[:k]


def hook_modules(lay: Layout) -> tuple[str, ...]:
    """What the forward pass must record: each out_proj's input (the heads' z), each MLP's output,
    the final norm's input (the raw residual stream after the last layer)."""
    return (*lay.out_proj, *lay.mlp, lay.final_norm)


def capture_for_dla(lm: LoadedModel, text: str, max_tokens: int) -> Capture:
    lay = layout(lm)
    return run_forward(lm, text, max_tokens=max_tokens, attentions=False, hook_modules=hook_modules(lay))


def readout(lm: LoadedModel, lay: Layout, x_last: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """(r [hidden], bias term, scale): logit = r . x + bias term for any piece x of x_last [hidden]."""
    norm = lm.model.get_submodule(lay.final_norm)
    g = norm.weight.detach().float().cpu()
    layer_norm = isinstance(norm, nn.LayerNorm)
    eps = float(getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6))
    if layer_norm:
        scale = float(torch.sqrt(x_last.var(unbiased=False) + eps))
        r = g * u / scale
        r = r - r.mean()  # centering is symmetric: (x - mean x) . v = x . (v - mean v)
        bias = float(u @ norm.bias.detach().float().cpu()) if norm.bias is not None else 0.0
    else:
        scale = float(torch.sqrt(x_last.pow(2).mean() + eps))
        r, bias = g * u / scale, 0.0
    head = lm.model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        bias += float(u @ head.bias.detach().float().cpu())
    return r, bias, scale


def attribute(lm: LoadedModel, cap: Capture, position: int = -1, target: str | int | None = None,
              contrast: str | int | None = None) -> Attribution:
    """DLA at `position` of a capture made with `hook_modules` (see `capture_for_dla`).

    target defaults to the model's top-1 there; with a contrast every figure is of logit[target] - logit[contrast]."""
    lay = layout(lm)
    seq = cap.seq_len
    if not -seq <= position < seq:
        raise InputError(f"Position {position} is outside the {seq} tokens (0..{seq - 1}).")
    p = position % seq
    t = resolve_token(lm, target)
    t = int(cap.logits[p].argmax()) if t is None else t
    c = resolve_token(lm, contrast)
    if c is not None and c == t:
        raise InputError("The contrast token is the target token: their logit difference is 0 by definition. "
                         "Choose another contrast (or none).")
    w_u = lm.model.get_output_embeddings().weight.detach()
    u = w_u[t].float().cpu() - (w_u[c].float().cpu() if c is not None else 0.0)
    stream = residual_stream(lm.model, cap)
    r, bias, scale = readout(lm, lay, stream[-1][p], u)
    heads, attn_bias, mlps = [], [], []
    for layer in range(lay.n_layers):
        proj = lm.model.get_submodule(lay.out_proj[layer])
        z = cap.module_inputs[lay.out_proj[layer]][p].reshape(lay.n_heads, lay.head_dim)  # [heads, d]
        w_o = head_weights(proj, lay.n_heads, lay.head_dim)  # [heads, hidden, d]
        heads.append(torch.einsum("hd,hkd,k->h", z, w_o, r))  # r . (W_O[h] z_h)
        b = getattr(proj, "bias", None)
        attn_bias.append(float(r @ b.detach().float().cpu()) if b is not None else 0.0)
        mlps.append(float(r @ cap.module_outputs[lay.mlp[layer]][p]))
    logit = float(cap.logits[p, t] - (cap.logits[p, c] if c is not None else 0.0))
    norm = lm.model.get_submodule(lay.final_norm)
    has_norm_bias = getattr(norm, "bias", None) is not None or \
        getattr(lm.model.get_output_embeddings(), "bias", None) is not None
    has_attn_bias = getattr(lm.model.get_submodule(lay.out_proj[0]), "bias", None) is not None
    return Attribution(p, t, c, logit, float(r @ stream[0][p]), torch.stack(heads), torch.tensor(attn_bias),
                       torch.tensor(mlps), bias, scale, lay.anatomy.norm_kind, has_attn_bias, has_norm_bias)


def direct_logit_attribution(lm: LoadedModel, text: str, position: int = -1, target: str | int | None = None,
                             contrast: str | int | None = None, max_tokens: int = 512) -> Attribution:
    """Run the model on `text` and attribute one logit (see `attribute`)."""
    return attribute(lm, capture_for_dla(lm, text, max_tokens), position, target, contrast)
