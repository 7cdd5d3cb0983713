"""Forward pass, step by step: text -> tokens -> ... -> next-token probabilities, with the real tensors,
each layer recomputed by hand from its weights and checked against the model's own hidden states."""

from __future__ import annotations

import shlex
from dataclasses import replace

import altair as alt
import pandas as pd
import streamlit as st

from core.inspect import stepwise as sw
from core.models.capture import Capture, generation_room, token_display, top_k
from core.models.loading import LoadedModel
from ui import forward as fw
from ui import state
from ui.explain import how_computed
from ui.forward import check, index_slider, step, vectors
from ui.forward_steps import Checks, View, attention_weight_steps, mlp_steps, norm_step, projection_steps
from ui.models import model_picker
from ui.text import md, token_md
from ui.widgets import clamp_state, keep_choice, scroll_wide_charts

DEFAULT_TEXT = ("The cat sat on the mat because it was tired. Language models read text one token at a "
                "time and guess what comes")


def controls(lm: LoadedModel, cap: Capture, a: sw.Anatomy, text: str, checks: Checks) -> View:
    """Sidebar widgets: the token followed everywhere and how many dims to list (layer and head are chosen
    inside the layer section, which reruns alone)."""
    labels = cap.labels
    clamp_state("fp_dims", 1, min(a.hidden_size, 1024))
    keep_choice("fp_pos", list(range(cap.seq_len)), cap.seq_len - 1)
    with st.sidebar:
        st.markdown("**Step-by-step controls**")
        pos = st.selectbox("Token to follow", range(cap.seq_len), key="fp_pos",
                           format_func=lambda i: labels[i], help="The values shown at each step are this token's row.")
        n_dims = state.keep(st.slider, "Dimensions shown", 1, min(a.hidden_size, 1024), min(8, a.hidden_size),
                            key="fp_dims", help="How many of the first dimensions of each vector to list.")
    return View(lm, cap, a, text, pos, 0, 0, n_dims, None, checks)


@st.fragment
def inside_layer(base: View, page_checks: Checks) -> None:
    """Steps 3-14 of one layer; its layer and head sliders rerun only this part of the page."""
    lm, cap, a = base.lm, base.cap, base.a
    clamp_state("fp_layer", 0, a.n_layers - 1)
    clamp_state("fp_head", 0, a.n_heads - 1)
    st.divider()
    c1, c2 = st.columns([2, 1])
    with c1:
        layer = index_slider("Layer", a.n_layers, "fp_layer",
                             "Every layer step below is recomputed from this layer's weights.")
    with c2:
        head = index_slider("Head", a.n_heads, "fp_head", "The head followed in the RoPE details.")
    checks = Checks()
    v = replace(base, layer=layer, head=head, steps=fw.layer_steps(lm, cap, layer), checks=checks)
    norm_step(v)
    projection_steps(v)
    attention_weight_steps(v)
    mlp_steps(v)
    if fw.parity_ready(lm, cap):  # computed by an earlier run: fill the checks now
        checks.fill(fw.parity(lm, cap))
    else:  # the first run: the page fills them once it has drawn everything
        page_checks.slots.extend(checks.slots)


def parity_banner(v: View, parity: sw.Parity) -> None:
    """page -> ui.forward.parity -> core.inspect.stepwise.parity: the worst max |Δ| over every check."""
    lm, a = v.lm, v.a
    if lm.spec.dtype == "float32" and parity.ok:
        st.success(f"✅ The hand computation reproduces the model at every layer: worst max |Δ| = "
                   f"**{parity.worst:.2e}** over embeddings, {a.n_layers} layers and the final norm "
                   f"(tolerance {sw.PARITY_TOLERANCE:.0e}, float32).")
    elif lm.spec.dtype == "float32":
        st.error(f"❌ The hand computation differs from the model by up to {parity.worst:.2e} "
                 f"(tolerance {sw.PARITY_TOLERANCE:.0e}).")
    else:
        name, rel = parity.worst_relative
        worst = parity.worst_check
        st.info(f"The model runs in {lm.spec.dtype}. The hand computation runs in float32 from the same weights "
                f"and inputs, so read it as the float32 reference: the model's own {lm.spec.dtype} results "
                f"differ from it by **{rel:.2%}** at most, relative to the size of the values "
                f"(‖Δ‖ / ‖model‖, largest at **{name}**). The largest single gap, max |Δ| = {parity.worst:.2e}, "
                f"is at **{worst}**, token {md(v.cap.labels[parity.where.get(worst, 0)])}, where the values "
                f"themselves are large. Load the model in float32 for the exact (1e-4) check.")


