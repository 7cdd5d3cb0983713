"""Embeddings and positions: the model's token vectors and their neighbours, and how position enters
(sinusoidal, learned tables, rotary)."""

from __future__ import annotations

import shlex

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from core.inspect import embeddings as emb
from core.inspect.rope import DEFAULT_THETA
from core.models.capture import token_display
from core.models.loading import LoadedModel
from ui import embeddings as ue
from ui import state
from ui.charts import place_labels
from ui.explain import how_computed
from ui.models import model_picker
from ui.text import code, md
from ui.widgets import clamp_state, keep_choice, scroll_wide_charts

MAX_WORDS_CHARS = 2_000
MAX_CHOSEN_TOKENS = 60
DEFAULT_WORDS = "king, queen, man, woman, Paris, London, France, cat, dog, one, two, three"

st.title("🧭 Embeddings and positions")
scroll_wide_charts()
lm = model_picker()
random_model = lm.loaded_from.startswith("random")
rows, width = emb.embedding_matrix(lm).shape
st.markdown("Each token id selects one row of the **embedding matrix**, and **position** information tells the "
            "model where each token sits. This page opens the model's embedding matrix and its position encodings.")


def chosen_tokens(words_text: str, leading_space: bool) -> tuple[dict[int, str], list[str], bool]:
    """({id: shown token}, notes on words split into several tokens, whether the list was cut)."""
    chosen: dict[int, str] = {}
    notes = []
    cut = len(words_text) > MAX_WORDS_CHARS
    for word in [w.strip() for w in words_text[:MAX_WORDS_CHARS].split(",") if w.strip()]:
        if len(chosen) >= MAX_CHOSEN_TOKENS:
            cut = True
            break
        ids = lm.encode((" " if leading_space else "") + word)
        cut = cut or len(ids) > MAX_CHOSEN_TOKENS - len(chosen)
        ids = ids[:MAX_CHOSEN_TOKENS - len(chosen)]
        if len(ids) > 1:  # a pasted paragraph is one long "word": keep the note and the charts small
            short = word if len(word) <= 40 else word[:40] + "…"
            notes.append(f"{code(short)} → {' · '.join(md(token_display(t)) for t in lm.token_strings(ids[:12]))}"
                         + (" · …" if len(ids) > 12 else ""))
        for i, t in zip(ids, lm.token_strings(ids)):
            chosen.setdefault(i, token_display(t))
    return chosen, notes, cut


@st.fragment
def vector_and_neighbours(lm: LoadedModel, chosen: dict[int, str]) -> None:
    options = list(chosen)
    keep_choice("emb_pick", options, options[0])
    pick = st.selectbox("Token", options, format_func=lambda i: f"{chosen[i]}  (id {i})", key="emb_pick")
    vec = ue.vector(lm, pick)
    left, right = st.columns([3, 2])
    with left:
        st.markdown(f"**The vector of {code(chosen[pick])}** · {vec.shape[0]} numbers · norm "
                    f"{ue.row_norm(lm, pick):.3f}")
        frame = pd.DataFrame({"dimension": np.arange(vec.shape[0]), "value": vec})
        st.altair_chart(alt.Chart(frame).mark_bar().encode(
            x=alt.X("dimension:Q"), y=alt.Y("value:Q"),
            color=alt.condition("datum.value > 0", alt.value("#2563eb"), alt.value("#dc2626")),
            tooltip=["dimension", alt.Tooltip("value:Q", format=".4f")]).properties(height=260),
            width="stretch")
    with right:
        k = state.keep(st.slider, "Nearest neighbours", 5, 50, 10, key="emb_k")
        near = ue.neighbours(lm, pick, k)
        st.dataframe(pd.DataFrame([{"token": token_display(n["token"]), "id": n["id"], "cosine": round(n["cosine"], 4)}
                                   for n in near]), hide_index=True, width="stretch", height=260)
    st.caption(f"Cosine similarity against all {emb.usable_vocab(lm):,} rows: the token itself comes first (1.0).")


