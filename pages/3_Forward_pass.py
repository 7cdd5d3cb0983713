"""Forward pass, step by step: text -> tokens -> ... -> next-token probabilities, with the real tensors,
each layer recomputed by hand from its weights and checked against the model's own hidden states."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
import torch

from core.inspect import stepwise as sw
from core.models.capture import Capture, generation_room, greedy_continuation, token_display, top_k
from core.models.loading import LoadedModel
from ui.charts import heatmap_image
from ui.explain import how_computed
from ui.models import forward, model_picker

DEFAULT_TEXT = ("The cat sat on the mat because it was tired. Language models read text one token at a "
                "time and guess what comes")
MAX_KEYS_SHOWN = 48


# ---------------------------------------------------------------- cached calls into core


@st.cache_resource(show_spinner=False, max_entries=16)
def hand_layer(key: str, text: str, layer: int, _lm: LoadedModel, _cap: Capture) -> sw.LayerSteps:
    return sw.layer_by_hand(_lm, layer, _cap.hidden_states[layer])


@st.cache_resource(show_spinner="Recomputing every layer by hand and comparing with the model…", max_entries=16)
def hand_parity(key: str, text: str, _lm: LoadedModel, _cap: Capture) -> sw.Parity:
    return sw.parity(_lm, _cap, chained=True)


@st.cache_resource(show_spinner=False, max_entries=16)
def hand_embeddings(key: str, text: str, _lm: LoadedModel, _cap: Capture) -> sw.EmbeddingSteps:
    return sw.embeddings_by_hand(_lm, _cap.ids)


@st.cache_resource(show_spinner=False, max_entries=32)
def hand_final(key: str, text: str, position: int, _lm: LoadedModel, _cap: Capture) -> sw.FinalSteps:
    """Final norm and logits of one position ([1, hidden], [1, vocab]): the vocabulary is large."""
    last = sw.layer_targets(_lm, _cap)[-1]
    return sw.final_by_hand(_lm, last[position:position + 1])


@st.cache_resource(show_spinner=False, max_entries=16)
def stream_norms(key: str, text: str, _lm: LoadedModel, _cap: Capture) -> np.ndarray:
    return sw.residual_norms(_lm, _cap).numpy()


@st.cache_data(show_spinner="Generating the greedy continuation…", max_entries=32)
def continuation(key: str, ids: tuple[int, ...], n: int, _lm: LoadedModel) -> tuple[list[str], str]:
    new = greedy_continuation(_lm, list(ids), n)
    return _lm.token_strings(new), _lm.decode(new)


# ---------------------------------------------------------------- small display helpers


def step(number: int, title: str, formula: str | list[str], why: str, shape: str = "") -> None:
    """Heading, formula (several lines are stacked), one line on why the step matters, and the shape."""
    st.subheader(f"{number}. {title}")
    lines = [formula] if isinstance(formula, str) else formula
    st.latex(lines[0] if len(lines) == 1 else r"\begin{gathered}" + r" \\ ".join(lines) + r"\end{gathered}")
    st.markdown(why + (f"  \n**Shape** `{shape}`" if shape else ""))


def vectors(rows: dict[str, torch.Tensor | None], n_dims: int, start: int = 0) -> None:
    """One row per named vector, its dims [start, start + n_dims) as columns."""
    data = {name: v[start:start + n_dims].numpy() for name, v in rows.items() if v is not None}
    width = min(len(v) for v in data.values())
    df = pd.DataFrame(np.stack([v[:width] for v in data.values()]), index=list(data),
                      columns=[str(start + i) for i in range(width)])
    st.dataframe(df.round(4), width="stretch")


def check(label: str, diff: float, lm: LoadedModel, what: str = "the model") -> None:
    """A check mark with the figure: hand computation vs the model."""
    if lm.spec.dtype != "float32":
        st.caption(f"ℹ️ {label}: max |Δ| vs {what} = {diff:.2e} (the model runs in {lm.spec.dtype}; the "
                   f"hand computation in float32, so rounding differences are expected)")
    elif diff <= sw.PARITY_TOLERANCE:
        st.caption(f"✅ {label}: max |Δ| vs {what} = **{diff:.2e}** (≤ {sw.PARITY_TOLERANCE:.0e})")
    else:
        st.error(f"❌ {label}: max |Δ| vs {what} = {diff:.2e} (> {sw.PARITY_TOLERANCE:.0e})")


def clamp_state(key: str, high: int) -> None:
    """Keep a remembered slider value inside a new range (another model may have fewer layers or heads)."""
    if st.session_state.get(key, 0) > high:
        st.session_state[key] = high


def index_slider(label: str, count: int, key: str, help: str) -> int:
    """A 0..count-1 slider; a slider needs two values, so a single layer or head is just stated."""
    if count < 2:
        st.caption(f"{label}: 0 (the only one)")
        return 0
    return st.slider(label, 0, count - 1, 0, key=key, help=help)


def key_window(seq: int, position: int) -> range:
    """Which keys to list for a query: all when few, else the MAX_KEYS_SHOWN ending just past the query."""
    if seq <= MAX_KEYS_SHOWN:
        return range(seq)
    end = min(seq, position + 2)
    return range(max(0, end - MAX_KEYS_SHOWN), end)


def head_images(weights: torch.Tensor, a: sw.Anatomy, labels: list[str]) -> None:
    """Small attention heatmaps, grouped by the KV head their keys and values come from."""
    seq = weights.shape[-1]
    scale = max(1, 160 // seq)
    per_row = min(a.n_heads // a.n_kv_heads, 6) if a.n_kv_heads < a.n_heads else min(a.n_heads, 6)
    for g, group in enumerate(a.kv_groups):
        if a.n_kv_heads < a.n_heads:
            st.markdown(f"KV head **{g}** is shared by query heads {', '.join(map(str, group))}")
        elif g % per_row:
            continue
        heads = group if a.n_kv_heads < a.n_heads else list(range(g, min(g + per_row, a.n_heads)))
        for start in range(0, len(heads), per_row):
            cols = st.columns(per_row)
            for col, h in zip(cols, heads[start:start + per_row]):
                col.image(heatmap_image(weights[h].numpy(), scale=scale, vmin=0.0, vmax=1.0),
                          caption=f"head {h} · KV {h * a.n_kv_heads // a.n_heads}" if a.n_kv_heads < a.n_heads
                          else f"head {h}")
    st.caption(f"Rows are queries, columns keys ({labels[0]} … {labels[-1]}); yellow = weight 1, purple = 0.")


# ---------------------------------------------------------------- the page


@dataclass
class View:
    """What the user follows: one token, one layer, one head, the first n_dims dims."""

    lm: LoadedModel
    cap: Capture
    a: sw.Anatomy
    text: str
    pos: int
    layer: int
    head: int
    n_dims: int
    parity: sw.Parity
    steps: sw.LayerSteps

    @property
    def tok(self) -> str:
        return token_display(self.cap.tokens[self.pos])


def controls(lm: LoadedModel, cap: Capture, a: sw.Anatomy, text: str) -> View:
    """Sidebar widgets; the cached hand computation for the chosen layer."""
    labels = cap.labels
    for name, high in (("fp_layer", a.n_layers - 1), ("fp_head", a.n_heads - 1), ("fp_dims", min(a.hidden_size, 1024))):
        clamp_state(name, high)
    with st.sidebar:
        st.markdown("**Step-by-step controls**")
        pos = st.selectbox("Token to follow", range(cap.seq_len), index=cap.seq_len - 1,
                           format_func=lambda i: labels[i], help="The values shown at each step are this token's row.")
        layer = index_slider("Layer", a.n_layers, "fp_layer",
                             "Every layer step below is recomputed from this layer's weights.")
        head = index_slider("Head", a.n_heads, "fp_head", "The head followed in the RoPE details.")
        n_dims = st.slider("Dimensions shown", 1, min(a.hidden_size, 1024), min(8, a.hidden_size), key="fp_dims",
                           help="How many of the first dimensions of each vector to list.")
    key = lm.spec.key
    return View(lm, cap, a, text, pos, layer, head, n_dims, hand_parity(key, text, lm, cap),
                hand_layer(key, text, layer, lm, cap))


def parity_banner(v: View) -> None:
    lm, a, parity = v.lm, v.a, v.parity
    if lm.spec.dtype == "float32" and parity.ok:
        st.success(f"✅ The hand computation reproduces the model at every layer: worst max |Δ| = "
                   f"**{parity.worst:.2e}** over embeddings, {a.n_layers} layers and the final norm "
                   f"(tolerance {sw.PARITY_TOLERANCE:.0e}, float32).")
    elif lm.spec.dtype == "float32":
        st.error(f"❌ The hand computation differs from the model by up to {parity.worst:.2e} "
                 f"(tolerance {sw.PARITY_TOLERANCE:.0e}).")
    else:
        st.info(f"The model runs in {lm.spec.dtype}; the hand computation in float32 differs by up to "
                f"{parity.worst:.2e}, which is {lm.spec.dtype} rounding. Load it in float32 for the 1e-4 check.")
    st.caption(f"{a.norm_kind} · {a.mlp_kind} · {a.positions} positions · {a.n_heads} heads / "
               f"{a.n_kv_heads} KV heads · head dim {a.head_dim} · following token **{v.cap.labels[v.pos]}**, "
               f"layer **{v.layer}**, head **{v.head}** (controls in the sidebar)")


def embeddings_step(v: View) -> None:
    """Step 2: token (and learned position) embeddings, checked against hidden_states[0]."""
    lm, cap, a, parity, pos, n_dims = v.lm, v.cap, v.a, v.parity, v.pos, v.n_dims
    seq = cap.seq_len
    # 2. embeddings ----------------------------------------------------------------------------
    if a.style == "gpt2":
        step(2, "Embeddings", r"x^{(0)}_t = W_E[\mathrm{id}_t] + W_P[t]",
             "Each id picks a row of the embedding matrix; GPT-2 adds a learned vector for the position, "
             "the only place it learns where a token is.", f"[{seq}, {a.hidden_size}]")
    else:
        step(2, "Embeddings", r"x^{(0)}_t = W_E[\mathrm{id}_t]",
             "Each id picks a row of the embedding matrix: the token's starting vector. No position is "
             "added here; RoPE injects it inside attention.", f"[{seq}, {a.hidden_size}]")
    emb = hand_embeddings(lm.spec.key, v.text, lm, cap)
    vectors({f"W_E[{cap.ids[pos]}]": emb.token_embeddings[pos],
             f"W_P[{pos}]": None if emb.position_embeddings is None else emb.position_embeddings[pos],
             "x⁽⁰⁾": emb.hidden_states[pos]}, n_dims)
    check("Embeddings", parity.embeddings, lm, "hidden_states[0]")


def attention_input_steps(v: View) -> None:
    """Steps 3-6: norm, Q/K/V projections, heads and GQA, RoPE."""
    cap, a, steps = v.cap, v.a, v.steps
    pos, layer, head, n_dims, tok = v.pos, v.layer, v.head, v.n_dims, v.tok
    seq, d = cap.seq_len, a.head_dim
    # 3. layer input and norm ------------------------------------------------------------------
    st.divider()
    st.markdown(f"### Inside layer {layer} of {a.n_layers}")
    st.caption(f"The input is the model's own `hidden_states[{layer}]`, so each layer is checked on its own.")
    norm_name = "ln_1" if a.style == "gpt2" else "input_layernorm"
    if a.norm_kind == "RMSNorm":
        step(3, f"{a.norm_kind} ({norm_name})",
             r"h = \frac{x}{\sqrt{\tfrac{1}{d}\sum_i x_i^2 + \epsilon}} \odot g",
             f"Rescales every token to the same size before attention, so one loud token cannot dominate. "
             f"For {tok}: rms = {float(steps.extras['attn_norm_rms'][pos]):.4f}.", f"[{seq}, {a.hidden_size}]")
    else:
        step(3, f"{a.norm_kind} ({norm_name})", r"h = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \odot g + b",
             f"Centres and rescales every token before attention. For {tok}: μ = "
             f"{float(steps.extras['attn_norm_mean'][pos]):.4f}, σ = {float(steps.extras['attn_norm_std'][pos]):.4f}.",
             f"[{seq}, {a.hidden_size}]")
    vectors({f"x (hidden_states[{layer}])": steps.layer_input[pos], "h = norm(x)": steps.attn_norm[pos]}, n_dims)

    # 4. Q, K, V -------------------------------------------------------------------------------
    if a.style == "gpt2":
        step(4, "Q, K, V projections (fused c_attn)",
             r"[\,Q \mid K \mid V\,] = h\,W_{\mathrm{attn}} + b_{\mathrm{attn}}",
             "One matrix makes the three views of each token: what it looks for (Q), what it offers (K), "
             "what it passes on (V).", f"[{seq}, 3×{a.hidden_size}] → 3 × [{seq}, {a.hidden_size}]")
    else:
        step(4, "Q, K, V projections", r"Q = h W_Q^\top (+b_Q),\quad K = h W_K^\top (+b_K),\quad V = h W_V^\top (+b_V)",
             "What each token looks for (Q), what it offers (K), what it passes on (V). With grouped-query "
             "attention K and V are smaller than Q.",
             f"Q [{seq}, {a.n_heads * d}], K, V [{seq}, {a.n_kv_heads * d}]")
    vectors({"q": steps.q_proj[pos], "k": steps.k_proj[pos], "v": steps.v_proj[pos]}, n_dims)

    # 5. heads and GQA -------------------------------------------------------------------------
    gqa = a.n_kv_heads < a.n_heads
    sharing = r",\quad K^{(h)} = K_{\mathrm{kv}}^{(\lfloor h / r \rfloor)},\ r = " + str(a.n_heads // a.n_kv_heads)
    step(5, "Split into heads" + (" and share K, V across query heads (GQA)" if gqa else ""),
         r"Q \to Q^{(h)} \in \mathbb{R}^{n \times d_{head}}"
         + (sharing if gqa else ""),
         "Heads attend independently, each in its own small subspace. "
         + (f"Here {a.n_heads} query heads share {a.n_kv_heads} KV heads (repeat_kv): a smaller KV cache."
            if gqa else "Every query head has its own K and V (multi-head attention)."),
         f"Q [{a.n_heads}, {seq}, {d}], K, V [{a.n_kv_heads}, {seq}, {d}]")
    if gqa:
        groups = pd.DataFrame({"KV head": list(range(a.n_kv_heads)),
                               "query heads": [", ".join(map(str, g)) for g in a.kv_groups]})
        st.dataframe(groups.set_index("KV head").T, width="stretch")
    vectors({f"q head {h}": steps.query_states[h, pos] for h in range(a.n_heads)}, min(n_dims, d))

    # 6. RoPE ----------------------------------------------------------------------------------
    if a.positions == "RoPE" and steps.rope is not None:
        rope = steps.rope
        theta = f"{rope.theta:g}" if rope.theta else "base"
        step(6, "RoPE: rotate queries and keys by their position",
             [r"q'_t = q_t \odot \cos(t\,\omega) + \mathrm{rotate\_half}(q_t) \odot \sin(t\,\omega)",
              r"\omega_i = " + theta + r"^{-2i/d},\quad \mathrm{rotate\_half}(q) = (-q_{d/2:d},\ q_{0:d/2})"],
             f"Each pair of dims (i, i+{d // 2}) turns by an angle proportional to the position, so Q·K depends "
             f"on how far apart two tokens are. Rotation keeps lengths: |q| = "
             f"{float(steps.query_states[head, pos].norm()):.4f} before, "
             f"{float(steps.query_rope[head, pos].norm()):.4f} after.", f"[{seq}, {d}] tables")
        nd = min(n_dims, d)
        kv_of = head * a.n_kv_heads // a.n_heads
        vectors({f"angle t·ω (t={pos})": rope.angles[pos], "cos": rope.cos[pos], "sin": rope.sin[pos],
                 f"q head {head} before": steps.query_states[head, pos],
                 f"q head {head} after RoPE": steps.query_rope[head, pos],
                 f"k KV head {kv_of} after RoPE": steps.key_rope[kv_of, pos]}, nd)
        if rope.rope_type != "default":
            st.caption(f"RoPE type `{rope.rope_type}`: the model's own inv_freq is used (scaled variant).")
    else:
        step(6, "Positions", r"\text{no rotation: } x^{(0)}_t \text{ already contains } W_P[t]",
             "GPT-2 style models add learned position vectors to the embeddings (step 2); attention sees "
             "positions only through them.")


def attention_weight_steps(v: View) -> None:
    """Steps 7-10: scores, causal mask, softmax (with the per-head heatmaps), context."""
    lm, cap, a, steps, parity = v.lm, v.cap, v.a, v.steps, v.parity
    pos, layer, n_dims = v.pos, v.layer, v.n_dims
    seq, labels, d = cap.seq_len, cap.labels, a.head_dim
    # 7. scores --------------------------------------------------------------------------------
    keys = key_window(seq, pos)
    step(7, "Attention scores", r"S^{(h)} = \frac{Q^{(h)} {K^{(h)}}^\top}{\sqrt{d_{head}}}",
         f"How well each query matches each key; dividing by √{d} keeps the scores in a range where "
         f"softmax is not saturated (scaling = {steps.scaling:.4g}).", f"[{a.n_heads}, {seq}, {seq}]")
    heads = [f"head {h}" for h in range(a.n_heads)]
    key_labels = [labels[j] for j in keys]
    scores = pd.DataFrame(steps.scores[:, pos, keys.start:keys.stop].numpy(), index=heads, columns=key_labels)
    st.caption(f"Scores of query {labels[pos]} against keys {labels[keys.start]} … {labels[keys.stop - 1]}.")
    st.dataframe(scores.round(3), width="stretch")

    # 8. causal mask ---------------------------------------------------------------------------
    window = f" and sliding window {steps.sliding_window}" if steps.sliding_window else ""
    step(8, "Causal mask", r"M_{ij} = \begin{cases} 0 & j \le i \\ -\infty & j > i \end{cases}",
         f"A token may only look at itself and earlier tokens{window}: this is what lets the model be "
         "trained to predict the next token on every position at once.", f"[{seq}, {seq}]")
    mask_col, mask_text = st.columns([1, 3])
    mask_col.image(heatmap_image(np.isfinite(steps.mask.numpy()).astype(np.float32), scale=max(1, 160 // seq)),
                   caption="yellow: allowed, purple: −∞")
    row = ["0" if np.isfinite(m) else "−∞" for m in steps.mask[pos, keys.start:keys.stop].tolist()]
    mask_text.dataframe(pd.DataFrame([row], index=[f"M[{pos}, ·]"], columns=key_labels), width="stretch")

    # 9. softmax -------------------------------------------------------------------------------
    step(9, "Softmax: attention weights", r"A^{(h)}_{ij} = \frac{e^{S_{ij} + M_{ij}}}{\sum_k e^{S_{ik} + M_{ik}}}",
         "Turns scores into weights that sum to 1 over the visible tokens: how much each earlier token "
         "contributes to this one.", f"[{a.n_heads}, {seq}, {seq}]")
    weights = pd.DataFrame(steps.attn_weights[:, pos, keys.start:keys.stop].numpy(), index=heads, columns=key_labels)
    st.dataframe(weights.round(4), width="stretch")
    head_images(steps.attn_weights, a, labels)
    if layer < len(parity.attn_weights):
        check(f"Attention weights of layer {layer}", parity.attn_weights[layer], lm, "the model's `attentions`")

    # 10. context ------------------------------------------------------------------------------
    step(10, "Context: weighted sum of values",
         r"C^{(h)} = A^{(h)} V^{(h)},\quad C = [\,C^{(1)} \mid \dots \mid C^{(H)}\,]",
         "Each head gathers information from the tokens it attends to; the heads are then concatenated.",
         f"[{a.n_heads}, {seq}, {d}] → [{seq}, {a.n_heads * d}]")
    vectors({f"context head {h}": steps.context[h, pos] for h in range(a.n_heads)}, min(n_dims, d))


def mlp_steps(v: View) -> None:
    """Steps 11-14: output projection and residual, norm, MLP, block output with its parity check."""
    lm, a, steps, parity = v.lm, v.a, v.steps, v.parity
    pos, layer, n_dims, tok, seq = v.pos, v.layer, v.n_dims, v.tok, v.cap.seq_len
    # 11. output projection + residual ---------------------------------------------------------
    o_name = "c_proj" if a.style == "gpt2" else "o_proj"
    step(11, f"Output projection ({o_name}) + residual",
         r"x' = x + C\,W_{proj} + b_{proj}" if a.style == "gpt2" else r"x' = x + C\,W_O^\top\ (+\, b_O)",
         "Mixes the heads back into the residual stream; adding (not replacing) keeps what the token "
         "already knew and lets gradients flow through deep stacks.", f"[{seq}, {a.hidden_size}]")
    vectors({"x": steps.layer_input[pos], "attention output C W_O": steps.attn_output[pos],
             "x' = x + attn": steps.hidden_after_attn[pos]}, n_dims)

    # 12. post-attention norm ------------------------------------------------------------------
    norm2 = "ln_2" if a.style == "gpt2" else "post_attention_layernorm"
    stat = (f"rms = {float(steps.extras['mlp_norm_rms'][pos]):.4f}" if a.norm_kind == "RMSNorm"
            else f"μ = {float(steps.extras['mlp_norm_mean'][pos]):.4f}, "
                 f"σ = {float(steps.extras['mlp_norm_std'][pos]):.4f}")
    step(12, f"{a.norm_kind} ({norm2})", r"h' = \mathrm{Norm}(x')",
         f"The MLP also gets a normalised input. For {tok}: {stat}.", f"[{seq}, {a.hidden_size}]")
    vectors({"x'": steps.hidden_after_attn[pos], "h' = norm(x')": steps.mlp_norm[pos]}, n_dims)

    # 13. MLP ----------------------------------------------------------------------------------
    inter = steps.mlp_gate.shape[-1]
    act, act_definition = sw.activation_formula(a.activation)
    if a.style == "gpt2":
        step(13, f"MLP ({a.mlp_kind})",
             [rf"\mathrm{{MLP}}(h') = {act}(h' W_{{fc}} + b_{{fc}})\,W_{{proj}} + b_{{proj}}", act_definition],
             f"Works on each token alone: widens to {inter // a.hidden_size}× the hidden size, bends with "
             f"{a.activation}, projects back. Most of a layer's parameters and much of its stored knowledge live here.",
             f"[{seq}, {inter}] → [{seq}, {a.hidden_size}]")
        vectors({"c_fc(h')": steps.mlp_gate[pos], f"{a.activation}(·)": steps.mlp_act[pos]}, min(n_dims, inter))
    else:
        step(13, f"MLP ({a.mlp_kind})",
             [rf"\mathrm{{MLP}}(h') = W_{{down}}\big({act}(W_{{gate}} h') \odot W_{{up}} h'\big)", act_definition],
             "Works on each token alone: the gate decides, per hidden unit, how much of the up projection "
             "passes. Most of a layer's parameters live here.", f"[{seq}, {inter}] → [{seq}, {a.hidden_size}]")
        vectors({"gate = W_gate h'": steps.mlp_gate[pos], f"{a.activation}(gate)": steps.mlp_act[pos],
                 "up = W_up h'": steps.mlp_up[pos], "act(gate) ⊙ up": steps.mlp_hidden[pos]}, min(n_dims, inter))
    vectors({"MLP output": steps.mlp_output[pos]}, n_dims)

    # 14. block output -------------------------------------------------------------------------
    step(14, "Block output: second residual", r"x^{(L+1)} = x' + \mathrm{MLP}(h')",
         "The layer's contribution is added to the stream; the next layer reads the sum.", f"[{seq}, {a.hidden_size}]")
    vectors({"x'": steps.hidden_after_attn[pos], "MLP output": steps.mlp_output[pos],
             f"x⁽{layer + 1}⁾ (hand)": steps.layer_output[pos]}, n_dims)
    target = "the last block's output (hooked)" if layer == a.n_layers - 1 else f"hidden_states[{layer + 1}]"
    check(f"Layer {layer}", parity.per_layer[layer], lm, target)


def stack_steps(v: View) -> sw.FinalSteps:
    """Steps 15-17: all layers, final norm, logits."""
    lm, cap, a, parity, pos, n_dims, tok = v.lm, v.cap, v.a, v.parity, v.pos, v.n_dims, v.tok
    seq = cap.seq_len
    # 15. all layers ---------------------------------------------------------------------------
    st.divider()
    step(15, "All layers", r"x^{(N)} = \mathrm{Block}_{N-1}\big(\cdots \mathrm{Block}_0(x^{(0)})\big)",
         f"The same computation, with each layer's own weights, {a.n_layers} times. Each layer was "
         "recomputed by hand from the model's input to it and compared with the model's output.",
         f"{a.n_layers} × [{seq}, {a.hidden_size}]")
    diffs = pd.DataFrame({"layer output": parity.per_layer,
                          "attention weights": parity.attn_weights or [float("nan")] * a.n_layers},
                         index=[f"layer {i}" for i in range(a.n_layers)]).T
    st.markdown("**Hand computation vs the model, max |Δ| per layer**")
    st.dataframe(diffs.map(lambda v: f"{v:.1e}"), width="stretch")
    if parity.worst == 0.0:
        st.caption("Zero means bit-for-bit identical: the same float32 operations in the same order as the "
                   "model's own code, only written out.")
    norms = stream_norms(lm.spec.key, v.text, lm, cap)
    norm_df = pd.DataFrame({"after layer": ["emb", *map(str, range(a.n_layers))], "‖x‖": norms[:, pos]})
    line = alt.Chart(norm_df).mark_line(point=True).encode(
        x=alt.X("after layer:N", sort=None), y="‖x‖:Q", tooltip=["after layer", "‖x‖"]).properties(
        height=220, title=f"Length of {tok}'s residual stream after each layer")
    st.altair_chart(line, width="stretch")
    if parity.chained_logits is not None:
        check("Whole stack by hand from the ids alone (each layer fed the previous hand output), logits",
              parity.chained_logits, lm, "the model's logits")

    # 16. final norm and logits ----------------------------------------------------------------
    final = hand_final(lm.spec.key, v.text, pos, lm, cap)
    step(16, "Final norm", r"h_{\mathrm{final}} = \mathrm{Norm}(x^{(N)})",
         "One last normalisation so the output head sees vectors of a steady size. In transformers 5 the "
         "last entry of `hidden_states` is already this normalised tensor.", f"[{seq}, {a.hidden_size}]")
    vectors({"x⁽ᴺ⁾": sw.layer_targets(lm, cap)[-1][pos], "h_final": final.final_norm[0]}, n_dims)
    check("Final norm", parity.final_norm, lm, "hidden_states[-1]")
    tied = bool(getattr(lm.config, "tie_word_embeddings", False))
    step(17, "Logits", r"z = h_{\mathrm{final}}\, W_U^\top" + (r",\quad W_U = W_E \text{ (tied)}" if tied else ""),
         "A score for every token of the vocabulary: the dot product of the final vector with each "
         "token's output vector" + (" (the same matrix as the input embeddings)." if tied else "."),
         f"[{seq}, {a.vocab_size}]")
    st.caption(f"The first entries of {tok}'s logits: columns are token ids.")
    vectors({"z (by hand)": final.logits[0], "z (model)": cap.logits[pos]}, n_dims)
    check("Logits", parity.logits, lm, "the model's logits")
    return final


def model_outputs(lm: LoadedModel, cap: Capture, final: sw.FinalSteps | None, pos: int) -> None:
    """Top-k next tokens and the greedy continuation: read from the model itself."""
    step(18, "Softmax over the vocabulary: next-token probabilities", r"p(v) = \frac{e^{z_v}}{\sum_u e^{z_u}}",
         f"The model's belief about the token that follows {cap.labels[pos]}.", f"[{lm.config.vocab_size}]")
    k = st.slider("Top-k", 1, 50, 10, key="fp_topk")
    rows = top_k(lm, cap.next_token_probs(pos), k)
    table = pd.DataFrame(rows)
    table["token"] = table["token"].map(token_display)
    config = {"prob": st.column_config.NumberColumn("prob (model)", format="%.5f")}
    if final is not None:
        table["hand prob"] = final.probs[0][table["id"].tolist()].numpy()
        config["hand prob"] = st.column_config.NumberColumn("prob (by hand)", format="%.5f")
    left, right = st.columns(2)
    left.dataframe(table, width="stretch", hide_index=True, column_config=config)
    chart = alt.Chart(table).mark_bar().encode(
        x=alt.X("prob:Q", title="probability"), y=alt.Y("token:N", sort="-x", title=None), tooltip=list(table.columns))
    # fit-x: the height is the bars' own (plain "fit" counts the axis in it and hides every other label)
    right.altair_chart(chart.properties(height=max(40, 22 * len(table)),
                                        autosize=alt.AutoSizeParams(type="fit-x", contains="padding")),
                       width="stretch")

    step(19, "Chosen token and greedy continuation", r"\text{next} = \arg\max_v\, p(v)",
         "Greedy decoding appends the most likely token and runs the model again, one token at a time. "
         "The continuation starts after the whole text.")
    st.markdown(f"Most likely after {cap.labels[pos]}: **{token_display(rows[0]['token'])}** "
                f"(id {rows[0]['id']}, p = {rows[0]['prob']:.3f})")
    n_new = st.slider("Greedy continuation length (tokens)", 0, 50, 12, key="fp_generate")
    room = generation_room(lm, cap.seq_len)
    if n_new and room is not None and room < n_new:
        st.info(f"The text fills {cap.seq_len:,} of the model's {cap.seq_len + room:,} positions: "
                + (f"only {room} more token{'s' if room != 1 else ''} fit." if room else "no more tokens fit. "
                   "Shorten the text to see a continuation."))
    if n_new and room != 0:
        new_tokens, new_text = continuation(lm.spec.key, tuple(cap.ids), n_new, lm)
        prompt = lm.decode(cap.ids)
        st.code(("…" if len(prompt) > 300 else "") + prompt[-300:] + " ⟶" + new_text, language=None,
                wrap_lines=True)
        st.caption("Generated tokens: " + " · ".join(token_display(t) for t in new_tokens))


def tokens_step(cap: Capture) -> None:
    step(1, "Text → tokens → ids",
         r"\text{text} \to (t_0, \dots, t_{n-1}) \to (\mathrm{id}_0, \dots, \mathrm{id}_{n-1})",
         "The model never sees characters: the tokenizer cuts the text into pieces from a fixed vocabulary "
         "and each piece becomes an integer.", f"[{cap.seq_len}]")
    table = pd.DataFrame({"token": [token_display(t) for t in cap.tokens], "id": [str(i) for i in cap.ids]})
    st.dataframe(table.T, width="stretch")


st.title("➡️ Forward pass, step by step")
lm = model_picker()
st.markdown("From your text to the next-token probabilities, with the model's real tensors. Every layer step "
            "is **recomputed by hand from that layer's weights** and checked against the model's own hidden "
            "states. Pick the token, layer and head to follow in the sidebar.")
text = st.text_area("Text", DEFAULT_TEXT, height=90, key="fp_text")

try:
    anatomy: sw.Anatomy | None = sw.anatomy(lm)
    unsupported = None
except sw.UnsupportedModel as exc:
    anatomy, unsupported = None, str(exc)

capture = forward(lm, text, hook_modules=sw.parity_hooks(lm) if anatomy else ())
if capture is not None:
    tokens_step(capture)
    final_steps, position = None, capture.seq_len - 1
    if anatomy is None:
        st.warning(unsupported)
    else:
        view = controls(lm, capture, anatomy, text)
        parity_banner(view)
        embeddings_step(view)
        attention_input_steps(view)
        attention_weight_steps(view)
        mlp_steps(view)
        final_steps, position = stack_steps(view), view.pos
    model_outputs(lm, capture, final_steps, position)

shown_text = shlex.quote(text) if 0 < len(text) <= 300 else '"$(cat your_text.txt)"'
how_computed(sw.layer_by_hand, sw.parity, sw.rope_tables,
             command=f"python -m core forward {lm.spec.cli()} --text {shown_text} --top-k 10 --check-parity")
