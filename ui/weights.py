"""Cached wrappers and charts for the Weights and Parameter statistics pages (the math is in core/)."""

from __future__ import annotations

import time

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from core.inspect import matrix as matrix_view
from core.inspect import survey
from core.inspect import weights as core_weights
from core.inspect.survey import ParameterReport  # noqa: F401 - the type pages and tests name
from core.models.loading import LoadedModel
from core.units import format_bytes

# width = the column, height = the plot area: Streamlit's default "fit" counts title and axes in the height,
# which squeezes a short chart (a 2-layer model's histograms) down to nothing.
FIT_WIDTH = alt.AutoSizeParams(type="fit-x", contains="padding")

STAT_LABELS = {
    "frobenius": "Frobenius norm ‖W‖",
    "mean": "mean",
    "std": "standard deviation",
    "kurtosis": "excess kurtosis",
    "max_abs": "max |w|",
    "min": "min",
    "max": "max",
    "near_zero_share": "share of near-zero weights",
}


# ---------------------------------------------------------------- cached computations (key = model spec)


def weight_stats(lm: LoadedModel) -> core_weights.WeightStats:
    """The statistics of every weight: one shared pass per model (core.inspect.survey), started in the
    background when the model was loaded; a page that comes before it ends shows its progress."""
    job = survey.survey(lm.model, lm.spec.key)
    if job.wait_weights(timeout=0.05) is None:
        bar = st.progress(0.0, text="Computing the statistics of every weight, layer by layer…")
        while job.wait_weights(timeout=0.25) is None:
            bar.progress(job.progress, text=f"Computing the statistics of every weight: {job.done_params} of "
                                            f"{job.total_params or '…'} tensors ({time.perf_counter() - job.started:.0f} s)")
        bar.empty()
    return job.wait_weights()


@st.cache_resource(show_spinner="Computing the singular values…", max_entries=32)
def _spectrum(model_key: str, name: str, _lm: LoadedModel) -> matrix_view.Spectrum:
    return matrix_view.spectrum(core_weights.matrix(_lm.model, name))


def spectrum(lm: LoadedModel, name: str) -> matrix_view.Spectrum:
    """Singular values of one weight matrix (dequantized first for a 4-bit or 8-bit model); shared, read-only."""
    return _spectrum(lm.spec.key, name, lm)


@st.cache_data(show_spinner=False, max_entries=32)
def _pooled(model_key: str, name: str, mode: str, _lm: LoadedModel) -> np.ndarray:
    return matrix_view.pool_matrix(core_weights.matrix(_lm.model, name), mode=mode)


def pooled(lm: LoadedModel, name: str, mode: str) -> np.ndarray:
    return _pooled(lm.spec.key, name, mode, lm)


def parameter_report(lm: LoadedModel) -> ParameterReport:
    """Counts, tying and memory per format: the first part of the model's shared survey (milliseconds)."""
    return survey.survey(lm.model, lm.spec.key).wait_report()


def forget_on_model_change(lm: LoadedModel, *keys: str) -> None:
    """Widget choices (matrix kinds, layers) belong to one model: drop them when another is loaded,
    so the new model starts from the defaults instead of an empty selection."""
    marker = f"_model_of_{'_'.join(keys)}"
    if st.session_state.get(marker) != lm.spec.key:
        for key in keys:
            st.session_state.pop(key, None)
        st.session_state[marker] = lm.spec.key


# ---------------------------------------------------------------- tables


def stats_frame(ws: core_weights.WeightStats) -> pd.DataFrame:
    """One row per parameter (a few hundred rows): the table and the CSV download."""
    df = pd.DataFrame(ws.rows)
    df["shape"] = df["shape"].map(lambda s: " × ".join(map(str, s)))
    df["layer"] = df["layer"].astype("Int64")
    return df[["name", "layer", "kind", "shape", "dtype", "count", "mean", "std", "min", "max", "max_abs",
               "frobenius", "kurtosis", "near_zero_share"]]


def layer_frame(ws: core_weights.WeightStats, stat: str, kinds: list[str]) -> pd.DataFrame:
    """Long form [layer, matrix, value] of one statistic, for the kinds asked."""
    values = ws.table[stat]
    frames = [pd.DataFrame({"layer": np.arange(ws.n_layers), "matrix": core_weights.short_name(k),
                            "kind": k, "value": values[:, ws.kinds.index(k)]}) for k in kinds]
    return pd.concat(frames, ignore_index=True).dropna()


# ---------------------------------------------------------------- charts (Altair: modest sizes with hover)


def layer_chart(df: pd.DataFrame, title: str, log: bool = False) -> alt.Chart:
    y = alt.Y("value:Q", title=title, scale=alt.Scale(type="log") if log else alt.Scale(zero=False))
    return alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("layer:Q", title="layer", axis=alt.Axis(tickMinStep=1)),
        y=y,
        color=alt.Color("matrix:N", title="matrix", sort=list(dict.fromkeys(df["matrix"]))),
        tooltip=["matrix", "kind", "layer", alt.Tooltip("value:Q", title=title, format=".5g")],
    ).properties(height=320)


