"""A contribution graph over layers x positions: the routes that carried one prediction
(in the spirit of Ferrando & Voita 2024, "Information flow routes", the graph the LLM Transparency Tool draws).

Layer l's attention adds to position i a sum of per-source vectors (plus the output bias):
    attn_out_i = sum_j z_ij + b_O,      z_ij = sum_h A[h, i, j] W_O[h] v_j^(kv(h))
and the new stream is x_i + attn_out_i. Each term t of  y = x_i + sum_j z_ij (+ b_O)  gets its share by
proximity to the total (Ferrando & Voita's importance):
    share(t) = max(0, ||y||_1 - ||y - t||_1) / sum over the terms of the same
Edge (l, j) -> (l+1, i) carries share(z_ij), plus share(x_i) when j = i (the residual route). The MLP's
share of the second update, mid_i + mlp_i, is kept per node (how much of that position's update the MLP wrote).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.circuits.components import Layout, head_weights, layout
from core.inspect.attention import kv_head_of
from core.inspect.lens import lens_hook_modules, lens_logits, residual_stream
from core.models.capture import Capture, InputError, run_forward
from core.models.loading import LoadedModel

MAX_TOKENS = 32  # the graph has layers x positions^2 edges; beyond ~32 tokens it is unreadable anyway


@dataclass
class ContributionGraph:
    tokens: list[str]
    attn_share: torch.Tensor  # [layers, seq (to i), seq (from j)] share of z_ij (+ residual on the diagonal)
    top_head: torch.Tensor  # [layers, seq, seq] the head with the largest |A W_O v| on that edge
    mlp_share: torch.Tensor  # [layers, seq] the MLP's share of the second update at each position
    lens_top: list[list[list[tuple[str, float]]]]  # [layers + 1][seq] top-3 (token, prob) through the logit lens
    target_position: int
    reconstruction_error: float  # max |sum_j z_ij + b_O - the model's attention output| / max |output| (float32)

    @property
    def n_layers(self) -> int:
        return self.attn_share.shape[0]

    def edges(self, threshold: float) -> list[tuple[int, int, int, float]]:
        """[(layer, from j, to i, share)]: edges of at least `threshold` on a route to the target node
        (layer L, target position), found backwards from it."""
        keep = {self.target_position}
        out = []
        for layer in range(self.n_layers - 1, -1, -1):
            reached = set()
            for i in sorted(keep):
                for j in range(i + 1):
                    w = float(self.attn_share[layer, i, j])
                    if w >= threshold:
                        out.append((layer, j, i, w))
                        reached.add(j)
            keep = reached
            if not keep:
                break
        return out


def proximity_shares(terms: torch.Tensor) -> torch.Tensor:
    """[n] shares of terms [n, hidden] in their sum: max(0, ||y||_1 - ||y - t||_1), normalised to sum 1."""
    y = terms.sum(0)
    raw = (y.abs().sum() - (y[None] - terms).abs().sum(-1)).clamp(min=0)
    return raw / raw.sum().clamp(min=1e-12)


def _values(lm: LoadedModel, lay: Layout, cap: Capture, layer: int) -> torch.Tensor:
    """[kv_heads, seq, d] the value vectors of one layer, read from the recorded projection outputs."""
    a = lay.anatomy
    if a.fused_qkv:  # GPT-2: c_attn's output is [q | k | v]
        qkv = cap.module_outputs[f"{a.layer_names[layer]}.{a.names.attention}.c_attn"]
        v = qkv[:, 2 * a.hidden_size:]
    else:
        v = cap.module_outputs[f"{a.layer_names[layer]}.{a.names.attention}.v_proj"]
    return v.reshape(v.shape[0], a.n_kv_heads, a.head_dim).transpose(0, 1)


def graph_hooks(lay: Layout) -> tuple[str, ...]:
    a = lay.anatomy
    qkv = ("c_attn",) if a.fused_qkv else ("v_proj",)
    return (*[f"{b}.{a.names.attention}.{n}" for b in a.layer_names for n in qkv], *lay.out_proj, *lay.mlp)


def contribution_graph(lm: LoadedModel, text: str, position: int = -1) -> ContributionGraph:
    """Shares of every attention route and MLP at every layer, for a text of at most MAX_TOKENS tokens."""
    lay = layout(lm)
    a = lay.anatomy
    cap = run_forward(lm, text, max_tokens=MAX_TOKENS,
                      hook_modules=(*graph_hooks(lay), *lens_hook_modules(lm.model)))
    if not cap.attentions:
        raise InputError("This model returned no attention weights (it needs eager attention).")
    seq = cap.seq_len
    if not -seq <= position < seq:
        raise InputError(f"Position {position} is outside the {seq} tokens (0..{seq - 1}).")
    stream = residual_stream(lm.model, cap)
    attn_share, top_head, mlp_share, worst = [], [], [], 0.0
    for layer in range(lay.n_layers):
        v = _values(lm, lay, cap, layer)  # [kv, seq, d]
        w_o = head_weights(lm.model.get_submodule(lay.out_proj[layer]), a.n_heads, a.head_dim)  # [H, hidden, d]
        kv = torch.tensor([kv_head_of(h, a.n_heads, a.n_kv_heads) for h in range(a.n_heads)])
        ov = torch.einsum("hkd,hjd->hjk", w_o, v[kv])  # [H, seq(j), hidden]: W_O[h] v_j
        z_h = cap.attentions[layer][:, :, :, None] * ov[:, None]  # [H, i, j, hidden]
        z = z_h.sum(0)  # [i, j, hidden]
        top_head.append(z_h.norm(dim=-1).argmax(0))
        bias = getattr(lm.model.get_submodule(lay.out_proj[layer]), "bias", None)
        rebuilt = z.sum(1) + (bias.detach().float().cpu() if bias is not None else 0.0)
        out = cap.module_outputs[lay.out_proj[layer]]
        worst = max(worst, float((rebuilt - out).abs().max() / out.abs().max().clamp(min=1.0)))
        shares = torch.zeros(seq, seq)
        for i in range(seq):
            terms = [stream[layer][i][None], z[i, :i + 1]]
            if bias is not None:
                terms.append(bias.detach().float().cpu()[None])
            s = proximity_shares(torch.cat(terms))
            shares[i, :i + 1] = s[1:i + 2]
            shares[i, i] += s[0]  # the residual route stays on the diagonal
        attn_share.append(shares)
        mid = stream[layer] + cap.module_outputs[lay.out_proj[layer]]
        mlp = cap.module_outputs[lay.mlp[layer]]
        mlp_share.append(torch.stack([proximity_shares(torch.stack([mid[i], mlp[i]]))[1] for i in range(seq)]))
    lens_top = []
    for hidden in stream:
        p = torch.softmax(lens_logits(lm.model, hidden), -1)
        values, ids = torch.topk(p, 3, dim=-1)
        names = lm.token_strings(ids.flatten().tolist())
        lens_top.append([[(names[i * 3 + k], float(values[i, k])) for k in range(3)] for i in range(seq)])
    return ContributionGraph(cap.tokens, torch.stack(attn_share), torch.stack(top_head), torch.stack(mlp_share),
                             lens_top, position % seq, worst)
