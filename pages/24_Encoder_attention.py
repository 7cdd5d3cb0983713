"""Encoder attention: BERT-style bidirectional self-attention; T5-style encoder, decoder and cross-attention."""

from __future__ import annotations

import shlex

import streamlit as st

from core.circuits import encoder_attention as E
from core.units import plural
from ui import encoder as ui
from ui import state
from ui.attention import grid_png
from ui.explain import how_computed
from ui.inputs import checked_text
from ui.models import model_picker
from ui.text import md
from ui.widgets import clamp_state, keep_choice, scroll_wide_charts

st.title("🔀 Encoder attention")
scroll_wide_charts()
lm = model_picker(causal=False)
seq2seq = lm.kind == "encoder-decoder"


def explain(text: str = "", target: str = "", which: str = "encoder", layer: int = 0, head: int = 0) -> None:
    model = lm.spec.cli() if lm.kind != "causal" else "--model tiny-bert"
    quote = lambda t: shlex.quote(t) if t and len(t) <= 200 else "'YOUR TEXT'"  # noqa: E731
    command = f"python -m core encoder-attention {model} --text {quote(text)}"
    if seq2seq:
        command += f" --target {quote(target)}"
    command += f" --which {which} --layer {layer} --head {head}"
    how_computed(E.encoder_attention, E.encode_source, E.encode_target,
                 command=command,
                 note="One forward pass of the model with eager attention and `output_attentions=True`: every "
                      "matrix is the softmax the model itself computed (an encoder-decoder returns three sets: "
                      "`encoder_attentions`, `decoder_attentions`, `cross_attentions`). The decoder reads the "
                      "target after its start token (teacher forcing), as in training. Nothing is recomputed; "
                      "\"mean of all heads\" (`--head -1`) averages the layer's heads.")


if lm.kind == "causal":
    ui.offer_encoders(lm)
    explain()
    st.stop()

if seq2seq:
    st.markdown(
        "An **encoder-decoder** model (T5 style) has three kinds of attention. The **encoder** reads the input "
        "text and every token attends to every other, both ways. The **decoder** reads the output so far and "
        "attends only to earlier output tokens (causal: the upper triangle is masked). **Cross-attention** is "
        "where the two meet: each decoder token reads the encoder's tokens. Each row of a matrix is one query "
        "token and sums to 1.")
else:
    st.markdown(
        "An **encoder** (BERT style) reads the whole text at once: every token attends to every other token, "
        "to its left **and** to its right (bidirectional, nothing is masked), which is why it fills in a masked "
        "word rather than writing the next one. Each row of a matrix is one query token and sums to 1.")

cap = E.token_cap(lm)
text = state.keep(st.text_area, "Text (the encoder reads it)", value=ui.DEFAULT_TEXT[lm.kind], key="enc_text",
                  height=80)
ok = checked_text(lm, text, cap, "each head's matrix is drawn for up to 512 tokens")
target = ""
if seq2seq:
    target = state.keep(st.text_area, "Target (the decoder reads it after its start token)",
                        value=ui.DEFAULT_TARGET, key="enc_target", height=68)
    ok = checked_text(lm, target, cap, "the decoder reads up to 512 tokens", what="target") and ok
att = ui.attention(lm, text, target) if ok else None
if att is None:
    explain(text, target)
    st.stop()
if len(att.source_ids) < 2:
    st.info(f"The text is a single token ({md(att.source_tokens[0])}): with one token the only possible attention is "
            "the token to itself (a 1 × 1 matrix of weight 1). Type a longer text.")
    explain(text, target)
    st.stop()
for notice in att.notices:
    st.warning(notice)
fragments = sum("\ufffd" in t for t in att.source_tokens + att.target_tokens)
if fragments:
    st.caption(f"ℹ️ {fragments} token(s) are fragments of a multi-byte character (an emoji or a CJK character "
               "split into bytes): alone they decode to �, together they spell the character.")

names = {"encoder": "encoder self-attention", "decoder": "decoder self-attention", "cross": "cross-attention"}
if seq2seq:
    c1, c2, c3, c4 = st.columns([3, 3, 2, 2])
    which = state.keep(c1.radio, "Attention", list(att.available), key="enc_which", format_func=names.get)
else:  # an encoder has one attention: no picker
    (c2, c3, c4), which = st.columns([4, 2, 2]), "encoder"
stack = att.stack(which)  # [layers, heads, queries, keys]
n_layers, n_heads, n_q, n_k = stack.shape
clamp_state("enc_layer", 0, n_layers - 1)
clamp_state("enc_head", -1, n_heads - 1)
with c2:
    layer = state.keep(st.slider, "Layer", 0, n_layers - 1, key="enc_layer") if n_layers > 1 else 0
head = state.keep(c3.selectbox, "Head", list(range(-1, n_heads)), key="enc_head",
                  format_func=lambda h: "mean of all heads" if h < 0 else f"head {h}")
scale = state.keep(c4.radio, "Colour", ["√ weight", "weight"], key="enc_scale",
                   help="The square root keeps weak patterns visible next to a strong one.")
sqrt = scale == "√ weight"
causal = att.causal(which)
queries, keys = E.labels(att.query_tokens(which)), E.labels(att.key_tokens(which))
axes = {"encoder": ("query (input token)", "key (input token)"),
        "decoder": ("query (output token)", "key (earlier output token)"),
        "cross": ("query (output token)", "key (input token)")}[which]

st.subheader(f"Every head of the {names[which]}")
picture, top = ui.grid(lm, att, which, sqrt)
st.image(grid_png(picture, layer, None if head < 0 else head), width=picture.rgb.shape[1])
st.caption(f"Columns = layers 0–{n_layers - 1}, rows = heads 0–{n_heads - 1}; each square is one head's "
           f"{n_q} × {n_k} matrix ({axes[0]} rows, {axes[1]} columns), colour = "
           f"{'√ weight' if sqrt else 'weight'} from 0 (dark) to {top:.3f} and above (yellow: the top 1% of "
           "all heads' weights)"
           f"{', grey = masked future' if causal else ''}, red frame = the selection below.")

what = "mean of all heads" if head < 0 else f"head {head}"
st.subheader(f"Layer {layer}, {what}")
matrix = E.head_matrix(att, which, layer, None if head < 0 else head).numpy()
ui.show_matrix(matrix, queries, keys, causal, sqrt, f"{names[which]}, layer {layer}, {what}", axes)
if which == "encoder":
    right = E.right_share(att, which, layer, None if head < 0 else head)
    st.caption(f"Bidirectional: on average {right:.0%} of a token's attention goes to tokens to its **right** "
               "(a causal model gives them 0%).")
elif which == "decoder":
    st.caption("Causal: a decoder token reads only itself and earlier output tokens; the grey upper triangle was "
               "masked before the softmax, so it writes left to right.")

st.subheader("What one token reads")
positions = list(range(n_q))
keep_choice("enc_query", positions, n_q // 2)
query = st.selectbox("Query token", positions, key="enc_query", format_func=lambda i: queries[i])
most = E.top_keys(E.head_matrix(att, which, layer, None if head < 0 else head), query)
st.markdown("  \n".join(f"{md(keys[k])}: **{w:.3f}**" for k, w in most))
st.caption(f"The {plural(len(most), 'key')} that {md(queries[query])} reads most in layer {layer}, {what}"
           f"{' (a decoder token reads no later token)' if causal else ''}.")

state.share_link()
explain(text, target, which, layer, head)