def histogram_heatmap(edges: np.ndarray, counts: np.ndarray, title: str, log: bool = True) -> alt.Chart:
    """Layers x bins (shared bins), colour = count: one chart for one kind of matrix."""
    layers, bins = counts.shape
    lo, hi = edges[:-1], edges[1:]
    df = pd.DataFrame({
        "layer": np.repeat(np.arange(layers), bins),
        "from": np.tile(lo, layers), "to": np.tile(hi, layers),
        "count": counts.reshape(-1),
    })
    df["shade"] = np.log10(1 + df["count"]) if log else df["count"]
    return alt.Chart(df).mark_rect().encode(
        x=alt.X("from:Q", bin="binned", title="weight value", axis=alt.Axis(format=".2g", tickCount=5)),
        x2="to:Q",
        y=alt.Y("layer:O", title="layer", axis=alt.Axis(values=list(range(0, layers, max(1, layers // 10))))),
        color=alt.Color("shade:Q", title="log₁₀(1+count)" if log else "count", scale=alt.Scale(scheme="viridis"),
                        legend=None),
        tooltip=["layer", alt.Tooltip("from:Q", format=".4g"), alt.Tooltip("to:Q", format=".4g"), "count"],
    ).properties(title=title, height=max(36, min(200, 7 * layers)), autosize=FIT_WIDTH)


def spectrum_chart(singular_values: np.ndarray, log: bool = True) -> alt.Chart:
    s = np.asarray(singular_values, dtype=np.float64)
    df = pd.DataFrame({"index": np.arange(1, len(s) + 1), "sigma": s})
    if log:
        df = df[df["sigma"] > 0]
    return alt.Chart(df).mark_line(point=len(df) <= 200).encode(
        x=alt.X("index:Q", title="i (largest first)"),
        y=alt.Y("sigma:Q", title="singular value σ", scale=alt.Scale(type="log") if log else alt.Scale()),
        tooltip=["index", alt.Tooltip("sigma:Q", format=".5g")],
    ).properties(height=280)


def bar_share_chart(df: pd.DataFrame, category: str, title: str) -> alt.Chart:
    """Horizontal bars of `parameters` per `category`, with the share of the total on hover and as text."""
    base = alt.Chart(df).encode(
        y=alt.Y(f"{category}:N", sort="-x", title=None, axis=alt.Axis(labelOverlap=False, labelLimit=220)),
        x=alt.X("parameters:Q", title=title),
        tooltip=[category, alt.Tooltip("parameters:Q", format=","), alt.Tooltip("share:Q", format=".2%")],
    )
    return (base.mark_bar() + base.mark_text(align="left", dx=3).encode(text=alt.Text("share:Q", format=".1%"))
            ).properties(height=max(120, 32 * len(df)))


def per_layer_chart(rows: list[dict]) -> alt.Chart:
    df = pd.DataFrame(rows).melt(id_vars=["layer"], value_vars=["attention", "mlp", "norms", "other"],
                                 var_name="part", value_name="parameters")
    df = df[df["parameters"] > 0]
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("layer:O", title="layer"),
        y=alt.Y("parameters:Q", title="parameters", stack=True),
        color=alt.Color("part:N", title=None),
        tooltip=["layer", "part", alt.Tooltip("parameters:Q", format=",")],
    ).properties(height=260)


COMPONENT_LABELS = {
    "embeddings": "token embeddings", "position_embeddings": "position embeddings",
    "attention_q": "attention Q", "attention_k": "attention K", "attention_v": "attention V",
    "attention_o": "attention O (output)", "attention_other": "attention (other)", "mlp": "MLP",
    "norms": "norms", "lm_head": "LM head (untied)", "other": "other",
}


def component_frame(by_component: dict[str, int]) -> pd.DataFrame:
    total = sum(by_component.values()) or 1
    return pd.DataFrame([{"component": COMPONENT_LABELS.get(k, k), "parameters": v, "share": v / total}
                         for k, v in by_component.items()])


def memory_frame(memory: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"format": m["format"], "bytes per weight (mean)": m["bytes_per_weight"],
                          "weights": format_bytes(m["weights_bytes"]),
                          "+ scales": format_bytes(m["scales_bytes"]) if m["scales_bytes"] else "—",
                          "total": format_bytes(m["total_bytes"])} for m in memory])


def quantized_note(ws: core_weights.WeightStats) -> str | None:
    """What to tell a user whose model stores some weights quantized (None for a float model)."""
    rows = [r for r in ws.rows if str(r["dtype"]).endswith("(dequantized)")]
    if not rows:
        return None
    kind = str(rows[0]["dtype"]).split()[0]
    return (f"This model stores {len(rows)} of its {len(ws.rows)} weight tensors quantized ({kind}, bitsandbytes). "
            "The statistics below are of their **dequantized** values (codes × scales, in float32): the "
            "weights the model actually multiplies by, so they can be compared with the same model in "
            "float32. Embeddings and norms stay in floating point.")
