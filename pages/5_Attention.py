"""Attention: every head's attention on the user's text, head statistics, token-to-token lines, rollout."""

from __future__ import annotations

import shlex

import numpy as np
import pandas as pd
import streamlit as st

from core.inspect import attention as core_attn
from core.models.capture import Capture
from core.models.loading import LoadedModel
from core.units import plural
from ui import attention as charts
from ui import state
from ui.explain import how_computed
from ui.models import forward, model_picker
from ui.text import md
from ui.widgets import clamp_state, scroll_wide_charts

MAX_TOKENS = 256  # 30 layers x 9 heads x 256 x 256 weights is already 70 MB per text
# A repeated sentence: previous-token and induction-like heads show up on the second copy.
DEFAULT_TEXT = ("The little robot walked into the kitchen and asked the chef for a cup of tea. The chef smiled "
                "and said: the little robot walked into the kitchen and asked the chef for a cup of tea.")
DEFAULT_TEXT_2 = "Alice gave Bob a book because Bob had asked Alice for something to read on the train."

st.title("👀 Attention")
scroll_wide_charts()
lm = model_picker()
groups = core_attn.kv_groups(lm.config)


def explain(layer: int = 0, head: int = 0, text: str = DEFAULT_TEXT) -> None:
    quoted = shlex.quote(text) if len(text) <= 200 else "'YOUR TEXT'"
    how_computed(core_attn.head_statistics, core_attn.attention_rollout, core_attn.token_edges,
                 core_attn.kv_head_of,
                 command=f"python -m core attention {lm.spec.cli()} --text {quoted} "
                         f"--layer {layer} --head {head} --json",
                 note="The attention weights are the model's own: it runs with eager attention and returns "
                      "softmax(QKᵀ/√d + mask) for every layer and head (`output_attentions=True`). "
                      "Everything below is read from those tensors; nothing is recomputed or simulated.")


st.markdown(
    "Each attention head decides, for every token (the **query**), how much to read from each earlier token "
    "(the **keys**). A row of the matrix is one query token and sums to 1. The model is causal: a token cannot "
    "look ahead, so the upper triangle is masked (grey).")

text = state.keep(st.text_area, "Text", value=DEFAULT_TEXT, key="attn_text", height=90,
                  help=f"Up to {MAX_TOKENS} tokens are used (longer texts are cut).")
compare = state.keep(st.toggle, "Compare with a second text", key="attn_compare")
text_2 = state.keep(st.text_area, "Second text", value=DEFAULT_TEXT_2, key="attn_text2", height=68) if compare else None

cap = forward(lm, text, max_tokens=MAX_TOKENS)
if cap is None:
    explain()
    st.stop()
if cap.seq_len < 2:
    st.info(f"The text is a single token ({md(cap.labels[0])}). Attention needs at least two tokens: with one "
            "token the only possible attention is the token to itself (a 1 × 1 matrix of weight 1). "
            "Type a longer text.")
    explain(text=text)
    st.stop()

attn = charts.attention_array(lm, cap)  # [layers, heads, seq, seq]
n_layers, n_heads, seq, _ = attn.shape
causal = charts.is_causal(lm, cap)

# Widgets keep their value across model changes; bring it back in range first.
clamp_state("attn_layer", 0, n_layers - 1)
clamp_state("attn_head", 0, n_heads - 1)

c1, c2, c3, c4 = st.columns([3, 2, 2, 2])
with c1:
    layer = state.keep(st.slider, "Layer", 0, n_layers - 1, key="attn_layer") if n_layers > 1 else 0
with c2:
    head = state.keep(st.selectbox, "Head", list(range(n_heads)), key="attn_head", format_func=lambda h: (
        f"head {h} · KV {core_attn.kv_head_of(h, n_heads, len(groups))}" if len(groups) < n_heads else f"head {h}"))
with c3:
    view = state.keep(st.radio, "Show", ["this head", "average of the layer's heads"], key="attn_view")
