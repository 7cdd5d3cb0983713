"""Tokens and embeddings: byte-pair encoding from scratch, the model's tokenizer, token vectors, positions."""

from __future__ import annotations

import html

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
import torch

from core.inspect import bpe
from core.inspect import embeddings as emb
from core.data import tiny_shakespeare
from core.models.loading import LoadedModel
from ui.charts import heatmap_image
from ui.explain import how_computed
from ui.models import model_picker

TOY_SENNRICH = ("low low low low low lower lower newest newest newest newest newest newest "
                "widest widest widest")
CORPORA = ("Tiny Shakespeare", "Sennrich et al. toy corpus", "low lower lowest", "Your own text")
SHAKESPEARE_CHARS = (1_000, 10_000, 50_000, 100_000, 250_000, 500_000, 1_115_394)
MAX_SENTENCE_CHARS = 2_000
MAX_CHOSEN_TOKENS = 60
CHIP_COLOURS = ("#fde2e4", "#dbeafe", "#dcfce7", "#fef3c7", "#ede9fe", "#cffafe")


# ---------------------------------------------------------------- cached wrappers around core


@st.cache_data(show_spinner=False, max_entries=16)
def corpus_summary(text: str, base: str) -> dict[str, int]:
    return bpe.corpus_summary(text, base)


@st.cache_data(show_spinner="Training byte-pair encoding…", max_entries=16)
def train(text: str, vocab_size: int, base: str) -> bpe.BPEResult:
    return bpe.train_bpe(text, vocab_size, base)


@st.cache_data(show_spinner=False, max_entries=16)
def compression(text: str, vocab_size: int, base: str) -> dict[str, float]:
    return bpe.compression(train(text, vocab_size, base))


@st.cache_data(show_spinner=False, max_entries=64)
def model_tokens(key: str, text: str, _lm: LoadedModel) -> list[dict]:
    return bpe.model_tokens(_lm, text)


@st.cache_resource(show_spinner="Measuring every embedding row…", max_entries=4)
def row_norms(key: str, _lm: LoadedModel) -> torch.Tensor:
    return emb.row_norms(_lm)


@st.cache_data(show_spinner=False, max_entries=256)
def neighbours(key: str, token_id: int, k: int, _lm: LoadedModel) -> list[dict]:
    return emb.nearest_neighbours(_lm, token_id, k, row_norms(key, _lm))


def clamp_state(key: str, lo: int, hi: int, default: int) -> None:
    """Keep a keyed widget's value inside a range that depends on other inputs (no stale-range errors)."""
    value = st.session_state.get(key, default)
    st.session_state[key] = int(min(max(value, lo), hi))


def chips(labels: list[str], titles: list[str], unknown: list[bool] | None = None) -> None:
    """Tokens as coloured boxes, so boundaries are visible at a glance (hover for details)."""
    unknown = unknown or [False] * len(labels)
    spans = []
    for i, (label, title, unk) in enumerate(zip(labels, titles, unknown)):
        style = ("border:2px dashed #dc2626;" if unk else "") + f"background:{CHIP_COLOURS[i % len(CHIP_COLOURS)]}"
        spans.append(f"<span title='{html.escape(title, quote=True)}' style='{style};padding:2px 4px;"
                     f"margin:2px;border-radius:4px;display:inline-block;font-family:monospace;color:#111'>"
                     f"{html.escape(label)}</span>")
    st.markdown("".join(spans) or "*(no tokens)*", unsafe_allow_html=True)


