"""The attention half of the Forward pass page (steps 3-10), drawn from one layer's hand computation.

A `View` is what the user follows (one token, one layer, one head, the first n_dims dims); `Checks`
holds the places where a comparison with the model will appear once the parity check has run (it runs
after the page is drawn, so the first paint does not wait for every layer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import streamlit as st

from core.inspect import stepwise as sw
from core.models.capture import Capture
from core.models.loading import LoadedModel
from ui.charts import heatmap_image
from ui.forward import activation_formula, check, key_window, step, vectors
from ui.text import md, token_md


@dataclass
class Checks:
    """Placeholders filled from the Parity once it is computed: `later(fn)` reserves a slot here."""

    slots: list[tuple[object, Callable[[sw.Parity], None]]] = field(default_factory=list)

    def later(self, draw: Callable[[sw.Parity], None]) -> None:
        self.slots.append((st.empty(), draw))

    def fill(self, parity: sw.Parity) -> None:
        for slot, draw in self.slots:
            with slot.container():
                draw(parity)


@dataclass
class View:
    lm: LoadedModel
    cap: Capture
    a: sw.Anatomy
    text: str
    pos: int
    layer: int
    head: int
    n_dims: int
    steps: sw.LayerSteps | None  # the chosen layer's hand computation (None outside the layer section)
    checks: Checks

    @property
    def tok(self) -> str:
        """The followed token, whitespace made visible, safe for Markdown."""
        return token_md(self.cap.tokens[self.pos])


def head_images(weights, a: sw.Anatomy, labels: list[str]) -> None:
    """Small attention heatmaps ([heads, seq, seq]), grouped by the KV head their keys and values come from."""
    seq = weights.shape[-1]
    scale = max(1, 160 // seq)
    per_row = min(a.n_heads // a.n_kv_heads, 6) if a.gqa else min(a.n_heads, 6)
    rows = a.kv_groups if a.gqa else [list(range(g, min(g + per_row, a.n_heads))) for g in range(0, a.n_heads, per_row)]
    for g, heads in enumerate(rows):
        if a.gqa:
            st.markdown(f"KV head **{g}** is shared by query heads {', '.join(map(str, heads))}")
        for start in range(0, len(heads), per_row):
            cols = st.columns(per_row)
            for col, h in zip(cols, heads[start:start + per_row]):
                col.image(heatmap_image(np.asarray(weights[h]), scale=scale, vmin=0.0, vmax=1.0),
                          caption=f"head {h} · KV {a.kv_head_of(h)}" if a.gqa else f"head {h}")
    st.caption(f"Rows are queries, columns keys ({md(labels[0])} … {md(labels[-1])}); yellow = weight 1, purple = 0.")


def norm_step(v: View) -> None:
    """Step 3: the attention norm, with what it divides by for the followed token."""
    a, steps, pos, tok, seq = v.a, v.steps, v.pos, v.tok, v.cap.seq_len
    st.markdown(f"### Inside layer {v.layer} of {a.n_layers}")
    st.caption(f"The input is the model's own `hidden_states[{v.layer}]`, so each layer is checked on its own.")
    if a.norm_kind == "RMSNorm":
        step(3, f"{a.norm_kind} ({a.names.attn_norm})",
             r"h = \frac{x}{\sqrt{\tfrac{1}{d}\sum_i x_i^2 + \epsilon}} \odot g",
             f"Rescales every token to the same size before attention, so one loud token cannot dominate. "
             f"For {tok}: rms = {float(steps.extras['attn_norm_rms'][pos]):.4f}.", f"[{seq}, {a.hidden_size}]")
    else:
        step(3, f"{a.norm_kind} ({a.names.attn_norm})", r"h = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \odot g + b",
             f"Centres and rescales every token before attention. For {tok}: μ = "
             f"{float(steps.extras['attn_norm_mean'][pos]):.4f}, σ = {float(steps.extras['attn_norm_std'][pos]):.4f}.",
             f"[{seq}, {a.hidden_size}]")
    vectors({f"x (hidden_states[{v.layer}])": steps.layer_input[pos], "h = norm(x)": steps.attn_norm[pos]}, v.n_dims)


def projection_steps(v: View) -> None:
    """Steps 4-6: Q/K/V projections, heads and GQA, RoPE."""
    a, steps, pos, head, n_dims, seq, d = v.a, v.steps, v.pos, v.head, v.n_dims, v.cap.seq_len, v.a.head_dim
    if a.fused_qkv:
        step(4, f"Q, K, V projections (fused {a.names.qkv[0]})",
             r"[\,Q \mid K \mid V\,] = h\,W_{\mathrm{attn}} + b_{\mathrm{attn}}",
             "One matrix makes the three views of each token: what it looks for (Q), what it offers (K), "
             "what it passes on (V).", f"[{seq}, 3×{a.hidden_size}] → 3 × [{seq}, {a.hidden_size}]")
    else:
        step(4, "Q, K, V projections", r"Q = h W_Q^\top (+b_Q),\quad K = h W_K^\top (+b_K),\quad V = h W_V^\top (+b_V)",
             "What each token looks for (Q), what it offers (K), what it passes on (V). With grouped-query "
             "attention K and V are smaller than Q.",
             f"Q [{seq}, {a.n_heads * d}], K, V [{seq}, {a.n_kv_heads * d}]")
    vectors({"q": steps.q_proj[pos], "k": steps.k_proj[pos], "v": steps.v_proj[pos]}, n_dims)

    sharing = r",\quad K^{(h)} = K_{\mathrm{kv}}^{(\lfloor h / r \rfloor)},\ r = " + str(a.n_heads // a.n_kv_heads)
    step(5, "Split into heads" + (" and share K, V across query heads (GQA)" if a.gqa else ""),
         r"Q \to Q^{(h)} \in \mathbb{R}^{n \times d_{head}}" + (sharing if a.gqa else ""),
         "Heads attend independently, each in its own small subspace. "
         + (f"Here {a.n_heads} query heads share {a.n_kv_heads} KV heads (repeat_kv): a smaller KV cache."
            if a.gqa else "Every query head has its own K and V (multi-head attention)."),
         f"Q [{a.n_heads}, {seq}, {d}], K, V [{a.n_kv_heads}, {seq}, {d}]")
    if a.gqa:
        groups = pd.DataFrame({"KV head": list(range(a.n_kv_heads)),
                               "query heads": [", ".join(map(str, g)) for g in a.kv_groups]})
        st.dataframe(groups.set_index("KV head").T, width="stretch")
    vectors({f"q head {h}": steps.query_states[h, pos] for h in range(a.n_heads)}, min(n_dims, d))

    rope = steps.rope
    if rope is None:
        step(6, "Positions", r"\text{no rotation: } x^{(0)}_t \text{ already contains } W_P[t]",
             "GPT-2 style models add learned position vectors to the embeddings (step 2); attention sees "
             "positions only through them.")
        return
    theta = f"{rope.theta:g}" if rope.theta else "base"
    step(6, "RoPE: rotate queries and keys by their position",
         [r"q'_t = q_t \odot \cos(t\,\omega) + \mathrm{rotate\_half}(q_t) \odot \sin(t\,\omega)",
          r"\omega_i = " + theta + r"^{-2i/d},\quad \mathrm{rotate\_half}(q) = (-q_{d/2:d},\ q_{0:d/2})"],
         f"Each pair of dims (i, i+{d // 2}) turns by an angle proportional to the position, so Q·K depends "
         f"on how far apart two tokens are. Rotation keeps lengths: |q| = "
         f"{float(steps.query_states[head, pos].norm()):.4f} before, "
         f"{float(steps.query_rope[head, pos].norm()):.4f} after.", f"[{seq}, {d}] tables")
    kv_of = a.kv_head_of(head)
    vectors({f"angle t·ω (t={pos})": rope.angles[pos], "cos": rope.cos[pos], "sin": rope.sin[pos],
             f"q head {head} before": steps.query_states[head, pos],
             f"q head {head} after RoPE": steps.query_rope[head, pos],
             f"k KV head {kv_of} after RoPE": steps.key_rope[kv_of, pos]}, min(n_dims, d))
    if rope.rope_type != "default":
        st.caption(f"RoPE type `{rope.rope_type}`: the model's own inv_freq is used (scaled variant).")


def attention_weight_steps(v: View) -> None:
    """Steps 7-10: scores, causal mask, softmax (with the per-head heatmaps), context."""
    lm, cap, a, steps = v.lm, v.cap, v.a, v.steps
    pos, layer, n_dims = v.pos, v.layer, v.n_dims
    seq, labels, d = cap.seq_len, cap.labels, a.head_dim
    keys = key_window(seq, pos)
    step(7, "Attention scores", r"S^{(h)} = \frac{Q^{(h)} {K^{(h)}}^\top}{\sqrt{d_{head}}}",
         f"How well each query matches each key; dividing by √{d} keeps the scores in a range where "
         f"softmax is not saturated (scaling = {steps.scaling:.4g}).", f"[{a.n_heads}, {seq}, {seq}]")
    heads = [f"head {h}" for h in range(a.n_heads)]
    key_labels = [labels[j] for j in keys]
    scores = pd.DataFrame(np.asarray(steps.scores[:, pos, keys.start:keys.stop]), index=heads, columns=key_labels)
    st.caption(f"Scores of query {md(labels[pos])} against keys {md(labels[keys.start])} … "
               f"{md(labels[keys.stop - 1])}.")
    st.dataframe(scores.round(3), width="stretch")

    window = f" and sliding window {steps.sliding_window}" if steps.sliding_window else ""
    step(8, "Causal mask", r"M_{ij} = \begin{cases} 0 & j \le i \\ -\infty & j > i \end{cases}",
         f"A token may only look at itself and earlier tokens{window}: this is what lets the model be "
         "trained to predict the next token on every position at once.", f"[{seq}, {seq}]")
    mask = np.asarray(steps.mask)
    mask_col, mask_text = st.columns([1, 3])
    mask_col.image(heatmap_image(np.isfinite(mask).astype(np.float32), scale=max(1, 160 // seq)),
                   caption="yellow: allowed, purple: −∞")
    row = ["0" if np.isfinite(m) else "−∞" for m in mask[pos, keys.start:keys.stop].tolist()]
    mask_text.dataframe(pd.DataFrame([row], index=[f"M[{pos}, ·]"], columns=key_labels), width="stretch")

    step(9, "Softmax: attention weights", r"A^{(h)}_{ij} = \frac{e^{S_{ij} + M_{ij}}}{\sum_k e^{S_{ik} + M_{ik}}}",
         "Turns scores into weights that sum to 1 over the visible tokens: how much each earlier token "
         "contributes to this one.", f"[{a.n_heads}, {seq}, {seq}]")
    weights = pd.DataFrame(np.asarray(steps.attn_weights[:, pos, keys.start:keys.stop]), index=heads,
                           columns=key_labels)
    st.dataframe(weights.round(4), width="stretch")
    head_images(steps.attn_weights, a, labels)
    v.checks.later(lambda p: check(f"Attention weights of layer {layer}", p.attn_weights[layer], lm,
                                   "the model's `attentions`") if layer < len(p.attn_weights) else None)

    step(10, "Context: weighted sum of values",
         r"C^{(h)} = A^{(h)} V^{(h)},\quad C = [\,C^{(1)} \mid \dots \mid C^{(H)}\,]",
         "Each head gathers information from the tokens it attends to; the heads are then concatenated.",
         f"[{a.n_heads}, {seq}, {d}] → [{seq}, {a.n_heads * d}]")
    vectors({f"context head {h}": steps.context[h, pos] for h in range(a.n_heads)}, min(n_dims, d))


def mlp_steps(v: View) -> None:
    """Steps 11-14: output projection and residual, norm, MLP, block output with its parity check."""
    lm, a, steps = v.lm, v.a, v.steps
    pos, layer, n_dims, tok, seq = v.pos, v.layer, v.n_dims, v.tok, v.cap.seq_len
    step(11, f"Output projection ({a.names.out_proj}) + residual",
         r"x' = x + C\,W_{proj} + b_{proj}" if a.fused_qkv else r"x' = x + C\,W_O^\top\ (+\, b_O)",
         "Mixes the heads back into the residual stream; adding (not replacing) keeps what the token "
         "already knew and lets gradients flow through deep stacks.", f"[{seq}, {a.hidden_size}]")
    vectors({"x": steps.layer_input[pos], "attention output C W_O": steps.attn_output[pos],
             "x' = x + attn": steps.hidden_after_attn[pos]}, n_dims)

    stat = (f"rms = {float(steps.extras['mlp_norm_rms'][pos]):.4f}" if a.norm_kind == "RMSNorm"
            else f"μ = {float(steps.extras['mlp_norm_mean'][pos]):.4f}, "
                 f"σ = {float(steps.extras['mlp_norm_std'][pos]):.4f}")
    step(12, f"{a.norm_kind} ({a.names.mlp_norm})", r"h' = \mathrm{Norm}(x')",
         f"The MLP also gets a normalised input. For {tok}: {stat}.", f"[{seq}, {a.hidden_size}]")
    vectors({"x'": steps.hidden_after_attn[pos], "h' = norm(x')": steps.mlp_norm[pos]}, n_dims)

    inter = steps.mlp_gate.shape[-1]
    act, act_definition = activation_formula(a.activation)
    if a.gated_mlp:
        step(13, f"MLP ({a.mlp_kind})",
             [rf"\mathrm{{MLP}}(h') = W_{{down}}\big({act}(W_{{gate}} h') \odot W_{{up}} h'\big)", act_definition],
             "Works on each token alone: the gate decides, per hidden unit, how much of the up projection "
             "passes. Most of a layer's parameters live here.", f"[{seq}, {inter}] → [{seq}, {a.hidden_size}]")
        vectors({"gate = W_gate h'": steps.mlp_gate[pos], f"{a.activation}(gate)": steps.mlp_act[pos],
                 "up = W_up h'": steps.mlp_up[pos], "act(gate) ⊙ up": steps.mlp_hidden[pos]}, min(n_dims, inter))
    else:
        step(13, f"MLP ({a.mlp_kind})",
             [rf"\mathrm{{MLP}}(h') = {act}(h' W_{{fc}} + b_{{fc}})\,W_{{proj}} + b_{{proj}}", act_definition],
             f"Works on each token alone: widens to {inter // a.hidden_size}× the hidden size, bends with "
             f"{a.activation}, projects back. Most of a layer's parameters and much of its stored knowledge live here.",
             f"[{seq}, {inter}] → [{seq}, {a.hidden_size}]")
        vectors({f"{a.names.mlp_in[0]}(h')": steps.mlp_gate[pos], f"{a.activation}(·)": steps.mlp_act[pos]},
                min(n_dims, inter))
    vectors({"MLP output": steps.mlp_output[pos]}, n_dims)

    step(14, "Block output: second residual", r"x^{(L+1)} = x' + \mathrm{MLP}(h')",
         "The layer's contribution is added to the stream; the next layer reads the sum.", f"[{seq}, {a.hidden_size}]")
    vectors({"x'": steps.hidden_after_attn[pos], "MLP output": steps.mlp_output[pos],
             f"x⁽{layer + 1}⁾ (hand)": steps.layer_output[pos]}, n_dims)
    target = "the last block's output (hooked)" if layer == a.n_layers - 1 else f"hidden_states[{layer + 1}]"
    v.checks.later(lambda p: check(f"Layer {layer}", p.per_layer[layer], lm, target))

