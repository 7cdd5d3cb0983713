"""Cached wrappers and charts for the Circuits pages (the math is in core/circuits/)."""

from __future__ import annotations

from typing import Callable
from urllib.parse import urlencode

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from core.circuits import ablation as A
from core.circuits import dla as D
from core.circuits import graph as G
from core.circuits import head_roles as R
from core.circuits import patching as P
from core.circuits.components import Layout, layout
from core.inspect.anatomy import UnsupportedModel
from core.jobs import Job
from core.models.capture import Capture, InputError
from core.models.loading import LoadedModel
from ui.models import URL_PARAMS, forward

MAX_TOKENS = 256  # like the Attention and Logit lens pages
HEADMAP_CELL = 22  # pixels per head / layer cell
# Patching work above this many (runs x tokens x parameters) goes to a background job with progress
# (about a second of fp32 matmuls on 2 CPU cores).
INLINE_WORK = 2e10


def circuit_layout(lm: LoadedModel) -> Layout | None:
    """The model's layout, or None after saying (on the page) why the circuits cannot follow it."""
    try:
        return layout(lm)
    except UnsupportedModel as exc:
        st.warning(f"The Circuits pages follow GPT-2 style and Llama style causal language models. {exc}")
        return None


def dla_capture(lm: LoadedModel, lay: Layout, text: str) -> Capture | None:
    """The shared cached forward pass, with the hooks DLA reads (None after showing why the text cannot be used)."""
    return forward(lm, text, max_tokens=MAX_TOKENS, hook_modules=D.hook_modules(lay))


@st.cache_resource(show_spinner=False, max_entries=64)
def _attribution(key: tuple, position: int, target, contrast, _lm: LoadedModel, _cap: Capture) -> D.Attribution:
    return D.attribute(_lm, _cap, position, target, contrast)


def attribution(lm: LoadedModel, cap: Capture, position: int, target: str | int | None,
                contrast: str | int | None) -> D.Attribution | None:
    """D.attribute, cached per model, text and choices; None after showing a message for bad input."""
    try:
        return _attribution((lm.spec.key, cap.text, cap.seq_len), position, target, contrast, lm, cap)
    except InputError as exc:
        st.info(str(exc))
        return None


@st.cache_resource(show_spinner="Running the model with the components switched off…", max_entries=32)
def _ablate(key: str, text: str, ablation: A.Ablation, position: int, _lm: LoadedModel) -> A.AblationResult:
    return A.ablate(_lm, text, ablation, position, k=10, max_tokens=MAX_TOKENS)


def ablate(lm: LoadedModel, text: str, ablation: A.Ablation, position: int = -1) -> A.AblationResult | None:
    try:
        return _ablate(lm.spec.key, text, ablation, position, lm)
    except InputError as exc:
        st.info(str(exc))
        return None


@st.cache_resource(show_spinner="Splitting every attention update by source token…", max_entries=16)
def _graph(key: str, text: str, _lm: LoadedModel) -> G.ContributionGraph:
    return G.contribution_graph(_lm, text)


def contribution_graph(lm: LoadedModel, text: str) -> G.ContributionGraph:
    """G.contribution_graph, cached per model and text (InputError for a text it cannot use)."""
    return _graph(lm.spec.key, text, lm)


@st.cache_resource(show_spinner="Scoring every head on a repeated random sequence…", max_entries=16)
def _roles(key: str, role: str, length: int, seed: int, _lm: LoadedModel) -> R.HeadRoles:
    return R.head_roles(_lm, role, length, seed)


def head_roles(lm: LoadedModel, role: str, length: int, seed: int) -> R.HeadRoles | None:
    try:
        return _roles(lm.spec.key, role, length, seed, lm)
    except ValueError as exc:
        st.info(str(exc))
        return None


def patching_runs(lay: Layout, what: str, n_tokens: int) -> int:
    return {"resid": (lay.n_layers + 1) * n_tokens, "heads": lay.n_layers * lay.n_heads, "mlp": lay.n_layers}[what]


def patching_work_size(lm: LoadedModel, lay: Layout, what: str, n_tokens: int) -> float:
    return float(patching_runs(lay, what, n_tokens) * n_tokens * lm.n_parameters)


def patching_inline(lm: LoadedModel, args: tuple) -> P.Patching | None:
    """A small patching run in the page, with a progress bar; None after a message for bad input."""
    bar = st.progress(0.0, text="Patching…")
    try:
        return P.activation_patching(lm, *args, max_tokens=MAX_TOKENS,
                                     progress=lambda d, n: bar.progress(d / n, text=f"Patched run {d} of {n}"))
    except InputError as exc:
        st.info(str(exc))
        return None
    finally:
        bar.empty()


def patching_work(lm: LoadedModel, args: tuple) -> Callable[[Job], P.Patching]:
    """The background job (a worker thread: no st.* calls in here)."""
    def work(job: Job) -> P.Patching:
        def progress(done: int, total: int) -> None:
            job.report(step=done)
            job.tick()  # pause / stop between batches
        return P.activation_patching(lm, *args, max_tokens=MAX_TOKENS, progress=progress)
    return work


# ---------------------------------------------------------------- links and labels


