"""Logit lens: the model's final norm and LM head applied to the residual stream after every layer."""

from __future__ import annotations

import shlex

import streamlit as st

from core.inspect import lens as core_lens
from core.models.capture import Capture
from core.models.loading import LoadedModel
from ui import lens as charts
from ui import state
from ui.explain import how_computed
from ui.forward import residual_capture
from ui.models import model_picker
from ui.text import code, md
from ui.widgets import clamp_state, keep_choice, scroll_wide_charts

MAX_TOKENS = 256  # same cap as the Attention page; the lens itself is computed only for the positions drawn
WINDOW = 16  # positions drawn with their tokens at once; the chart gets too wide beyond that
DEFAULT_TEXT = "The Eiffel Tower is in Paris, the capital of France. The Colosseum is in Rome, the capital of"
TRACK = {"final": "the model's final prediction at that position", "next": "the next token of the text"}

st.title("🔭 Logit lens")
scroll_wide_charts()
lm = model_picker()


def explain(text: str = DEFAULT_TEXT, track: str = "final") -> None:
    quoted = shlex.quote(text) if len(text) <= 200 else "'YOUR TEXT'"
    how_computed(core_lens.logit_lens, core_lens.lens_logits, core_lens.residual_stream, core_lens.final_norm_name,
                 command=f"python -m core lens {lm.spec.cli()} --text {quoted} --track {track}",
                 note="The residual stream before the final norm is read from the model's own forward pass "
                      "(the hidden state after each block; after the last block, the input of the final norm, "
                      "captured by a hook: the same capture the Forward pass page uses). The model's own final "
                      "norm and LM head modules are applied to it.")


@st.fragment
def one_position(lm: LoadedModel, cap: Capture, targets: tuple[int, ...] | None, choices: list[int]) -> None:
    """The tracked token's probability and rank across layers at one position."""
    keep_choice("lens_position", choices, choices[-1])
    position = st.selectbox("Position", choices, format_func=lambda p: cap.labels[p], key="lens_position")
    one = charts.logit_lens(lm, cap, targets, (position,))
    names = charts.decode_map(lm, one.target_ids)
    st.markdown(f"Tracked token at **{md(cap.labels[position])}**: {code(names[int(one.target_ids[0])])}.")
    l1, l2 = st.columns(2)
    l1.altair_chart(charts.trajectory_chart(one), width="stretch")
    l2.altair_chart(charts.rank_line_chart(one), width="stretch")
    first_top = one.first_top_layer(0)
    if first_top is not None:
        st.caption(f"The tracked token is the top prediction from layer {first_top} on.")
    else:
        st.caption("The tracked token is not the top prediction at the last layer (the model predicts something else).")


st.markdown(
    "After each block, the model's hidden state is a vector in the same space as its final output. The **logit "
    "lens** asks: *if the model stopped here*, applying its final norm and LM head right away, what would it "
    "predict? Early layers usually guess the input token or common words; the final answer forms in later layers. "
    "Each position predicts the **next** token.")

text = state.keep(st.text_area, "Text", value=DEFAULT_TEXT, key="lens_text", height=80,
                  help=f"Up to {MAX_TOKENS} tokens are used (longer texts are cut).")
track = state.keep(st.radio, "Track the rank of", list(TRACK), format_func=TRACK.get, key="lens_track",
                   horizontal=True)

cap = residual_capture(lm, text, MAX_TOKENS)
if cap is None:
    explain()
    st.stop()

targets = tuple(core_lens.next_token_targets(cap)) if track == "next" else None
seq = cap.seq_len
if seq > WINDOW:
    clamp_state("lens_window", 0, seq - WINDOW, seq - WINDOW)
    start = st.slider(f"First position shown ({WINDOW} at a time, of {seq})", 0, seq - WINDOW, key="lens_window")
else:
    start = 0
window = tuple(range(start, min(seq, start + WINDOW)))
lens = charts.logit_lens(lm, cap, targets, window)
layers = lens.layers
norm = lens.final_norm or "no final norm (identity)"

c = st.columns(3)
c[0].metric("Layers read", f"{layers + 1}", help="The embeddings (0) and the output of every block (1…L).")
c[1].metric("Final norm applied", norm.split(".")[-1], help=f"`{norm}`, found in the module tree.")
c[2].metric("Last layer vs the model's logits", f"max |Δ| = {lens.parity:.1e}",
            help="At the last layer the lens must reproduce the model's own logits (shown positions).")

df = charts.lens_frame(lm, lens, cap.labels)

st.subheader("Top token after each layer")
st.altair_chart(charts.top_token_chart(df, cap.labels, layers), width="content")
st.caption("Text = the most likely next token if the model stopped after that layer; colour = its probability. "
           "Hover for the top 3. The top row is the model's real output.")

st.subheader(f"Rank of {TRACK[track]}")
if track == "next" and window[-1] == seq - 1:
    st.caption("The last position has no next token in the text, so it is left out.")
st.altair_chart(charts.rank_chart(df, cap.labels, layers), width="content")
st.caption("1 = the token is the top prediction at that layer. Colour on a log scale.")

st.subheader("One position across layers")
choices = list(range(seq - 1)) if track == "next" else list(range(seq))
if not choices:
    st.info("The text is a single token, so it has no next token to track: choose the model's final prediction "
            "above, or type a longer text.")
else:
    one_position(lm, cap, targets, choices)

state.share_link()
explain(text, track)