with c4:
    scale = state.keep(st.radio, "Colour", ["√ weight", "weight"], key="attn_scale",
                       help="The square root keeps weak patterns visible next to a strong first-token sink.")
sqrt = scale == "√ weight"
head_avg = view != "this head"
chosen_head = None if head_avg else head


def selected(capture: Capture) -> np.ndarray:
    """[seq, seq] of the chosen layer: one head or the head average."""
    return charts.layer_matrix(lm, capture, layer, chosen_head)


def big_heatmap(matrix: np.ndarray, labels: list[str], title: str, size: int | None = None,
                axes: tuple[str, str] = ("query (attending)", "key (attended to)")) -> None:
    if len(labels) <= charts.ALTAIR_MAX_SEQ:
        st.altair_chart(charts.matrix_chart(matrix, labels, causal, sqrt, title, size=size, axes=axes),
                        width="content")
    else:
        st.image(charts.matrix_png(matrix, causal, sqrt), caption=f"{title} (image: {len(labels)} tokens is "
                 f"too many for a hover chart; rows = {axes[0]}, columns = {axes[1]})")


# ---------------------------------------------------------------- all heads
st.subheader("Every head at a glance")
grid = charts.grid(lm, cap, sqrt, groups)
st.image(charts.grid_png(grid, layer, None if head_avg else head), width=grid.rgb.shape[1])  # shrinks to fit
kv_note = (f" Heads are grouped by the K/V head they share (grouped-query attention: {n_heads} query heads, "
           f"{len(groups)} K/V heads; `kvG` in the labels)." if len(groups) < n_heads else "")
st.caption(f"Columns = layers 0–{n_layers - 1}, rows = heads 0–{n_heads - 1}; each square is one head's "
           f"{seq} × {seq} attention matrix (query rows, key columns), colour = "
           f"{'√ weight' if sqrt else 'weight'} from 0 (dark) to 1 (yellow), grey = masked future, "
           f"red frame = the selection below.{kv_note}")

# ---------------------------------------------------------------- the selected head
what = f"layer {layer}, " + ("mean of all heads" if head_avg else f"head {head}")
st.subheader(f"Layer {layer}, {'all heads averaged' if head_avg else f'head {head}'}")
stats = charts.statistics(lm, cap)
if len(groups) < n_heads and not head_avg:
    kv = core_attn.kv_head_of(head, n_heads, len(groups))
    st.markdown(f"Query head {head} reads **K/V head {kv}**, which it shares with heads "
                f"{', '.join(str(h) for h in groups[kv] if h != head) or 'none'}: their keys and values are "
                f"the same, only the queries differ.")
STAT_LABELS = {"entropy": "Entropy (nats)", "sink": "To first token", "previous": "To previous token",
               "self": "To itself", "distance": "Distance (tokens)"}  # the unit in the label: "9.6 tokens" was cut in a fifth of the page


def head_values(head_stats: dict) -> dict[str, float]:
    """The selected head's statistics (or their mean over the layer's heads), by label."""
    summary = core_attn.head_summary(head_stats, layer, chosen_head)
    return {label: summary[name] for name, label in STAT_LABELS.items()}


values = head_values(stats)
m = st.columns(5)
for col, (name, label) in zip(m, STAT_LABELS.items()):
    value = values[label]
    col.metric(label, f"{value:.3f}" if name != "distance" else f"{value:.1f}",
               help=core_attn.STATISTICS[name] + ". Mean over query positions 1…n−1"
                    + (", then over the layer's heads (for entropy: the heads' mean entropy, not the entropy "
                       "of the averaged map)." if head_avg else "."))