def token_map(lm: LoadedModel, chosen: dict[int, str]) -> None:
    st.subheader("A 2-D map of the chosen tokens")
    add_near = state.keep(st.checkbox, "Add each token's 5 nearest neighbours to the map", False, key="emb_add_near")
    points = dict(chosen)
    if add_near:
        for i in list(chosen):
            for n in ue.neighbours(lm, i, 6)[1:]:
                points.setdefault(n["id"], token_display(n["token"]))
    if len(points) < 3:
        st.info("Choose at least three different tokens for the map (two points always lie on a line).")
    else:
        ids = list(points)
        coords, ratio = ue.pca(lm, ids)
        frame = pd.DataFrame({"token": [points[i] for i in ids], "id": ids, "PC1": coords[:, 0],
                              "PC2": coords[:, 1], "chosen": ["chosen" if i in chosen else "neighbour" for i in ids]})
        base_chart = alt.Chart(frame).encode(
            x=alt.X("PC1:Q", title=f"PC1 ({ratio[0]:.0%} of variance)", scale=alt.Scale(zero=False, padding=40)),
            y=alt.Y("PC2:Q", title=f"PC2 ({ratio[1]:.0%} of variance)", scale=alt.Scale(zero=False, padding=20)))
        dots = base_chart.mark_circle(size=80).encode(
            color=alt.Color("chosen:N", title=None),
            tooltip=["token", "id", alt.Tooltip("PC1:Q", format=".3f"), alt.Tooltip("PC2:Q", format=".3f")])
        # Each label on a free spot around its point: close tokens (Paris, France, London) wrote over each other.
        frame["lx"], frame["ly"] = place_labels(frame["PC1"].to_numpy(), frame["PC2"].to_numpy(),
                                                list(frame["token"]))
        labels = alt.Chart(frame).mark_text(align="left", baseline="middle", fontSize=12).encode(
            x="lx:Q", y="ly:Q", text="token")
        st.altair_chart((dots + labels).properties(height=420).interactive(), width="stretch")
        st.caption(f"Principal component analysis of {len(ids)} vectors of {width} numbers, projected on "
                   f"the two directions of largest spread ({ratio.sum():.0%} of the variance among these tokens).")
    if 2 <= len(chosen) <= 40:  # an Altair grid stays readable (and light) up to 1,600 cells
        sims = ue.cosines(lm, list(chosen))
        names = [f"{chosen[i]} ({i})" for i in chosen]
        grid = pd.DataFrame([{"a": names[r], "b": names[c], "cosine": float(sims[r, c])}
                             for r in range(len(names)) for c in range(len(names))])
        st.altair_chart(alt.Chart(grid, title="Cosine similarity between the chosen tokens").mark_rect().encode(
            x=alt.X("b:N", sort=names, title=None, axis=alt.Axis(labelOverlap=False)),
            y=alt.Y("a:N", sort=names, title=None, axis=alt.Axis(labelOverlap=False)),
            color=alt.Color("cosine:Q", scale=alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True)),
            tooltip=["a", "b", alt.Tooltip("cosine:Q", format=".3f")]
        ).properties(height=max(60, 22 * len(names)),  # fit-x: the cells get this height, the labels come on top
                     autosize=alt.AutoSizeParams(type="fit-x", contains="padding")), width="stretch")