def heatmap(matrix: np.ndarray, caption: str, width: int = 640, height: int = 320, **kwargs) -> None:
    """A server-rendered heatmap, each cell repeated to roughly `width` x `height` pixels (blocky, not blurred)."""
    rows, cols = matrix.shape
    big = np.repeat(np.repeat(matrix, max(1, height // rows), axis=0), max(1, width // cols), axis=1)
    img = heatmap_image(big, **kwargs)
    st.image(img, caption=caption, width=img.width)


def show(token: str) -> str:
    return token.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


st.title("🔤 Tokens and embeddings")
lm = model_picker()
random_model = lm.loaded_from.startswith("random")
st.markdown(
    "A language model never sees letters: text is cut into **tokens**, each token id selects one row of the "
    "**embedding matrix**, and **position** information tells the model where each token sits. "
    "This page builds a tokenizer from scratch, compares it with the model's own, then opens the model's "
    "embedding matrix and position encodings.")

# ---------------------------------------------------------------- 1. BPE from scratch

st.header("1. Byte-pair encoding from scratch")
st.markdown(
    "Byte-pair encoding (Sennrich et al., 2016) starts from single characters (or bytes) and repeatedly "
    "**merges the most frequent pair of adjacent symbols** into a new token. Words are split on whitespace "
    "and punctuation first, and each word ends with the marker `</w>`. Ties go to the pair that occurs first "
    "in the text, as in the paper's reference code.")

c1, c2 = st.columns([2, 1])
corpus = c1.radio("Training text", CORPORA, horizontal=True, key="bpe_corpus")
base = c2.radio("Start from", bpe.BASES, horizontal=True, key="bpe_base",
                format_func=lambda b: "characters" if b == "chars" else "bytes (GPT-2 style)",
                help="Bytes: the 256 UTF-8 byte values are the base vocabulary, so emoji and CJK never need an "
                     "unknown token (shown in GPT-2's printable byte alphabet: Ġ is a space byte, ð… start an emoji).")
if corpus == "Tiny Shakespeare":
    n_chars = st.select_slider("Characters of Tiny Shakespeare to train on", SHAKESPEARE_CHARS, value=100_000,
                               format_func=lambda n: f"{n:,}", key="bpe_chars")
    text = tiny_shakespeare()[:n_chars]
elif corpus == "Sennrich et al. toy corpus":
    text = TOY_SENNRICH
elif corpus == "low lower lowest":
    text = "low lower lowest"
else:
    text = st.text_area("Your training text", height=120, key="bpe_text",
                        placeholder="Paste any text: a paragraph, a poem, code, another language…")
if corpus != "Your own text":
    st.caption(f"Training text: {text[:200]!r}{'…' if len(text) > 200 else ''}")

result: bpe.BPEResult | None = None
if not text.strip():
    st.info("The training text is empty: paste some text (or pick one of the shipped texts) to train on.")
elif len(text) > bpe.MAX_TRAIN_CHARS:
    st.warning(f"The text has {len(text):,} characters; training here is limited to {bpe.MAX_TRAIN_CHARS:,}.")
else:
    summary = corpus_summary(text, base)
    upper = summary["base_size"] + min(summary["merge_bound"], bpe.MAX_MERGES)
    clamp_state("bpe_vocab", 0, upper, min(summary["base_size"] + 250, upper))
    m = st.columns(4)
    m[0].metric("Characters", f"{summary['chars']:,}")
    m[1].metric("Words", f"{summary['words']:,}")
    m[2].metric("Distinct words", f"{summary['unique_words']:,}")
    m[3].metric("Base symbols", summary["base_size"], help="Characters (or the 256 bytes) plus the `</w>` marker.")
    vocab_size = st.slider("Vocabulary size (base symbols + merges)", 0, upper, key="bpe_vocab",
                           help=f"At least {summary['base_size']} (the base symbols). Each merge adds one token.")
    try:
        result = train(text, vocab_size, base)
    except bpe.BPEError as exc:
        st.warning(str(exc))

if result is not None:
    if result.notice:
        st.info(result.notice)
    squeeze = compression(text, vocab_size, base)
    m = st.columns(3)
    m[0].metric("Merges learned", f"{len(result.merges):,}")
    m[1].metric("Vocabulary", f"{result.vocab_size:,}")
    m[2].metric("Tokens for the training words", f"{squeeze['tokens_after']:,}",
                delta=f"{squeeze['ratio']:.2f}× fewer", delta_color="off",
                help=f"Every word of the training text (with its frequency), split with the learned merges, "
                     f"against {squeeze['symbols_before']:,} base symbols before any merge.")

    if result.merges:
        st.subheader("The merges, step by step")
        table = pd.DataFrame({
            "step": [m.rank + 1 for m in result.merges],
            "pair": [f"{m.pair[0]} + {m.pair[1]}" for m in result.merges],
            "count": [m.count for m in result.merges],
            "new token": [bpe.readable(m.token, result.base) for m in result.merges],
            "runners-up": ["  ·  ".join(f"{a}+{b}: {c}" for (a, b), c in m.runners_up) for m in result.merges],
        })
        st.dataframe(table, hide_index=True, width="stretch", height=min(400, 38 + 35 * len(table)))
        if len(result.merges) > 1:
            clamp_state("bpe_step", 1, len(result.merges), 1)
            step = st.slider("Look at one step", 1, len(result.merges), key="bpe_step")
        else:
            step = 1
        merge = result.merges[step - 1]
        tied = sum(c == merge.count for _p, c in merge.runners_up)
        why = (f"as often as {tied}{'+' if tied == len(merge.runners_up) else ''} other pair{'s' if tied > 1 else ''}, "
               "and it occurs first in the text (the tie-break)" if tied else "more than any other pair")
        st.markdown(f"**Step {step}**: the pair `{merge.pair[0]}` + `{merge.pair[1]}` occurs **{merge.count:,}** "
                    f"times (in {merge.words_changed:,} distinct words): {why}. It becomes the new token "
                    f"`{merge.token}`." + ("" if merge.new_token else " (Another merge had already made this string.)"))
        left, right = st.columns(2)
        with left:
            bars = pd.DataFrame([{"pair": f"{a} + {b}", "count": c, "chosen": i == 0}
                                 for i, ((a, b), c) in enumerate([(merge.pair, merge.count), *merge.runners_up])])
            st.altair_chart(alt.Chart(bars, title="Most frequent pairs at this step").mark_bar().encode(
                x=alt.X("count:Q"), y=alt.Y("pair:N", sort=list(bars["pair"]), title=None),
                color=alt.Color("chosen:N", legend=None, scale=alt.Scale(domain=[True, False],
                                                                         range=["#dc2626", "#94a3b8"])),
                tooltip=["pair", "count"]), width="stretch")
        with right:
            st.markdown("**The most frequent words after this step**")
            seg = bpe.segmentations(result, step)
            st.dataframe(pd.DataFrame({"word": [s["word"] for s in seg], "count": [s["count"] for s in seg],
                                       "tokens": [" · ".join(s["tokens"]) for s in seg]}),
                         hide_index=True, width="stretch")

# ---------------------------------------------------------------- 2. the model's tokenizer vs BPE

st.header("2. Your model's tokenizer vs this BPE")
sentence = st.text_input("A sentence to tokenize", "The lowest king's newest crown! 😀 日本語", key="bpe_sentence")
if len(sentence) > MAX_SENTENCE_CHARS:
    st.warning(f"The sentence has {len(sentence):,} characters; only the first {MAX_SENTENCE_CHARS:,} are "
               "tokenized here.")
    sentence = sentence[:MAX_SENTENCE_CHARS]
if not sentence.strip():
    st.info("The sentence is empty: type something to tokenize (whitespace alone has no tokens).")
else:
    ours = bpe.encode(result, sentence) if result is not None else []
    theirs = model_tokens(lm.spec.key, sentence, lm)
    left, right = st.columns(2)
    with left:
        st.markdown(f"**BPE trained above** · {len(ours)} tokens · vocabulary {result.vocab_size if result else 0:,}")
        if result is None:
            st.info("Train a BPE in section 1 to compare.")
        else:
            chips([show(t.text) for t in ours], [f"id {t.id} · bytes {t.start}–{t.end}" for t in ours],
                  [t.id is None for t in ours])
            if any(t.id is None for t in ours):
                st.caption(f"Dashed tokens are characters the training text never contained: a character-level "
                           f"BPE has to map them to `{bpe.UNKNOWN}`. Byte-level BPE never does.")
    with right:
        vocab_n = len(lm.tokenizer)
        st.markdown(f"**{lm.name}** · {len(theirs)} tokens · vocabulary {vocab_n:,}")
        chips([show(r["text"]) for r in theirs], [f"id {r['id']} · {r['token']} · bytes {r['bytes']}" for r in theirs])
    if result is not None:
        agree = bpe.boundary_agreement([(t.start, t.end) for t in ours], [(r["start"], r["end"]) for r in theirs])
        st.caption(f"Cut points (token ends, in UTF-8 bytes): BPE {agree['a']}, model {agree['b']}, shared "
                   f"{agree['shared']}. The model keeps the space inside the next token (`Ġ` / `▁`); this BPE drops "
                   "spaces and marks word ends with `</w>` instead.")
    st.dataframe(pd.DataFrame([{"position": r["position"], "id": r["id"], "vocabulary entry": r["token"],
                                "text": show(r["text"]), "UTF-8 bytes": r["bytes"], "n bytes": r["n_bytes"]}
                               for r in theirs]),
                 hide_index=True, width="stretch", height=min(300, 38 + 35 * len(theirs)))
    n_bytes = len(sentence.encode("utf-8"))
    st.caption(f"{len(sentence)} characters = {n_bytes} UTF-8 bytes = {len(theirs)} model tokens "
               f"({n_bytes / max(1, len(theirs)):.2f} bytes per token). A token shown as � is a piece of a "
               "multi-byte character (an emoji or CJK character split across tokens).")

with st.expander("Special tokens of the model's tokenizer"):
    specials = bpe.special_tokens(lm)
    if specials:
        st.dataframe(pd.DataFrame(specials), hide_index=True, width="stretch")
    else:
        st.info("This tokenizer declares no special tokens.")
    bos = getattr(lm.tokenizer, "add_bos_token", False)
    st.caption("The lab prepends the BOS token before running the model." if bos else
               "No token is prepended to your text before the model runs (this tokenizer adds no BOS).")

# ---------------------------------------------------------------- 3. token embeddings

st.header("3. Token embeddings")
W = emb.embedding_matrix(lm)
st.markdown(f"Each token id selects one row of the embedding matrix `W_E` **[{W.shape[0]:,} × {W.shape[1]:,}]**: "
            "that row is the vector the first layer receives. Tokens used in similar contexts end up pointing "
            "in similar directions, measured by **cosine similarity**.")
if random_model:
    st.caption("This model is randomly initialised: its vectors are random, so neighbours and the map carry no "
               "meaning. Pick the embedded SmolLM2 in the sidebar to see learned structure.")
c1, c2 = st.columns([3, 1])
words_text = c1.text_input("Tokens to look at (comma-separated words)",
                           "king, queen, man, woman, Paris, London, France, cat, dog, one, two, three",
                           key="emb_words")
leading_space = c2.checkbox("Leading space", True, key="emb_space",
                            help="Mid-sentence words carry their leading space: ' king' and 'king' are different tokens.")
chosen: dict[int, str] = {}
split_notes = []
cut = len(words_text) > MAX_SENTENCE_CHARS
for word in [w.strip() for w in words_text[:MAX_SENTENCE_CHARS].split(",") if w.strip()]:
    if len(chosen) >= MAX_CHOSEN_TOKENS:
        cut = True
        break
    ids = lm.encode((" " if leading_space else "") + word)
    cut = cut or len(ids) > MAX_CHOSEN_TOKENS - len(chosen)
    ids = ids[:MAX_CHOSEN_TOKENS - len(chosen)]
    if len(ids) > 1:  # a pasted paragraph is one long "word": keep the note and the charts small
        short = word if len(word) <= 40 else word[:40] + "…"
        split_notes.append(f"`{short}` → {' · '.join(show(t) for t in lm.token_strings(ids[:12]))}"
                           + (" · …" if len(ids) > 12 else ""))
    for i, t in zip(ids, lm.token_strings(ids)):
        chosen.setdefault(i, show(t))
if split_notes:
    st.caption("Split into several tokens (each is used): " + ";  ".join(split_notes[:10])
               + (f";  … and {len(split_notes) - 10} more" if len(split_notes) > 10 else ""))
if cut:
    st.warning(f"Only the first {MAX_CHOSEN_TOKENS} tokens of the list are used; shorten it to see the others.")
if not chosen:
    st.info("Type one or more words, separated by commas, to see their token vectors.")
else:
    norms = row_norms(lm.spec.key, lm)
    options = list(chosen)
    pick = st.selectbox("Token", options, format_func=lambda i: f"{chosen[i]}  (id {i})", key="emb_pick")
    vec = emb.token_vector(lm, pick)
    left, right = st.columns([3, 2])
    with left:
        st.markdown(f"**The vector of `{chosen[pick]}`** · {vec.shape[0]} numbers · norm {float(norms[pick]):.3f}")
        frame = pd.DataFrame({"dimension": np.arange(vec.shape[0]), "value": vec.numpy()})
        st.altair_chart(alt.Chart(frame).mark_bar().encode(
            x=alt.X("dimension:Q"), y=alt.Y("value:Q"),
            color=alt.condition("datum.value > 0", alt.value("#2563eb"), alt.value("#dc2626")),
            tooltip=["dimension", alt.Tooltip("value:Q", format=".4f")]).properties(height=260),
            width="stretch")
    with right:
        k = st.slider("Nearest neighbours", 5, 50, 10, key="emb_k")
        near = neighbours(lm.spec.key, pick, k, lm)
        st.dataframe(pd.DataFrame([{"token": show(n["token"]), "id": n["id"], "cosine": round(n["cosine"], 4)}
                                   for n in near]), hide_index=True, width="stretch", height=260)
    st.caption(f"Cosine similarity against all {emb.usable_vocab(lm):,} rows: the token itself comes first (1.0).")

    st.subheader("A 2-D map of the chosen tokens")
    add_near = st.checkbox("Add each token's 5 nearest neighbours to the map", False, key="emb_add_near")
    points = dict(chosen)
    if add_near:
        for i in list(chosen):
            for n in neighbours(lm.spec.key, i, 6, lm)[1:]:
                points.setdefault(n["id"], show(n["token"]))
    if len(points) < 3:
        st.info("Choose at least three different tokens for the map (two points always lie on a line).")
    else:
        ids = list(points)
        coords, ratio = emb.pca_2d(torch.stack([emb.token_vector(lm, i) for i in ids]))
        frame = pd.DataFrame({"token": [points[i] for i in ids], "id": ids, "PC1": coords[:, 0],
                              "PC2": coords[:, 1], "chosen": ["chosen" if i in chosen else "neighbour" for i in ids]})
        base_chart = alt.Chart(frame).encode(
            x=alt.X("PC1:Q", title=f"PC1 ({ratio[0]:.0%} of variance)", scale=alt.Scale(zero=False, padding=40)),
            y=alt.Y("PC2:Q", title=f"PC2 ({ratio[1]:.0%} of variance)", scale=alt.Scale(zero=False, padding=20)))
        dots = base_chart.mark_circle(size=80).encode(
            color=alt.Color("chosen:N", title=None),
            tooltip=["token", "id", alt.Tooltip("PC1:Q", format=".3f"), alt.Tooltip("PC2:Q", format=".3f")])
        labels = base_chart.mark_text(align="left", dx=7, dy=-4, fontSize=12).encode(text="token")
        st.altair_chart((dots + labels).properties(height=420).interactive(), width="stretch")
        st.caption(f"Principal component analysis of {len(ids)} vectors of {W.shape[1]} numbers, projected on "
                   f"the two directions of largest spread ({ratio.sum():.0%} of the variance among these tokens).")
    if 2 <= len(chosen) <= 40:  # an Altair grid stays readable (and light) up to 1,600 cells
        sims = emb.cosine_matrix(torch.stack([emb.token_vector(lm, i) for i in chosen])).numpy()
        labels_ = [f"{chosen[i]} ({i})" for i in chosen]
        grid = pd.DataFrame([{"a": labels_[r], "b": labels_[c], "cosine": float(sims[r, c])}
                             for r in range(len(labels_)) for c in range(len(labels_))])
        st.altair_chart(alt.Chart(grid, title="Cosine similarity between the chosen tokens").mark_rect().encode(
            x=alt.X("b:N", sort=labels_, title=None, axis=alt.Axis(labelOverlap=False)),
            y=alt.Y("a:N", sort=labels_, title=None, axis=alt.Axis(labelOverlap=False)),
            color=alt.Color("cosine:Q", scale=alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True)),
            tooltip=["a", "b", alt.Tooltip("cosine:Q", format=".3f")]
        ).properties(height=max(60, 22 * len(labels_)),  # fit-x: the cells get this height, the labels come on top
                     autosize=alt.AutoSizeParams(type="fit-x", contains="padding")), width="stretch")

# ---------------------------------------------------------------- 4. positions

st.header("4. Positions")
st.markdown("Attention by itself ignores order, so the model must be told where each token is. Three ways:")
kind = emb.position_kind(lm)
st.caption({"learned": f"{lm.name} uses **learned position embeddings** (section b).",
            "rope": f"{lm.name} uses **rotary position embeddings, RoPE** (section c).",
            "none": f"{lm.name} has neither a learned position table nor a rotary module this lab recognises."}[kind])

st.subheader("a. Sinusoidal encoding (the original Transformer)")
st.latex(r"PE_{(pos,\,2i)} = \sin\!\left(\frac{pos}{10000^{2i/d}}\right) \qquad "
         r"PE_{(pos,\,2i+1)} = \cos\!\left(\frac{pos}{10000^{2i/d}}\right)")
c1, c2 = st.columns(2)
n_pos = c1.slider("Positions", 8, 512, 128, key="pos_n")
d_model = c2.slider("Dimensions d", 8, 1024, min(int(W.shape[1]), 256), step=8, key="pos_d")
pe = emb.sinusoidal_encoding(n_pos, d_model).numpy()
heatmap(pe, diverging=True,
        caption=f"PE [{n_pos} positions (rows) × {d_model} dimensions (columns)]: blue −1, red +1. Left columns "
                "turn fast with position, right columns slowly: every position gets a unique pattern.")
dims = sorted({0, 2, min(d_model - 2, 8), min(d_model - 2, d_model // 2)})
lines = pd.DataFrame([{"position": p, "value": float(pe[p, j]), "dimension": f"dim {j}"}
                      for j in dims for p in range(n_pos)])
st.altair_chart(alt.Chart(lines, title="A few dimensions along the positions").mark_line().encode(
    x="position:Q", y="value:Q", color="dimension:N", tooltip=["dimension", "position",
                                                              alt.Tooltip("value:Q", format=".3f")]
).properties(height=220), width="stretch")

st.subheader("b. Learned position embeddings (GPT-2 style)")
if kind != "learned":
    st.info("This model has no learned position table (GPT-2 style models have one, `wpe`). "
            "Pick tiny-gpt2 or a GPT-2 model in the sidebar to see it.")
else:
    table = emb.learned_position_module(lm)
    n_max = table.num_embeddings
    clamp_state("pos_learned_n", 2, min(n_max, 512), min(n_max, 128))  # tables differ between models
    n_sim = st.slider("Positions to compare", 2, min(n_max, 512), key="pos_learned_n")
    sim = emb.learned_position_similarity(lm, n_sim).numpy()
    heatmap(sim, width=480, height=480, diverging=True, vmax=1.0,
            caption=f"Cosine similarity between the learned vectors of positions 0 … {n_sim - 1} "
                    f"(a [{n_max} × {table.embedding_dim}] table): blue −1, red +1. A trained model shows a bright "
                    "band along the diagonal: nearby positions get similar vectors.")

st.subheader("c. Rotary position embeddings, RoPE (Llama style)")
if kind != "rope":
    st.info("This model does not use RoPE (Llama, Qwen, Mistral and SmolLM2 do). Pick tiny-llama or the "
            "embedded model in the sidebar to see it.")
else:
    inv = emb.model_inv_freq(lm)
    formula = emb.rope_inv_freq(lm.config)
    d_rot = emb.rope_dim(lm.config)
    m = st.columns(4)
    m[0].metric("Base θ", f"{emb.rope_theta(lm.config):,.0f}")
    m[1].metric("Rotating dims / head", d_rot)
    m[2].metric("Frequency pairs", inv.shape[0])
    m[3].metric("Longest turn", f"{float(emb.wavelengths(inv).max()):,.0f}",
                help="Positions the slowest pair needs for one full rotation: 2π / θ_i.")
    st.latex(r"\theta_i = \text{base}^{-2i/d}, \qquad \text{angle}(pos, i) = pos \cdot \theta_i")
    same = inv.shape == formula.shape and torch.allclose(inv, formula, rtol=1e-5)
    st.caption("The model's own `inv_freq` equals the formula." if same else
               "The model's `inv_freq` differs from the plain formula: it uses a scaled RoPE variant "
               f"({(getattr(lm.config, 'rope_parameters', None) or {}).get('rope_type', 'unknown')}). "
               "The charts use the model's values.")
    freq = pd.DataFrame({"pair i": np.arange(inv.shape[0]), "theta_i (radians per position)": inv.numpy(),
                         "wavelength (positions)": emb.wavelengths(inv).numpy()})
    st.altair_chart(alt.Chart(freq, title="Rotation speed of each pair of dimensions").mark_line(point=True).encode(
        x=alt.X("pair i:Q", scale=alt.Scale(domain=[0, inv.shape[0] - 1], nice=False)),
        y=alt.Y("theta_i (radians per position):Q", title="θ_i (log scale)", scale=alt.Scale(type="log")),
        tooltip=["pair i", alt.Tooltip("theta_i (radians per position):Q", format=".3g"),
                 alt.Tooltip("wavelength (positions):Q", format=",.1f")]).properties(height=260),
        width="stretch")

    st.markdown("**How one 2-D pair rotates with position.** RoPE rotates the pair (x<sub>i</sub>, "
                "x<sub>i+d/2</sub>) of every query and key by the angle pos·θ<sub>i</sub> (transformers pairs "
                "dimension i with i + d/2).", unsafe_allow_html=True)
    c1, c2 = st.columns(2)
    clamp_state("rope_pair", 0, inv.shape[0] - 1, 0)  # head sizes differ between models
    pair_i = c1.slider("Frequency pair i", 0, inv.shape[0] - 1, key="rope_pair")
    n_rot = c2.slider("Positions", 2, 64, 16, key="rope_positions")
    angles = emb.rope_angles(inv, n_rot)[:, pair_i]
    rotated = emb.rotate_pair((1.0, 0.0), angles).numpy()
    turn = np.linspace(0, 2 * np.pi, 97)
    circle = pd.DataFrame({"x": np.cos(turn), "y": np.sin(turn), "index": np.arange(97)})
    pts = pd.DataFrame({"x": rotated[:, 0], "y": rotated[:, 1], "position": np.arange(n_rot),
                        "angle (rad)": angles.numpy()})
    left, right = st.columns(2)
    with left:
        ring = alt.Chart(circle).mark_line(color="#cbd5e1").encode(
            x=alt.X("x:Q", scale=alt.Scale(domain=[-1.25, 1.25])),
            y=alt.Y("y:Q", scale=alt.Scale(domain=[-1.25, 1.25])), order="index:Q")
        dots = alt.Chart(pts).mark_circle(size=90).encode(
            x="x:Q", y="y:Q", color=alt.Color("position:Q", scale=alt.Scale(scheme="viridis"), legend=None),
            tooltip=["position", alt.Tooltip("angle (rad):Q", format=".3f"),
                     alt.Tooltip("x:Q", format=".3f"), alt.Tooltip("y:Q", format=".3f")])
        text = alt.Chart(pts).mark_text(dx=9, dy=-7, fontSize=11).encode(x="x:Q", y="y:Q", text="position:Q")
        # Streamlit fits axes and title into the size given: these leave a square plot for the circle
        st.altair_chart((ring + dots + text).properties(
            title=f"(1, 0) rotated by pos · θ_{pair_i} = pos · {float(inv[pair_i]):.4g}"), width=340, height=370)
    with right:
        rel = emb.rope_relative_score(inv, 256).numpy()
        st.altair_chart(alt.Chart(pd.DataFrame({"distance": np.arange(rel.shape[0]), "score": rel}),
                                  title="Query = key, moved apart").mark_line().encode(
            x="distance:Q", y=alt.Y("score:Q", title="mean cos(distance · θ_i)"),
            tooltip=["distance", alt.Tooltip("score:Q", format=".3f")]).properties(height=300), width="stretch")
        st.caption("After rotation, q·k depends on the distance between the two positions only, not on where "
                   "they are: RoPE encodes relative position.")
    n_heat = 512
    gap = emb.rope_max_difference(lm, inv, n_heat)
    heatmap(torch.cos(emb.rope_angles(inv, n_heat)).numpy().T, height=160, diverging=True,
            caption=f"cos(pos · θ_i) for each pair i (rows, fastest at the top) over positions 0…{n_heat - 1} "
                    f"(columns): blue −1, red +1. Slow pairs barely turn within {n_heat} positions: they tell far "
                    f"distances apart. Checked against the model's own `rotary_emb`: max difference {gap:.1e}.")

if corpus == "Tiny Shakespeare":
    bpe_source = f"--chars {st.session_state.get('bpe_chars', 100_000)}"
elif corpus == "Your own text":
    bpe_source = "--file your_text.txt"
else:
    bpe_source = f"--text '{text}'"
how_computed(bpe.train_bpe, bpe.encode, bpe.model_tokens, emb.nearest_neighbours, emb.pca_2d,
             emb.sinusoidal_encoding, emb.learned_position_similarity, emb.rope_angles,
             command=f"python -m core bpe {bpe_source} --base {base} --vocab-size {st.session_state.get('bpe_vocab', 300)} "
                     f"--encode 'lowest newest'\n"
                     f"python -m core embeddings {lm.spec.cli()}")