def tokens_step(cap: Capture) -> None:
    step(1, "Text → tokens → ids",
         r"\text{text} \to (t_0, \dots, t_{n-1}) \to (\mathrm{id}_0, \dots, \mathrm{id}_{n-1})",
         "The model never sees characters: the tokenizer cuts the text into pieces from a fixed vocabulary "
         "and each piece becomes an integer.", f"[{cap.seq_len}]")
    table = pd.DataFrame({"token": [lab.split("·", 1)[1] for lab in cap.labels], "id": [str(i) for i in cap.ids]})
    st.dataframe(table.T, width="stretch")


def embeddings_step(v: View) -> None:
    """Step 2: token (and learned position) embeddings, checked against hidden_states[0]."""
    lm, cap, a, pos = v.lm, v.cap, v.a, v.pos
    if a.names.positions:
        step(2, "Embeddings", r"x^{(0)}_t = W_E[\mathrm{id}_t] + W_P[t]",
             "Each id picks a row of the embedding matrix; GPT-2 adds a learned vector for the position, "
             "the only place it learns where a token is.", f"[{cap.seq_len}, {a.hidden_size}]")
    else:
        step(2, "Embeddings", r"x^{(0)}_t = W_E[\mathrm{id}_t]",
             "Each id picks a row of the embedding matrix: the token's starting vector. No position is "
             "added here; RoPE injects it inside attention.", f"[{cap.seq_len}, {a.hidden_size}]")
    emb = fw.embedding_steps(lm, cap)
    vectors({f"W_E[{cap.ids[pos]}]": emb.token_embeddings[pos],
             f"W_P[{pos}]": None if emb.position_embeddings is None else emb.position_embeddings[pos],
             "x⁽⁰⁾": emb.hidden_states[pos]}, v.n_dims)
    v.checks.later(lambda p: check("Embeddings", p.embeddings, lm, "hidden_states[0]"))


