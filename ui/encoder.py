"""Cached wrappers and pictures for the Encoder attention page (the math is in core/circuits/encoder_attention.py).

Long inputs draw as images made here (numpy + PIL): a 512 x 512 attention matrix is 262,144 cells, which an
Altair chart turns into as many browser elements (seconds to draw, BertViz's failure on long inputs); the
PNG of the same matrix is one element. Short inputs keep an Altair chart, for hover.
"""

from __future__ import annotations

import io

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from core.circuits import encoder_attention as E
from core.models.capture import InputError
from core.models.loading import LoadedModel
from ui.attention import MASKED_HEX, MASKED_RGB, PLOT_SIZE, Grid, attention_grid
from ui.charts import heatmap_image
from ui.models import choose_model, page_link

INTERACTIVE_MAX = 64  # tokens per axis: up to 64 x 64 = 4,096 cells an Altair chart with hover; beyond, an image
PNG_SIZE = 640  # pixels the longer side of a matrix image aims at (whole pixels per cell: no blur)
# Colour top of a matrix image: this quantile of the unmasked weights, not the largest. In a long decoder the
# first rows hold weights near 1 (query 0 can only read itself) while row 300 spreads ~1/300 per key: scaled
# to the maximum, everything but the corner is black.
COLOUR_QUANTILE = 0.99
GRID_TILE_MAX = 240  # the all-heads picture never draws a head larger than this (ui.attention: 120 px)
DEFAULT_TEXT = {
    "encoder": "The chef who cooked the meal for the guests was praised because she had spent all day in "
               "the kitchen.",
    "encoder-decoder": "translate English to German: The house is wonderful and the garden is green.",
}
DEFAULT_TARGET = "Das Haus ist wunderbar und der Garten ist grün."


# ---------------------------------------------------------------- cached computation (key = model + texts)


@st.cache_resource(show_spinner="Running the model…", max_entries=8, ttl=3600)
def _attention(key: str, text: str, target: str | None, _lm: LoadedModel) -> E.EncoderAttention:
    return E.encoder_attention(_lm, text, target)


def attention(lm: LoadedModel, text: str, target: str | None) -> E.EncoderAttention | None:
    """Every attention of the model on `text` (and `target`), shared and read-only; None after saying why not."""
    try:
        return _attention(lm.spec.key, text, target if lm.kind == "encoder-decoder" else None, lm)
    except InputError as exc:
        st.info(str(exc))
        return None


@st.cache_resource(show_spinner=False, max_entries=16)
def _grid(key: tuple, which: str, sqrt: bool, _att: E.EncoderAttention) -> tuple[Grid, float]:
    stack = _att.stack(which)
    heads, q, k = stack.shape[1:]
    # a cross-attention matrix (q != k) is resampled square first: the picture's tiles are square
    values = (stack if q == k else E.square(stack, min(max(q, k), GRID_TILE_MAX))).numpy()
    top = colour_top(values)
    # attention_grid colours 0..1: scaled so that `top` is yellow (at 512 tokens a weight is ~0.002, black on 0..1)
    picture = attention_grid(np.minimum(values / top, 1.0), [[h] for h in range(heads)], _att.causal(which), sqrt)
    return picture, top


def grid(lm: LoadedModel, att: E.EncoderAttention, which: str, sqrt: bool) -> tuple[Grid, float]:
    """Every layer x head of `which` in one picture (ui.attention.attention_grid: columns = layers), and the
    weight drawn yellow (colour_top over all heads)."""
    key = (lm.spec.key, tuple(att.source_ids), tuple(att.target_ids))
    return _grid(key, which, sqrt, att)


# ---------------------------------------------------------------- one matrix: image or chart


