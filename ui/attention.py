"""Charts and cached wrappers for the Attention page (no math: that lives in core/inspect/attention.py)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image, ImageDraw, ImageFont

from core.inspect import attention as core_attn
from core.models.capture import Capture
from core.models.loading import LoadedModel
from ui.charts import heatmap_image

MASKED_RGB = (215, 215, 215)  # cells a causal model cannot attend to
MASKED_HEX = "#d7d7d7"
# width/height are the plot area, not the whole chart with axes and legend (Streamlit's default "fit"
# would shrink a square heatmap to make room for its labels).
PLOT_SIZE = alt.AutoSizeParams(type="pad")
ALTAIR_MAX_SEQ = 128  # 128 x 128 = 16k rects: beyond that the browser slows down; draw an image instead


# ---------------------------------------------------------------- cached computations (key = model + text)


def _key(lm: LoadedModel, cap: Capture) -> tuple[str, str, int]:
    return lm.spec.key, cap.text, cap.seq_len


# cache_resource, not cache_data: these arrays are read-only and large (30 x 9 x 256 x 256 floats = 70 MB),
# and cache_data would unpickle a copy on every rerun.
@st.cache_resource(show_spinner=False, max_entries=16)
def _stack(key: tuple, _cap: Capture):
    return core_attn.attention_stack(_cap)


def attention_array(lm: LoadedModel, cap: Capture) -> np.ndarray:
    """[layers, heads, seq, seq] float32, all layers stacked (shared, read-only)."""
    return _stack(_key(lm, cap), cap).numpy()


@st.cache_data(show_spinner=False, max_entries=32)
def _causal(key: tuple, _cap: Capture) -> bool:
    return core_attn.is_causal(_stack(key, _cap))


def is_causal(lm: LoadedModel, cap: Capture) -> bool:
    return _causal(_key(lm, cap), cap)


def layer_matrix(lm: LoadedModel, cap: Capture, layer: int, head: int | None) -> np.ndarray:
    """[seq, seq] of the chosen layer: one head, or the mean of the layer's heads (head=None)."""
    return core_attn.layer_matrix(_stack(_key(lm, cap), cap), layer, head).numpy()


def edges(lm: LoadedModel, cap: Capture, layer: int, head: int | None, threshold: float,
          query: int | None) -> list[core_attn.Edge]:
    stack = _stack(_key(lm, cap), cap)
    return core_attn.token_edges(core_attn.layer_matrix(stack, layer, head), threshold, query)


@st.cache_data(show_spinner=False, max_entries=32)
def _statistics(key: tuple, _cap: Capture) -> dict[str, np.ndarray]:
    attn = _stack(key, _cap)
    stats = core_attn.head_statistics(attn)
    out = {k: v.numpy() for k, v in stats.items()}
    out["type"] = np.array(core_attn.head_types(stats, attn.shape[-1]))
    return out


def statistics(lm: LoadedModel, cap: Capture) -> dict[str, np.ndarray]:
    """core.inspect.attention.head_statistics ([layers, heads] each) plus the head types."""
    return _statistics(_key(lm, cap), cap)


@st.cache_resource(show_spinner=False, max_entries=16)
def _rollout(key: tuple, residual: float, _cap: Capture) -> np.ndarray:
    return core_attn.attention_rollout(_stack(key, _cap), residual).numpy()


def rollout(lm: LoadedModel, cap: Capture, residual: float) -> np.ndarray:
    """[layers, seq, seq] attention rollout with residual weight `residual`."""
    return _rollout(_key(lm, cap), residual, cap)


@st.cache_resource(show_spinner=False, max_entries=16)
def _grid(key: tuple, sqrt: bool, groups: tuple[tuple[int, ...], ...], _cap: Capture) -> Grid:
    attn = _stack(key, _cap)
    return attention_grid(attn.numpy(), [list(g) for g in groups], core_attn.is_causal(attn), sqrt)