def stack_steps(v: View) -> object:
    """Steps 15-17: all layers, final norm, logits; returns the hand final steps of the followed token."""
    lm, cap, a, pos, tok = v.lm, v.cap, v.a, v.pos, token_md(v.cap.tokens[v.pos])
    seq = cap.seq_len
    st.divider()
    step(15, "All layers", r"x^{(N)} = \mathrm{Block}_{N-1}\big(\cdots \mathrm{Block}_0(x^{(0)})\big)",
         f"The same computation, with each layer's own weights, {a.n_layers} times. Each layer was "
         "recomputed by hand from the model's input to it and compared with the model's output.",
         f"{a.n_layers} × [{seq}, {a.hidden_size}]")

    def per_layer_table(parity: sw.Parity) -> None:
        diffs = pd.DataFrame({"layer output": parity.per_layer,
                              "attention weights": parity.attn_weights or [float("nan")] * a.n_layers},
                             index=[f"layer {i}" for i in range(a.n_layers)]).T
        st.markdown("**Hand computation vs the model, max |Δ| per layer**")
        st.dataframe(diffs.map(lambda x: f"{x:.1e}"), width="stretch")
        if parity.worst == 0.0:
            st.caption("Zero means bit-for-bit identical: the same float32 operations in the same order as the "
                       "model's own code, only written out.")

    v.checks.later(per_layer_table)
    norms = fw.stream_norms(lm, cap)
    norm_df = pd.DataFrame({"after layer": ["emb", *map(str, range(a.n_layers))], "‖x‖": norms[:, pos]})
    line = alt.Chart(norm_df).mark_line(point=True).encode(
        x=alt.X("after layer:N", sort=None), y="‖x‖:Q", tooltip=["after layer", "‖x‖"]).properties(
        height=220,
        title=f"Length of the residual stream at token {pos} ({token_display(cap.tokens[pos])}) after each layer")
    st.altair_chart(line, width="stretch")
    v.checks.later(lambda p: check("Whole stack by hand from the ids alone (each layer fed the previous hand "
                                   "output), logits", p.chained_logits, lm, "the model's logits")
                   if p.chained_logits is not None else None)

    final = fw.final_steps(lm, cap, pos)
    step(16, "Final norm", r"h_{\mathrm{final}} = \mathrm{Norm}(x^{(N)})",
         "One last normalisation so the output head sees vectors of a steady size. In transformers 5 the "
         "last entry of `hidden_states` is already this normalised tensor.", f"[{seq}, {a.hidden_size}]")
    vectors({"x⁽ᴺ⁾": fw.last_block_output(lm, cap)[pos], "h_final": final.final_norm[0]}, v.n_dims)
    v.checks.later(lambda p: check("Final norm", p.final_norm, lm, "hidden_states[-1]"))
    tied = bool(getattr(lm.config, "tie_word_embeddings", False))
    step(17, "Logits", r"z = h_{\mathrm{final}}\, W_U^\top" + (r",\quad W_U = W_E \text{ (tied)}" if tied else ""),
         "A score for every token of the vocabulary: the dot product of the final vector with each "
         "token's output vector" + (" (the same matrix as the input embeddings)." if tied else "."),
         f"[{seq}, {a.vocab_size}]")
    st.caption(f"The first entries of the logits at token {pos} ({tok}): columns are token ids.")
    vectors({"z (by hand)": final.logits[0], "z (model)": cap.logits[pos]}, v.n_dims)
    v.checks.later(lambda p: check("Logits", p.logits, lm, "the model's logits"))
    return final


@st.fragment
def top_tokens(lm: LoadedModel, cap: Capture, final, pos: int) -> None:
    """Step 18: top-k next tokens from the model, with the hand probabilities beside them."""
    step(18, "Softmax over the vocabulary: next-token probabilities", r"p(v) = \frac{e^{z_v}}{\sum_u e^{z_u}}",
         f"The model's belief about the token that follows {md(cap.labels[pos])}.", f"[{lm.config.vocab_size}]")
    k = st.slider("Top-k", 1, 50, 10, key="fp_topk")
    rows = top_k(lm, cap.next_token_probs(pos), k)
    table = pd.DataFrame(rows)
    table["token"] = table["token"].map(token_display)
    config = {"prob": st.column_config.NumberColumn("prob (model)", format="%.5f")}
    if final is not None:
        table["hand prob"] = fw.hand_probs(final, table["id"].tolist())
        config["hand prob"] = st.column_config.NumberColumn("prob (by hand)", format="%.5f")
    left, right = st.columns(2)
    left.dataframe(table, width="stretch", hide_index=True, column_config=config)
    chart = alt.Chart(table).mark_bar().encode(
        x=alt.X("prob:Q", title="probability"), y=alt.Y("token:N", sort="-x", title=None), tooltip=list(table.columns))
    # fit-x: the height is the bars' own (plain "fit" counts the axis in it and hides every other label)
    right.altair_chart(chart.properties(height=max(40, 22 * len(table)),
                                        autosize=alt.AutoSizeParams(type="fit-x", contains="padding")),
                       width="stretch")
    st.markdown(f"Most likely after {md(cap.labels[pos])}: **{token_md(rows[0]['token'])}** "
                f"(id {rows[0]['id']}, p = {rows[0]['prob']:.3f})")