def png_scale(queries: int, keys: int, size: int = PNG_SIZE) -> int:
    """Whole pixels per cell so that the longer side comes near `size` (at least 1)."""
    return max(1, size // max(queries, keys))


def colour_top(values: np.ndarray, sample: int = 1 << 21) -> float:
    """The weight drawn brightest: the COLOUR_QUANTILE of the cells that are not masked (> 0), read from an
    evenly strided sample of at most `sample` cells (12 x 12 heads x 512² is 38M)."""
    flat = values.ravel()
    flat = flat[::max(1, flat.size // sample)]
    cells = flat[flat > 0]
    return float(np.quantile(cells, COLOUR_QUANTILE)) if cells.size else 1.0


def matrix_png(matrix: np.ndarray, causal: bool, sqrt: bool, size: int = PNG_SIZE) -> bytes:
    """[queries, keys] as a PNG of keys*s x queries*s pixels (s = png_scale): colour = weight (or √weight)
    from 0 to colour_top (brighter cells saturate), grey = masked future for a causal matrix."""
    q, k = matrix.shape
    top = colour_top(matrix)
    values, top = (np.sqrt(np.clip(matrix, 0, None)), np.sqrt(top)) if sqrt else (matrix, top)
    rgb = np.array(heatmap_image(np.minimum(values, top), vmin=0.0, vmax=top))
    if causal:
        rgb[np.triu(np.ones((q, k), bool), 1)] = MASKED_RGB
    scale = png_scale(q, k, size)
    img = Image.fromarray(rgb).resize((k * scale, q * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # speed over size: it is drawn on every rerun
    return buf.getvalue()


def _short(label: str, n: int = 14) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def matrix_chart(matrix: np.ndarray, queries: list[str], keys: list[str], causal: bool, sqrt: bool,
                 title: str, axes: tuple[str, str]) -> alt.Chart:
    """[queries, keys] as an Altair heatmap with hover (short inputs only: one rect per cell)."""
    q, k = matrix.shape
    rows, cols = np.indices((q, k))
    keep = (cols <= rows) if causal else np.ones_like(rows, bool)
    ql = np.array([_short(x) for x in queries], dtype=object)
    kl = np.array([_short(x) for x in keys], dtype=object)
    df = pd.DataFrame({"query": ql[rows[keep]], "key": kl[cols[keep]], "weight": matrix[keep].astype(float)})
    cell = int(np.clip(560 // max(q, k), 8, 28))
    font = 11 if cell >= 13 else 9
    overlap = False if cell >= font + 1 else "greedy"
    return alt.Chart(df, title=title).mark_rect().encode(
        x=alt.X("key:O", sort=list(kl), title=axes[1],
                axis=alt.Axis(labelFontSize=font, labelOverlap=overlap, labelLimit=110, labelAngle=-60)),
        y=alt.Y("query:O", sort=list(ql), title=axes[0],
                axis=alt.Axis(labelFontSize=font, labelOverlap=overlap, labelLimit=110)),
        color=alt.Color("weight:Q", scale=alt.Scale(scheme="viridis", type="sqrt" if sqrt else "linear", domainMin=0),
                        legend=alt.Legend(title="weight")),
        tooltip=[alt.Tooltip("query:N", title=axes[0]), alt.Tooltip("key:N", title=axes[1]),
                 alt.Tooltip("weight:Q", format=".4f")],
    ).properties(width=cell * k, height=cell * q, autosize=PLOT_SIZE) \
        .configure_view(fill=MASKED_HEX if causal else None, strokeWidth=0)


def show_matrix(matrix: np.ndarray, queries: list[str], keys: list[str], causal: bool, sqrt: bool, title: str,
                axes: tuple[str, str]) -> None:
    """A chart with hover for a short input, else the server-drawn image."""
    q, k = matrix.shape
    if max(q, k) <= INTERACTIVE_MAX:
        st.altair_chart(matrix_chart(matrix, queries, keys, causal, sqrt, title, axes), width="content")
        return
    st.image(matrix_png(matrix, causal, sqrt),
             caption=f"{title}: {q} × {k} drawn as an image (more than {INTERACTIVE_MAX} tokens is too many "
                     f"cells for a hover chart); rows = {axes[0]} 0–{q - 1} from the top, columns = {axes[1]} "
                     f"0–{k - 1} from the left, colour from 0 (dark) to {colour_top(matrix):.3f} and above "
                     f"(yellow: the top 1% of the weights){', grey = masked future' if causal else ''}. "
                     "Pick a query token below to read its row.")


# ---------------------------------------------------------------- a causal model on this page


def offer_encoders(lm: LoadedModel) -> None:
    """Explain that the page is for encoder models; one click loads tiny-bert or tiny-t5."""
    st.info(f"**{lm.name}** is a causal language model: each token attends only to earlier ones, and the "
            "**Attention** page shows its heads. This page shows **encoder** models (BERT style: every token "
            "attends to every other, both ways) and **encoder-decoder** models (T5 style: encoder self-attention, "
            "decoder self-attention and cross-attention). Load one in the sidebar (a Hub id such as "
            "`google-bert/bert-base-uncased` or `google-t5/t5-small` when online), or a tiny one here:", icon="ℹ️")
    c1, c2, c3 = st.columns([1, 1, 2])
    c1.button("Load tiny-bert", icon="🔀", key="enc_load_bert", on_click=choose_model, args=("tiny-bert",))
    c2.button("Load tiny-t5", icon="🔀", key="enc_load_t5", on_click=choose_model, args=("tiny-t5",))
    with c3:
        page_link("pages/5_Attention.py", f"Attention: {lm.name}'s heads", "👀")
