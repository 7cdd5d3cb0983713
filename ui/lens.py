"""Charts and cached wrapper for the Logit lens page (the math is in core/inspect/lens.py)."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from core.inspect import lens as core_lens
from core.models.capture import Capture, token_display
from core.models.loading import LoadedModel

PLOT_SIZE = alt.AutoSizeParams(type="pad")  # width/height = the cells, axes and legend come on top
# Under the cells, not at their right: a right-hand legend pushed the chart past the page and was cut off.
CELL = 42  # px per position: 16 positions and the layer axis fit a 1280 px window beside the sidebar
BOTTOM_LEGEND = alt.Legend(orient="bottom", direction="horizontal", gradientLength=240)
LAYER_AXIS = alt.Axis(tickMinStep=1, format="d")  # whole layers only (a 2-layer model got 0.5 ticks)


@st.cache_resource(show_spinner="Applying the final norm and LM head after every layer…", max_entries=32)
def _lens(key: tuple, targets: tuple[int, ...] | None, positions: tuple[int, ...], _lm: LoadedModel,
          _cap: Capture) -> core_lens.LogitLens:
    return core_lens.logit_lens(_lm.model, _cap, list(targets) if targets is not None else None,
                                positions=list(positions))


def logit_lens(lm: LoadedModel, cap: Capture, targets: tuple[int, ...] | None,
               positions: tuple[int, ...]) -> core_lens.LogitLens:
    """core.inspect.lens.logit_lens for some positions (cached per model, text and positions; read-only)."""
    return _lens((lm.spec.key, cap.text, cap.seq_len), targets, positions, lm, cap)


def layer_names(layers: int) -> list[str]:
    """Row labels: 0 is the embedding output, `layers` the output of the last block."""
    return ["0 · embeddings"] + [str(i) for i in range(1, layers)] + [f"{layers} · last"]


def decode_map(lm: LoadedModel, ids) -> dict[int, str]:
    """Each distinct id decoded once, whitespace made visible."""
    unique = [int(i) for i in np.unique(np.asarray(ids)) if i >= 0]
    return dict(zip(unique, (token_display(t) for t in lm.token_strings(unique))))


def _short(s: str, n: int = 7) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def lens_frame(lm: LoadedModel, lens: core_lens.LogitLens, labels: list[str]) -> pd.DataFrame:
    """One row per (layer, position) of a lens result, with the top tokens and the target's rank."""
    top_ids, top_probs = lens.top_ids.numpy(), lens.top_probs.numpy()
    target_ids, target_ranks, target_probs = lens.target_ids.numpy(), lens.target_ranks.numpy(), lens.target_probs.numpy()
    names = decode_map(lm, np.concatenate([top_ids.ravel(), target_ids]))
    layers = lens.layers
    ynames = layer_names(layers)
    rows = []
    for layer in range(layers + 1):
        for n, p in enumerate(lens.positions.tolist()):
            ids = top_ids[layer, n]
            probs = top_probs[layer, n]
            target = int(target_ids[n])
            rank = int(target_ranks[layer, n])
            rows.append({
                "layer": ynames[layer], "layer_index": layer, "position": labels[p],
                "top token": names[int(ids[0])], "label": _short(names[int(ids[0])]),
                "probability": float(probs[0]),
                "top 3": "  ".join(f"{names[int(i)]} {q:.2f}" for i, q in zip(ids, probs)),
                "target": names.get(target, "—"),
                "target rank": rank if target >= 0 else None,
                "target probability": float(target_probs[layer, n]) if target >= 0 else None,
                "log10 rank": float(np.log10(rank)) if target >= 0 else None,
            })
    return pd.DataFrame(rows)


def _base(df: pd.DataFrame, labels: list[str], layers: int, width_per: int) -> alt.Chart:
    order = list(dict.fromkeys(df["position"]))
    return alt.Chart(df).encode(
        x=alt.X("position:O", sort=order, title="position (the token the prediction is made at)",
                axis=alt.Axis(labelAngle=-50, labelLimit=90, orient="top", labelOverlap=False)),
        y=alt.Y("layer:O", sort=layer_names(layers)[::-1], title="layer"),
        tooltip=["layer:N", "position:N", "top 3:N", alt.Tooltip("probability:Q", format=".3f"),
                 "target:N", "target rank:Q", alt.Tooltip("target probability:Q", format=".4f")],
    ).properties(width=width_per * len(order), height=max(120, 17 * (layers + 1)))


def top_token_chart(df: pd.DataFrame, labels: list[str], layers: int) -> alt.LayerChart:
    """Layer x position: the lens's top token as text, its probability as colour."""
    base = _base(df, labels, layers, CELL)
    rect = base.mark_rect().encode(color=alt.Color("probability:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]),
                                                   title="top-1 prob", legend=BOTTOM_LEGEND))
    text = base.mark_text(fontSize=10).encode(
        text="label:N", color=alt.condition("datum.probability > 0.55", alt.value("white"), alt.value("black")))
    return alt.layer(rect, text).properties(autosize=PLOT_SIZE)


def rank_chart(df: pd.DataFrame, labels: list[str], layers: int) -> alt.LayerChart:
    """Layer x position: rank of the tracked token (1 = top), log colour scale."""
    base = _base(df[df["target rank"].notna()], labels, layers, CELL)
    rect = base.mark_rect().encode(color=alt.Color("log10 rank:Q", scale=alt.Scale(scheme="orangered", reverse=True,
                                                                                  domainMin=0),
                                                   title="log₁₀ rank", legend=BOTTOM_LEGEND))
    text = base.mark_text(fontSize=9).encode(
        text=alt.Text("target rank:Q", format="d"),
        color=alt.condition("datum['log10 rank'] < 1.5", alt.value("white"), alt.value("black")))
    return alt.layer(rect, text).properties(autosize=PLOT_SIZE)


def trajectory_chart(lens: core_lens.LogitLens, position: int = 0) -> alt.Chart:
    """Across layers, at one position (index into the lens result): probability of the tracked and top token."""
    layers = lens.layers
    df = pd.DataFrame({"layer": list(range(layers + 1)) * 2,
                       "series": ["tracked token"] * (layers + 1) + ["top token at that layer"] * (layers + 1),
                       "probability": np.concatenate([lens.target_probs[:, position].numpy(),
                                                      lens.top_probs[:, position, 0].numpy()]).astype(float)})
    return alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("layer:Q", scale=alt.Scale(domain=[0, layers]), axis=LAYER_AXIS),
        y=alt.Y("probability:Q", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("series:N", title=None, legend=alt.Legend(orient="top")),
        tooltip=["layer:Q", "series:N", alt.Tooltip("probability:Q", format=".4f")],
    ).properties(height=260)


def rank_line_chart(lens: core_lens.LogitLens, position: int = 0) -> alt.Chart:
    layers = lens.layers
    df = pd.DataFrame({"layer": range(layers + 1), "rank": lens.target_ranks[:, position].numpy().astype(int)})
    return alt.Chart(df).mark_line(point=True, color="#e8590c").encode(
        x=alt.X("layer:Q", scale=alt.Scale(domain=[0, layers]), axis=LAYER_AXIS),
        y=alt.Y("rank:Q", scale=alt.Scale(type="log", reverse=True), title="rank of the tracked token (1 = top)"),
        tooltip=["layer:Q", "rank:Q"],
    ).properties(height=260)