@st.fragment
def greedy(lm: LoadedModel, cap: Capture) -> None:
    """Step 19: the greedy continuation, generated on demand (it runs the model once per new token)."""
    step(19, "Chosen token and greedy continuation", r"\text{next} = \arg\max_v\, p(v)",
         "Greedy decoding appends the most likely token and runs the model again, one token at a time. "
         "The continuation starts after the whole text.")
    c1, c2 = st.columns([3, 1])
    n_new = c1.slider("Greedy continuation length (tokens)", 0, 50, 12, key="fp_generate")
    room = generation_room(lm, cap.seq_len)
    if n_new and room is not None and room < n_new:
        st.info(f"The text fills {cap.seq_len:,} of the model's {cap.seq_len + room:,} positions: "
                + (f"only {room} more token{'s' if room != 1 else ''} fit." if room else "no more tokens fit. "
                   "Shorten the text to see a continuation."))
    wanted = (lm.spec.key, tuple(cap.ids), n_new)
    if c2.button("Generate", key="fp_go", disabled=not n_new or room == 0, width="stretch"):
        st.session_state["fp_generated"] = wanted
    if n_new and room != 0 and st.session_state.get("fp_generated") == wanted:
        new_tokens, new_text = fw.continuation(lm, cap.ids, n_new)
        prompt = lm.decode(cap.ids)
        st.code(("…" if len(prompt) > 300 else "") + prompt[-300:] + " ⟶" + new_text, language=None,
                wrap_lines=True)
        st.caption("Generated tokens: " + " · ".join(token_md(t) for t in new_tokens))
    elif n_new and room != 0:
        st.caption("Press **Generate** to let the model write on (one forward pass per token).")


st.title("➡️ Forward pass, step by step")
scroll_wide_charts()
lm = model_picker()
st.markdown("From your text to the next-token probabilities, with the model's real tensors. Every layer step "
            "is **recomputed by hand from that layer's weights** and checked against the model's own hidden "
            "states. Pick the token to follow in the sidebar, the layer and head in step 3.")
text = state.keep(st.text_area, "Text", value=DEFAULT_TEXT, height=90, key="fp_text")
anatomy, unsupported = fw.anatomy(lm)
capture = fw.residual_capture(lm, text)
if capture is not None:
    tokens_step(capture)
    final_steps, position = None, capture.seq_len - 1
    if anatomy is None:
        st.warning(unsupported)
    else:
        checks = Checks()
        banner = st.empty()
        banner.info("⏳ The parity check (every layer recomputed by hand and compared with the model) runs once "
                    "the page is drawn; its results appear here and beside each step.")
        view = controls(lm, capture, anatomy, text, checks)
        st.caption(f"{anatomy.norm_kind} · {anatomy.mlp_kind} · {anatomy.positions} positions · {anatomy.n_heads} "
                   f"heads / {anatomy.n_kv_heads} KV heads · head dim {anatomy.head_dim} · following token "
                   f"**{md(capture.labels[view.pos])}** (in the sidebar; the layer and head are chosen below)")
        embeddings_step(view)
        inside_layer(view, checks)
        final_steps, position = stack_steps(view), view.pos
    top_tokens(lm, capture, final_steps, position)
    greedy(lm, capture)
    if anatomy is not None:
        with banner.container(), st.spinner(f"Recomputing all {anatomy.n_layers} layers by hand and comparing "
                                            "with the model…"):
            parity = fw.parity(lm, capture)
        banner.empty()
        with banner.container():
            parity_banner(view, parity)
        checks.fill(parity)

state.share_link()
shown_text = shlex.quote(text) if 0 < len(text) <= 300 else '"$(cat your_text.txt)"'
how_computed(sw.layer_by_hand, sw.parity, sw.rope_tables,
             command=f"python -m core forward {lm.spec.cli()} --text {shown_text} --top-k 10 --check-parity")