def attention_link(text: str, layer: int, head: int) -> str:
    """A relative link to the Attention page on one head of this text, with the current model."""
    params = {p: st.query_params.get(p) for p in URL_PARAMS if st.query_params.get(p)}
    params.update({"attn_layer": layer, "attn_head": head})
    if len(text) <= 1500:
        params["attn_text"] = text
    return "Attention?" + urlencode(params)


def unit_link(name: str, text: str) -> str:
    """'L3.H1' -> a markdown link to that head on the Attention page; other names as code."""
    if ".H" in name:
        layer, head = name[1:].split(".H")
        return f"[{name}]({attention_link(text, int(layer), int(head))})"
    return f"`{name}`"


# ---------------------------------------------------------------- charts


def head_heatmap(values: np.ndarray, title: str, value_name: str, diverging: bool = True,
                 domain: tuple[float, float] | None = None) -> alt.Chart:
    """[layers, heads] as a heatmap: layer 0 at the top, one cell per head, hover for the value."""
    layers, heads = values.shape
    df = pd.DataFrame([{"layer": l, "head": h, value_name: float(values[l, h]), "unit": f"L{l}.H{h}"}
                       for l in range(layers) for h in range(heads)])
    bound = float(np.abs(values).max()) or 1.0
    scale = (alt.Scale(scheme="redblue", domain=[-bound, bound], reverse=True) if diverging
             else alt.Scale(scheme="viridis", domain=list(domain) if domain else alt.Undefined))
    return alt.Chart(df, title=title).mark_rect().encode(
        x=alt.X("head:O", title="head"), y=alt.Y("layer:O", title="layer"),
        color=alt.Color(f"{value_name}:Q", scale=scale, title=value_name),
        tooltip=["unit:N", alt.Tooltip(f"{value_name}:Q", format=".4f")],
    ).properties(width=alt.Step(HEADMAP_CELL), height=alt.Step(14))


def mlp_bars(values: np.ndarray, title: str, value_name: str) -> alt.Chart:
    """[layers] as horizontal bars beside the head heatmap (same layer axis)."""
    df = pd.DataFrame({"layer": np.arange(len(values)), value_name: values.astype(float),
                       "unit": [f"L{l}.mlp" for l in range(len(values))]})
    return alt.Chart(df, title=title).mark_bar().encode(
        y=alt.Y("layer:O", title="layer"), x=alt.X(f"{value_name}:Q", title=value_name),
        color=alt.condition(alt.datum[value_name] > 0, alt.value("#b2182b"), alt.value("#2166ac")),
        tooltip=["unit:N", alt.Tooltip(f"{value_name}:Q", format=".4f")],
    ).properties(width=180, height=alt.Step(14))


def cumulative_chart(values: np.ndarray, value_name: str) -> alt.Chart:
    """The logit read after the embeddings (0) and after each layer, the final norm's scale frozen."""
    df = pd.DataFrame({"after layer": np.arange(len(values)), value_name: values.astype(float)})
    return alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("after layer:Q", axis=alt.Axis(tickMinStep=1, format="d"), title="after layer (0 = embeddings)"),
        y=alt.Y(f"{value_name}:Q"), tooltip=["after layer:Q", alt.Tooltip(f"{value_name}:Q", format=".4f")],
    ).properties(height=220)


def grid_heatmap(values: np.ndarray, rows: list[str], cols: list[str], title: str, x_title: str,
                 y_title: str) -> alt.Chart:
    """A restored-fraction grid [rows, cols]: 0 = corrupted (white), 1 = clean (red), below 0 blue."""
    df = pd.DataFrame([{"row": rows[i], "col": cols[j], "restored": float(values[i, j])}
                       for i in range(values.shape[0]) for j in range(values.shape[1])])
    return alt.Chart(df, title=title).mark_rect().encode(
        x=alt.X("col:O", sort=cols, title=x_title, axis=alt.Axis(labelAngle=-45, labelLimit=90)),
        y=alt.Y("row:O", sort=rows, title=y_title),
        color=alt.Color("restored:Q", scale=alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True), title="restored"),
        tooltip=[alt.Tooltip("row:N", title=y_title), alt.Tooltip("col:N", title=x_title),
                 alt.Tooltip("restored:Q", format=".3f")],
    ).properties(width=alt.Step(26), height=alt.Step(14))


def pattern_chart(attn: np.ndarray, labels: list[str], title: str) -> alt.Chart:
    """One head's attention [seq, seq] (query rows, key columns)."""
    seq = attn.shape[0]
    df = pd.DataFrame([{"query": labels[i], "key": labels[j], "weight": float(attn[i, j])}
                       for i in range(seq) for j in range(i + 1)])
    return alt.Chart(df, title=title).mark_rect().encode(
        x=alt.X("key:O", sort=labels, axis=alt.Axis(labels=False, ticks=False), title="key (attended to)"),
        y=alt.Y("query:O", sort=labels, axis=alt.Axis(labels=False, ticks=False), title="query"),
        color=alt.Color("weight:Q", scale=alt.Scale(scheme="viridis", domain=[0, 1])),
        tooltip=["query:N", "key:N", alt.Tooltip("weight:Q", format=".3f")],
    ).properties(width=320, height=320)
