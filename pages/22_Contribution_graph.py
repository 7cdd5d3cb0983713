"""Contribution graph: the routes through layers and positions that carried one prediction."""

from __future__ import annotations

import shlex

import altair as alt
import pandas as pd
import streamlit as st

from core.circuits import graph as G
from core.models.capture import InputError, token_display
from ui import circuits as ui
from ui import state
from ui.explain import how_computed
from ui.models import model_picker

DEFAULT_TEXT = "The Eiffel Tower is in the city of"

st.title("🕸️ Contribution graph")
lm = model_picker()


def explain(text: str = DEFAULT_TEXT) -> None:
    quoted = shlex.quote(text) if len(text) <= 200 else "'YOUR TEXT'"
    how_computed(G.contribution_graph, G.proximity_shares,
                 command=f"python -m core dla {lm.spec.cli()} --text {quoted}",
                 note="The graph has no command of its own; `dla` gives the last node's per-head contributions. "
                      "Value vectors, attention probabilities, output-projection inputs and MLP outputs are recorded "
                      "in one forward pass of the model; each attention update is split per source token and "
                      "each piece is weighted by its proximity to the whole update (Ferrando & Voita 2024).")


st.markdown(
    "Each dot is the residual stream at one **position** (column) after one **layer** (row). A line from a dot "
    "below to a dot above is an **attention route**: how much of that position's update came from that source "
    "token (the vertical line is the token keeping its own stream). Only routes that lead to the prediction at "
    "the top right, and carry at least the threshold's share, are drawn. Hover a dot for what the stream would "
    "predict there (logit lens) and how much of its update the MLP wrote.")
lay = ui.circuit_layout(lm)
if lay is None:
    explain()
    st.stop()
text = state.keep(st.text_area, "Text", value=DEFAULT_TEXT, key="cg_text", height=68,
                  help=f"Up to {G.MAX_TOKENS} tokens (the graph has layers × positions² routes).")
try:
    g = ui.contribution_graph(lm, text)
except InputError as exc:
    st.info(str(exc))
    explain(text)
    st.stop()
if len(lm.encode(text)) > G.MAX_TOKENS:
    st.warning(f"The text is longer than {G.MAX_TOKENS} tokens; only the first {G.MAX_TOKENS} were used.")


@st.fragment
def draw(g: G.ContributionGraph) -> None:
    threshold = state.keep(st.slider, "Show routes carrying at least", 0.01, 0.5, 0.04, 0.01, key="cg_thr",
                           help="A share of the position's attention update (0.04 = 4%).")
    edges = g.edges(threshold)
    seq, layers = len(g.tokens), g.n_layers
    labels = [f"{i}·{token_display(t)}" for i, t in enumerate(g.tokens)]
    used = {(l + 1, i) for l, _, i, _ in edges} | {(l, j) for l, j, _, _ in edges} | {(layers, g.target_position)}
    nodes = pd.DataFrame([{
        "layer": l, "position": labels[i], "pos": i,
        "lens": "  ".join(f"{token_display(t)} {p:.2f}" for t, p in g.lens_top[l][i]),
        "MLP share": float(g.mlp_share[l - 1, i]) if l > 0 else 0.0,
        "on a route": (l, i) in used} for l in range(layers + 1) for i in range(seq)])
    lines = pd.DataFrame([{"x": labels[j], "x2": labels[i], "y": l, "y2": l + 1, "share": w,
                           "route": f"layer {l + 1}: {labels[j]} → {labels[i]}",
                           "kind": "own stream" if i == j else "from another token",
                           "strongest head": f"L{l}.H{int(g.top_head[l, i, j])}"} for l, j, i, w in edges])
    x = alt.X("position:O", sort=labels, title="position", axis=alt.Axis(labelAngle=-45, labelLimit=90, orient="top"))
    y = alt.Y("layer:Q", title="layer (0 = embeddings)", scale=alt.Scale(domain=[0, layers]))
    base = alt.Chart(nodes).mark_circle().encode(
        x=x, y=y, size=alt.Size("MLP share:Q", scale=alt.Scale(range=[20, 220]), legend=None),
        color=alt.condition(alt.datum["on a route"], alt.value("#b2182b"), alt.value("#cccccc")),
        tooltip=["position:N", "layer:Q", alt.Tooltip("lens:N", title="logit lens top 3"),
                 alt.Tooltip("MLP share:Q", format=".2f")])
    chart = base
    if len(lines):
        routes = alt.Chart(lines).mark_rule().encode(
            color=alt.Color("kind:N", scale=alt.Scale(domain=["own stream", "from another token"],
                                                      range=["#bbbbbb", "#2166ac"]), title="route"),
            x=alt.X("x:O", sort=labels), x2="x2", y=alt.Y("y:Q"), y2="y2",
            strokeWidth=alt.StrokeWidth("share:Q", scale=alt.Scale(range=[0.5, 6]), legend=None),
            opacity=alt.Opacity("share:Q", scale=alt.Scale(range=[0.3, 1]), legend=None),
            tooltip=["route:N", alt.Tooltip("share:Q", format=".3f"), "strongest head:N"])
        chart = routes + base
    st.altair_chart(chart.properties(width=max(300, 60 * seq), height=max(300, 16 * layers)), width="content")
    top = g.lens_top[layers][g.target_position][0]
    st.caption(f"{len(edges)} routes drawn into the prediction at {labels[g.target_position]} "
               f"(the model's top next token: {token_display(top[0])!r}, {top[1]:.2f}). Dot size: the MLP's share "
               "of that position's update at that layer. Edge width: its share of the attention update.")


draw(g)
state.share_link()
explain(text)