@st.fragment
def sinusoidal() -> None:
    st.subheader("a. Sinusoidal encoding (the original Transformer)")
    st.latex(r"PE_{(pos,\,2i)} = \sin\!\left(\frac{pos}{10000^{2i/d}}\right) \qquad "
             r"PE_{(pos,\,2i+1)} = \cos\!\left(\frac{pos}{10000^{2i/d}}\right)")
    c1, c2 = st.columns(2)
    n_pos = state.keep(c1.slider, "Positions", 8, 512, 128, key="pos_n")
    d_model = state.keep(c2.slider, "Dimensions d", 8, 1024, min(int(width), 256), step=8, key="pos_d")
    pe = ue.sinusoidal(n_pos, d_model)
    ue.heatmap(pe, diverging=True,
               caption=f"PE [{n_pos} positions (rows) × {d_model} dimensions (columns)]: blue −1, red +1. Left "
                       "columns turn fast with position, right columns slowly: every position gets a unique pattern.")
    dims = sorted({0, 2, min(d_model - 2, 8), min(d_model - 2, d_model // 2)})
    lines = pd.DataFrame([{"position": p, "value": float(pe[p, j]), "dimension": f"dim {j}"}
                          for j in dims for p in range(n_pos)])
    st.altair_chart(alt.Chart(lines, title="A few dimensions along the positions").mark_line().encode(
        x="position:Q", y="value:Q", color="dimension:N", tooltip=["dimension", "position",
                                                                  alt.Tooltip("value:Q", format=".3f")]
    ).properties(height=220), width="stretch")


@st.fragment
def learned_positions(lm: LoadedModel) -> None:
    table = emb.learned_position_module(lm)
    n_max = table.num_embeddings
    clamp_state("pos_learned_n", 2, min(n_max, 512), min(n_max, 128))  # tables differ between models
    n_sim = st.slider("Positions to compare", 2, min(n_max, 512), key="pos_learned_n")
    sim = ue.learned_similarity(lm, n_sim)
    ue.heatmap(sim, width=480, height=480, diverging=True, vmax=1.0,
               caption=f"Cosine similarity between the learned vectors of positions 0 … {n_sim - 1} "
                       f"(a [{n_max} × {table.embedding_dim}] table): blue −1, red +1. A trained model shows a "
                       "bright band along the diagonal: nearby positions get similar vectors.")


@st.fragment
def rope_pair(rope: emb.RopeSummary) -> None:
    st.markdown("**How one 2-D pair rotates with position.** RoPE rotates the pair (x<sub>i</sub>, "
                "x<sub>i+d/2</sub>) of every query and key by the angle pos·θ<sub>i</sub> (transformers pairs "
                "dimension i with i + d/2).", unsafe_allow_html=True)
    pairs = rope.inv_freq.shape[0]
    c1, c2 = st.columns(2)
    clamp_state("rope_pair", 0, pairs - 1, 0)  # head sizes differ between models
    pair_i = c1.slider("Frequency pair i", 0, pairs - 1, key="rope_pair")
    n_rot = state.keep(c2.slider, "Positions", 2, 64, 16, key="rope_positions")
    angles, rotated = ue.rotation(rope, pair_i, n_rot)
    turn = np.linspace(0, 2 * np.pi, 97)
    circle = pd.DataFrame({"x": np.cos(turn), "y": np.sin(turn), "index": np.arange(97)})
    pts = pd.DataFrame({"x": rotated[:, 0], "y": rotated[:, 1], "position": np.arange(n_rot), "angle (rad)": angles})
    left, right = st.columns(2)
    with left:
        ring = alt.Chart(circle).mark_line(color="#cbd5e1").encode(
            x=alt.X("x:Q", scale=alt.Scale(domain=[-1.25, 1.25])),
            y=alt.Y("y:Q", scale=alt.Scale(domain=[-1.25, 1.25])), order="index:Q")
        dots = alt.Chart(pts).mark_circle(size=90).encode(
            x="x:Q", y="y:Q", color=alt.Color("position:Q", scale=alt.Scale(scheme="viridis"), legend=None),
            tooltip=["position", alt.Tooltip("angle (rad):Q", format=".3f"),
                     alt.Tooltip("x:Q", format=".3f"), alt.Tooltip("y:Q", format=".3f")])
        numbers = alt.Chart(pts).mark_text(dx=9, dy=-7, fontSize=11).encode(x="x:Q", y="y:Q", text="position:Q")
        # Streamlit fits axes and title into the size given: these leave a square plot for the circle
        st.altair_chart((ring + dots + numbers).properties(
            title=f"(1, 0) rotated by pos · θ_{pair_i} = pos · {float(rope.inv_freq[pair_i]):.4g}"),
            width=340, height=370)
    with right:
        rel = rope.relative_score.numpy()
        st.altair_chart(alt.Chart(pd.DataFrame({"distance": np.arange(rel.shape[0]), "score": rel}),
                                  title="Query = key, moved apart").mark_line().encode(
            x="distance:Q", y=alt.Y("score:Q", title="mean cos(distance · θ_i)"),
            tooltip=["distance", alt.Tooltip("score:Q", format=".3f")]).properties(height=300), width="stretch")
        st.caption("After rotation, q·k depends on the distance between the two positions only, not on where "
                   "they are: RoPE encodes relative position.")


def rope_section(lm: LoadedModel) -> None:
    rope = ue.rope(lm)
    pairs = rope.inv_freq.shape[0]
    m = st.columns(4)
    m[0].metric("Base θ", f"{rope.theta or DEFAULT_THETA:,.0f}")
    m[1].metric("Rotating dims / head", rope.dim)
    m[2].metric("Frequency pairs", pairs)
    m[3].metric("Longest turn", f"{float(rope.wavelengths.max()):,.0f}",
                help="Positions the slowest pair needs for one full rotation: 2π / θ_i.")
    st.latex(r"\theta_i = \text{base}^{-2i/d}, \qquad \text{angle}(pos, i) = pos \cdot \theta_i")
    st.caption("The model's own `inv_freq` equals the formula." if rope.follows_formula else
               f"The model's `inv_freq` differs from the plain formula: it uses a scaled RoPE variant "
               f"({rope.rope_type}). The charts use the model's values.")
    freq = pd.DataFrame({"pair i": np.arange(pairs), "theta_i (radians per position)": rope.inv_freq.numpy(),
                         "wavelength (positions)": rope.wavelengths.numpy()})
    st.altair_chart(alt.Chart(freq, title="Rotation speed of each pair of dimensions").mark_line(point=True).encode(
        x=alt.X("pair i:Q", scale=alt.Scale(domain=[0, pairs - 1], nice=False)),
        y=alt.Y("theta_i (radians per position):Q", title="θ_i (log scale)", scale=alt.Scale(type="log")),
        tooltip=["pair i", alt.Tooltip("theta_i (radians per position):Q", format=".3g"),
                 alt.Tooltip("wavelength (positions):Q", format=",.1f")]).properties(height=260),
        width="stretch")
    rope_pair(rope)
    n_heat = rope.cos_table.shape[1]
    ue.heatmap(rope.cos_table.numpy(), height=160, diverging=True,
               caption=f"cos(pos · θ_i) for each pair i (rows, fastest at the top) over positions 0…{n_heat - 1} "
                       f"(columns): blue −1, red +1. Slow pairs barely turn within {n_heat} positions: they tell far "
                       f"distances apart. Checked against the model's own `rotary_emb`: max difference "
                       f"{rope.max_difference:.1e}.")


# ---------------------------------------------------------------- 1. token embeddings

st.header("1. Token embeddings")
st.markdown(f"Each token id selects one row of the embedding matrix `W_E` **[{rows:,} × {width:,}]**: "
            "that row is the vector the first layer receives. Tokens used in similar contexts end up pointing "
            "in similar directions, measured by **cosine similarity**.")
if random_model:
    st.caption("This model is randomly initialised: its vectors are random, so neighbours and the map carry no "
               "meaning. Pick the embedded SmolLM2 in the sidebar to see learned structure.")
c1, c2 = st.columns([3, 1])
words_text = state.keep(c1.text_input, "Tokens to look at (comma-separated words)", value=DEFAULT_WORDS,
                        key="emb_words")
leading_space = state.keep(c2.checkbox, "Leading space", True, key="emb_space",
                           help="Mid-sentence words carry their leading space: ' king' and 'king' are different tokens.")
chosen, split_notes, cut = chosen_tokens(words_text, leading_space)
if split_notes:
    st.caption("Split into several tokens (each is used): " + ";  ".join(split_notes[:10])
               + (f";  … and {len(split_notes) - 10} more" if len(split_notes) > 10 else ""))
if cut:
    st.warning(f"Only the first {MAX_CHOSEN_TOKENS} tokens of the list are used; shorten it to see the others.")
if not chosen:
    st.info("Type one or more words, separated by commas, to see their token vectors.")
else:
    vector_and_neighbours(lm, chosen)
    token_map(lm, chosen)

# ---------------------------------------------------------------- 2. positions

st.header("2. Positions")
st.markdown("Attention by itself ignores order, so the model must be told where each token is. Three ways:")
kind = emb.position_kind(lm)
st.caption({"learned": f"{lm.name} uses **learned position embeddings** (section b).",
            "rope": f"{lm.name} uses **rotary position embeddings, RoPE** (section c).",
            "none": f"{lm.name} has neither a learned position table nor a rotary module this lab recognises."}[kind])
sinusoidal()
st.subheader("b. Learned position embeddings (GPT-2 style)")
if kind != "learned":
    st.info("This model has no learned position table (GPT-2 style models have one, `wpe`). "
            "Pick tiny-gpt2 or a GPT-2 model in the sidebar to see it.")
else:
    learned_positions(lm)
st.subheader("c. Rotary position embeddings, RoPE (Llama style)")
if kind != "rope":
    st.info("This model does not use RoPE (Llama, Qwen, Mistral and SmolLM2 do). Pick tiny-llama or the "
            "embedded model in the sidebar to see it.")
else:
    rope_section(lm)

words = [(" " if leading_space else "") + w.strip() for w in words_text[:MAX_WORDS_CHARS].split(",") if w.strip()]
state.share_link()
how_computed(emb.nearest_neighbours, emb.pca_2d, emb.sinusoidal_encoding, emb.learned_position_similarity,
             emb.rope_summary,
             command=f"python -m core embeddings {lm.spec.cli()} --tokens {shlex.quote(','.join(words[:20]) or ' king')} "
                     f"--k {st.session_state.get('emb_k', 10)}")