def grid(lm: LoadedModel, cap: Capture, sqrt: bool, groups: list[list[int]]) -> Grid:
    """Every head in one picture (see attention_grid)."""
    return _grid(_key(lm, cap), sqrt, tuple(tuple(g) for g in groups), cap)


# ---------------------------------------------------------------- images


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def _tile(matrix: np.ndarray, size: int) -> np.ndarray:
    """Resize a [seq, seq] array to [size, size]: area average when shrinking, blocks when growing."""
    if matrix.shape[0] == size:
        return matrix
    img = Image.fromarray(matrix.astype(np.float32), mode="F")
    method = Image.BOX if matrix.shape[0] > size else Image.NEAREST
    return np.asarray(img.resize((size, size), method), dtype=np.float32)


@dataclass(frozen=True)
class Grid:
    rgb: np.ndarray  # [height, width, 3] uint8, shared and read-only
    boxes: dict[tuple[int, int], tuple[int, int, int, int]]  # (layer, head) -> (x0, y0, x1, y1) of its tile


def attention_grid(attn: np.ndarray, groups: list[list[int]], causal: bool, sqrt: bool = True,
                   width: int = 1400) -> Grid:
    """Every head in one picture: columns = layers, rows = heads, wider gaps between KV groups.

    attn [layers, heads, seq, seq]; colour = weight (or its square root), grey = causally masked.
    `width` stays under Streamlit's 1460 px, above which it would re-encode the PNG on every rerun.
    """
    layers, heads, seq, _ = attn.shape
    gap, group_gap, left, top = 2, 8, 78, 22
    tile = int(np.clip((width - left) // layers - gap, 16, 120))
    tile = min(tile, max(16, 900 // heads))
    if seq <= tile * 1.3:
        tile = seq * max(1, tile // seq)  # whole pixels per cell: no blur from resampling
    group_of = {h: g for g, members in enumerate(groups) for h in members}
    row_y, y = [], top
    for h in range(heads):
        if h and group_of.get(h) != group_of.get(h - 1):
            y += group_gap - gap
        row_y.append(y)
        y += tile + gap
    height, full_width = y, left + layers * (tile + gap)
    values = np.zeros((height, full_width), np.float32)
    masked = np.zeros((height, full_width), bool)
    blank = np.ones((height, full_width), bool)
    upper = np.triu(np.ones((seq, seq), np.float32), 1)
    mask_tile = _tile(upper, tile) > 0.5 if causal else np.zeros((tile, tile), bool)
    boxes = {}
    for layer in range(layers):
        x = left + layer * (tile + gap)
        for h in range(heads):
            yy = row_y[h]
            values[yy:yy + tile, x:x + tile] = _tile(attn[layer, h], tile)
            masked[yy:yy + tile, x:x + tile] = mask_tile
            blank[yy:yy + tile, x:x + tile] = False
            boxes[(layer, h)] = (x, yy, x + tile - 1, yy + tile - 1)
    if sqrt:
        values = np.sqrt(np.clip(values, 0, None))
    rgb = np.array(heatmap_image(values, vmin=0.0, vmax=1.0))
    rgb[masked] = MASKED_RGB
    rgb[blank] = 255
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    font = _font(15)
    step = max(1, int(np.ceil(26 / (tile + gap))))  # layer numbers must not overlap
    for layer in range(0, layers, step):
        draw.text((left + layer * (tile + gap) + tile / 2, top - 4), str(layer), fill=(60, 60, 60), font=font,
                  anchor="ms")
    for h in range(heads):
        label = f"h{h}" + (f" kv{group_of[h]}" if len(groups) < heads else "")
        draw.text((left - 6, row_y[h] + tile / 2), label, fill=(60, 60, 60), font=font, anchor="rm")
    out = np.asarray(img)
    out.flags.writeable = False
    return Grid(out, boxes)


def grid_png(grid: Grid, layer: int, head: int | None) -> bytes:
    """The grid with the selected tile (or the whole layer, head=None) framed in red."""
    img = Image.fromarray(grid.rgb)
    draw = ImageDraw.Draw(img)
    heads = [head] if head is not None else sorted(h for (l, h) in grid.boxes if l == layer)
    x0, y0 = grid.boxes[(layer, heads[0])][:2]
    x1, y1 = grid.boxes[(layer, heads[-1])][2:]
    draw.rectangle((x0 - 2, y0 - 2, x1 + 2, y1 + 2), outline=(230, 20, 60), width=2)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # speed over size: this runs on every rerun
    return buf.getvalue()


def matrix_png(matrix: np.ndarray, causal: bool, sqrt: bool, size: int = 640) -> bytes:
    """A large single [seq, seq] heatmap as PNG (for sequences too long for an Altair chart)."""
    seq = matrix.shape[0]
    scale = max(1, size // seq)
    values = np.sqrt(np.clip(matrix, 0, None)) if sqrt else matrix
    rgb = np.array(heatmap_image(values, vmin=0.0, vmax=float(values.max()) or 1.0))
    if causal:
        rgb[np.triu(np.ones((seq, seq), bool), 1)] = MASKED_RGB
    img = Image.fromarray(rgb).resize((seq * scale, seq * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- Altair charts


def _short(label: str, n: int = 14) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def matrix_chart(matrix: np.ndarray, labels: list[str], causal: bool, sqrt: bool, title: str = "",
                 value: str = "weight", size: int | None = None,
                 axes: tuple[str, str] = ("query (attending)", "key (attended to)")) -> alt.Chart:
    """Rect heatmap [query rows, key columns] with hover; masked cells are left out and show as grey."""
    seq = matrix.shape[0]
    size = size or int(np.clip(14 * seq, 360, 760))
    q, k = np.indices((seq, seq))
    keep = (k <= q) if causal else np.ones_like(q, bool)
    lab = np.array([_short(x) for x in labels], dtype=object)
    df = pd.DataFrame({"query": lab[q[keep]], "key": lab[k[keep]], value: matrix[keep].astype(float)})
    order = list(lab)
    font = 11 if size / seq >= 13 else 9
    overlap = False if size / seq >= font + 1 else "greedy"  # every token labelled when the rows are tall enough
    chart = alt.Chart(df, title=title).mark_rect().encode(
        x=alt.X("key:O", sort=order, title=axes[1],
                axis=alt.Axis(labelFontSize=font, labelOverlap=overlap, labelLimit=110, labelAngle=-60)),
        y=alt.Y("query:O", sort=order, title=axes[0],
                axis=alt.Axis(labelFontSize=font, labelOverlap=overlap, labelLimit=110)),
        color=alt.Color(f"{value}:Q", scale=alt.Scale(scheme="viridis", type="sqrt" if sqrt else "linear",
                                                      domainMin=0), legend=alt.Legend(title=value)),
        tooltip=[alt.Tooltip("query:N", title=axes[0]), alt.Tooltip("key:N", title=axes[1]),
                 alt.Tooltip(f"{value}:Q", format=".4f")],
    ).properties(width=size, height=size, autosize=PLOT_SIZE)
    return chart.configure_view(fill=MASKED_HEX if causal else None, strokeWidth=0)


def edges_chart(edges: list[core_attn.Edge], labels: list[str]) -> alt.LayerChart:
    """Token-to-token view: queries on the left, keys on the right, a line per edge, opacity = weight."""
    seq = len(labels)
    height_per_token, font = (16, 11) if seq <= 64 else (10, 8)
    tokens = pd.DataFrame({"pos": range(seq), "label": [_short(x, 18) for x in labels]})
    df = pd.DataFrame([{"query": e.query, "key": e.key, "weight": e.weight, "x0": 0.0, "x1": 1.0,
                        "from": labels[e.query], "to": labels[e.key]} for e in edges],
                      columns=["query", "key", "weight", "x0", "x1", "from", "to"])
    y_scale = alt.Scale(domain=[-0.5, seq - 0.5], reverse=True)
    x_scale = alt.Scale(domain=[-0.45, 1.45])
    rules = alt.Chart(df).mark_rule(color="#d6336c").encode(
        x=alt.X("x0:Q", scale=x_scale, axis=None), x2="x1:Q",
        y=alt.Y("query:Q", scale=y_scale, axis=None), y2="key:Q",
        opacity=alt.Opacity("weight:Q", scale=alt.Scale(domain=[0, 1], range=[0.05, 1]), legend=None),
        strokeWidth=alt.StrokeWidth("weight:Q", scale=alt.Scale(domain=[0, 1], range=[0.5, 4]), legend=None),
        tooltip=[alt.Tooltip("from:N", title="query"), alt.Tooltip("to:N", title="key"),
                 alt.Tooltip("weight:Q", format=".4f")])
    left = alt.Chart(tokens.assign(x=0.0)).mark_text(align="right", dx=-6, fontSize=font).encode(
        x=alt.X("x:Q", scale=x_scale, axis=None), y=alt.Y("pos:Q", scale=y_scale, axis=None), text="label:N")
    right = alt.Chart(tokens.assign(x=1.0)).mark_text(align="left", dx=6, fontSize=font).encode(
        x=alt.X("x:Q", scale=x_scale, axis=None), y=alt.Y("pos:Q", scale=y_scale, axis=None), text="label:N")
    width = 460
    return alt.layer(rules, left, right).properties(width=width, height=max(120, seq * height_per_token),
                                                    autosize=PLOT_SIZE) \
        .configure_view(strokeWidth=0)


def head_grid_chart(values: np.ndarray, stats: dict[str, np.ndarray], title: str, field: str,
                    nominal: bool = False) -> alt.Chart:
    """Layer x head chart of one statistic (or of the head type), hover shows every statistic."""
    layers, heads = values.shape
    layer, head = np.indices((layers, heads))
    df = pd.DataFrame({"layer": layer.ravel(), "head": head.ravel(), field: values.ravel()})
    tips = [alt.Tooltip("layer:O"), alt.Tooltip("head:O")]
    for name in core_attn.STATISTICS:
        df[name] = stats[name].ravel().astype(float)
        tips.append(alt.Tooltip(f"{name}:Q", format=".3f"))
    df["type"] = stats["type"].ravel()
    tips.append(alt.Tooltip("type:N"))
    color = (alt.Color(f"{field}:N", scale=alt.Scale(domain=list(core_attn.HEAD_TYPES),
                                                     range=["#d6336c", "#f59f00", "#1c7ed6", "#37b24d",
                                                            "#adb5bd"]))
             if nominal else alt.Color(f"{field}:Q", scale=alt.Scale(scheme="viridis"), title=field))
    cell = max(12, min(36, 700 // layers))
    return alt.Chart(df, title=title).mark_rect().encode(
        x=alt.X("layer:O"), y=alt.Y("head:O"), color=color, tooltip=tips,
    ).properties(width=max(160, cell * layers), height=max(88, 22 * heads), autosize=PLOT_SIZE)


def bar_chart(values: np.ndarray, labels: list[str], title: str, y: str = "share") -> alt.Chart:
    df = pd.DataFrame({"token": [_short(x) for x in labels], y: values.astype(float), "pos": range(len(labels))})
    return alt.Chart(df, title=title).mark_bar().encode(
        x=alt.X("token:N", sort=list(df["token"]), title=None, axis=alt.Axis(labelAngle=-60, labelFontSize=9)),
        y=alt.Y(f"{y}:Q"), tooltip=["token:N", alt.Tooltip(f"{y}:Q", format=".4f")],
    ).properties(height=220)