if compare:
    st.caption("The numbers above are for the first text; both texts are compared in the table below.")
    left, right = st.columns(2)
    with left:
        big_heatmap(selected(cap), cap.labels, f"Text 1: {what}", size=270)
    with right:  # a truncation warning for the second text lands beside its heatmap
        has_text_2 = bool(text_2 and text_2.strip())
        cap_2 = forward(lm, text_2, max_tokens=MAX_TOKENS) if has_text_2 else None
        if not has_text_2:
            st.info("The second text is empty: type a sentence to compare with the first.")
        elif cap_2 is None:
            pass
        elif cap_2.seq_len < 2:
            st.info("The second text is a single token: attention needs at least two tokens.")
        else:
            big_heatmap(selected(cap_2), cap_2.labels, f"Text 2: {what}", size=270)
    if cap_2 is not None and cap_2.seq_len >= 2:
        stats_2 = charts.statistics(lm, cap_2)
        table = pd.DataFrame([values, head_values(stats_2)],
                             index=[f"Text 1 ({cap.seq_len} tokens)", f"Text 2 ({cap_2.seq_len} tokens)"])
        st.dataframe(table.style.format("{:.3f}"), width="stretch")
else:
    big_heatmap(selected(cap), cap.labels, what)

# ---------------------------------------------------------------- token to token


@st.fragment
def token_to_token(lm: LoadedModel, cap: Capture) -> None:
    st.subheader("Token to token")
    t1, t2 = st.columns([1, 2])
    threshold = state.keep(t1.slider, "Show weights of at least", 0.01, 1.0, 0.1, 0.01, key="attn_threshold")
    focus = t2.selectbox("Lines from", ["every token"] + cap.labels, key="attn_focus")
    query = None if focus == "every token" else cap.labels.index(focus)
    edges = charts.edges(lm, cap, layer, chosen_head, threshold, query)
    if edges:
        st.altair_chart(charts.edges_chart(edges, cap.labels), width="content")
        st.caption(f"{plural(len(edges), 'line')}: each query token (left) to the tokens it reads (right); thicker and darker "
                   f"= more weight. {what}.")
    else:
        st.info(f"No attention weight reaches {threshold:.2f} in {what}; lower the threshold.")


@st.fragment
def head_statistics(stats: dict) -> None:
    st.subheader("Head statistics across the model")
    stat = state.keep(st.radio, "Statistic", list(core_attn.STATISTICS), key="attn_stat", horizontal=True,
                      format_func=lambda s: {"entropy": "entropy", "sink": "first token (sink)",
                                             "previous": "previous token", "self": "itself",
                                             "distance": "mean distance"}[s])
    st.altair_chart(charts.head_grid_chart(stats[stat], stats, core_attn.STATISTICS[stat], stat),
                    width="content")
    st.altair_chart(charts.head_grid_chart(stats["type"], stats, "Head types (rough heuristic, hover for the numbers)",
                                           "type", nominal=True), width="content")
    counts = {t: int((stats["type"] == t).sum()) for t in core_attn.HEAD_TYPES}
    st.caption("Means over query positions 1…n−1 (position 0 can only attend to itself). Type: the target that "
               "gets ≥ 50% of the attention on average, else *broad* (entropy ≥ 80% of uniform) or *mixed*. "
               + " · ".join(f"{t}: {n}" for t, n in counts.items()))


@st.fragment
def rollout(lm: LoadedModel, cap: Capture) -> None:
    st.subheader("Attention rollout")
    st.markdown("How much of each input token reaches a position after several layers, following attention "
                "through the residual connections (Abnar & Zuidema 2020): each layer's head-averaged attention A "
                "becomes r·I + (1−r)·A, rows renormalised, multiplied layer by layer.")
    residual = state.keep(st.slider, "Residual weight r", 0.0, 1.0, 0.5, 0.05, key="attn_residual",
                          help="0.5 is the paper's choice: half of what a position carries forward is itself.")
    rolled = charts.rollout(lm, cap, residual)  # [layers, seq, seq]
    big_heatmap(rolled[layer], cap.labels, f"Rollout through layers 0–{layer}",
                axes=("position", "input token it carries"))
    st.altair_chart(charts.bar_chart(rolled[layer, -1], cap.labels,
                                     f"What the last token ({cap.labels[-1]}) draws from, after layer {layer}"),
                    width="stretch")


token_to_token(lm, cap)
head_statistics(stats)
rollout(lm, cap)
state.share_link()
explain(layer, head, text)
