"""Weights: statistics, shared-bin histograms, spectra and heatmaps of every weight matrix, across all layers."""

from __future__ import annotations

import streamlit as st

from core.inspect import matrix as matrix_view
from core.inspect import weights as core_weights
from core.models.loading import LoadedModel
from ui import weights as ui
from ui.charts import heatmap_image
from ui.explain import how_computed
from ui.models import model_picker
from ui.state import keep, share_link
from ui.widgets import scroll_wide_charts

st.title("⚖️ Weights")
scroll_wide_charts()
lm = model_picker()
share_link()


def explain(layer: int | None = None, matrix: str | None = None) -> None:
    one = f" --layer {layer} --matrix {matrix} --spectrum" if layer is not None and matrix else ""
    how_computed(core_weights.compute_weight_stats, core_weights.tensor_stats, matrix_view.spectrum,
                 matrix_view.effective_rank, matrix_view.pool_matrix,
                 command=f"python -m core weights {lm.spec.cli()}{one} --json",
                 note="Every number is read from the loaded model's parameters, one parameter at a time in "
                      f"float32 chunks of {core_weights.CHUNK:,} weights (memory stays bounded even for a "
                      "233M-weight embedding). The results are cached per model in memory and on disk.")


def heatmap_tab(lm: LoadedModel, name: str, row: dict) -> None:
    """The matrix itself, pooled to at most ~20k cells and drawn as a server-side image."""
    mode = keep(st.radio, "Pooling", ["mean", "absmax"], key="w_pool", horizontal=True,
                format_func={"mean": "mean of each block (keeps the sign)",
                             "absmax": "largest |w| of each block (shows outliers)"}.get)
    pooled = ui.pooled(lm, name, mode)
    rows, cols_ = row["shape"]
    out_r, out_c = pooled.shape
    scale = max(1, min(8, 720 // out_c, 900 // out_r))
    st.image(heatmap_image(pooled, diverging=mode == "mean", scale=scale))
    bound = float(abs(pooled).max())
    block = ("every weight is one pixel" if (out_r, out_c) == (rows, cols_)
             else f"pooled to {out_r} × {out_c} cells; each cell summarises about "
                  f"{rows / out_r:.1f} × {cols_ / out_c:.1f} weights")
    colours = (f"blue = negative, white = 0, red = positive (scale ±{bound:.3g})" if mode == "mean"
               else f"dark = small, yellow = large |w| (up to {bound:.3g})")
    st.caption(f"Rows are output features, columns input features ({rows} × {cols_}; GPT-2's Conv1D stores "
               f"the transpose, input × output). {block.capitalize()}. Colours: {colours}.")


def spectrum_tab(lm: LoadedModel, name: str, row: dict) -> None:
    """Singular values and effective rank (an SVD: the expensive part of this page)."""
    sv = ui.spectrum(lm, name)
    full = min(row["shape"])
    k = st.columns(3)
    k[0].metric("Effective rank", f"{sv.effective_rank:.1f}", help="exp(entropy of σᵢ / Σσ) (Roy & Vetterli "
                "2007): equals r for a matrix with r equal singular values, 1 for a rank-one matrix.")
    k[1].metric("Full rank", f"{full}")
    k[2].metric("Stable rank", f"{sv.stable_rank:.1f}", help="‖W‖²_F / σ_max²: how many directions carry "
                "energy comparable to the strongest one.")
    st.altair_chart(ui.spectrum_chart(sv.singular_values), width="stretch")
    st.caption(f"{len(sv.singular_values)} singular values, largest first, log scale · {sv.method}. "
               f"An effective rank of {sv.effective_rank:.0f} out of {full} means the matrix spreads its "
               f"energy over about {sv.effective_rank / full:.0%} of the possible directions.")


st.markdown(
    "A layer of a transformer is a handful of weight matrices: the attention projections (**Q, K, V, O**) and "
    "the MLP (**gate, up, down** in Llama-style models; **c_attn, c_proj, c_fc** in GPT-2, where Q, K and V "
    "are fused in one matrix). Below, every matrix of every layer is summarised by a few numbers, so "
    "patterns across depth become visible: which layers have larger weights, heavier tails, or outliers.")

ws = ui.weight_stats(lm)
ui.forget_on_model_change(lm, "w_kinds", "w_matrix", "w_layer")
if note := ui.quantized_note(ws):
    st.info(note)
if ws.skipped:
    st.info(f"{len(ws.skipped)} parameters hold no values here (offloaded to the meta device) and are left "
            f"out: {', '.join(ws.skipped[:5])}{' …' if len(ws.skipped) > 5 else ''}.")
kinds = ws.matrix_kinds
if not kinds:
    st.info("This model has no weight matrices inside numbered layers to compare across depth.")
    explain()
    st.stop()

n_weights = sum(r["count"] for r in ws.rows)
st.caption(f"{len(ws.rows)} parameter tensors · {n_weights:,} weights · {ws.n_layers} layers · "
           f"{'read from the disk cache' if ws.source == 'disk cache' else 'computed'} in {ws.seconds:.2f} s")

# Each section below is a fragment: its controls rerun that section only, not the whole page.

# ---------------------------------------------------------------- 1. statistics across layers


@st.fragment
def across_layers() -> None:
    st.subheader("Each kind of matrix, across the layers")
    c1, c2 = st.columns([2, 3])
    with c1:
        stat = keep(st.selectbox, "Statistic", ["frobenius", "std", "mean", "kurtosis", "max_abs"], key="w_stat",
                    format_func=ui.STAT_LABELS.get)
    with c2:
        shown = keep(st.multiselect, "Matrices", kinds, default=kinds, key="w_kinds",
                     format_func=core_weights.short_name)
    if not shown:
        st.info("Pick at least one kind of matrix to draw.")
    else:
        st.altair_chart(ui.layer_chart(ui.layer_frame(ws, stat, shown), ui.STAT_LABELS[stat]), width="stretch")
    st.caption("Frobenius norm ‖W‖ = √Σw². Kurtosis is the *excess* kurtosis (Fisher): 0 for a normal "
               "distribution, larger when a few weights are much bigger than the rest (heavy tails, outliers). "
               "The standard deviation is the population one (ddof = 0).")
    with st.expander("All statistics as a table (layers × matrices)"):
        table = ui.layer_frame(ws, stat, kinds).pivot(index="layer", columns="matrix", values="value")
        st.dataframe(table[[core_weights.short_name(k) for k in kinds]], width="stretch")


across_layers()

# ---------------------------------------------------------------- 2. histograms with shared bins


@st.fragment
def histograms() -> None:
    st.subheader("Distributions: one histogram per layer, shared bins")
    edges0 = ws.hist_edges[kinds[0]]
    st.markdown(
        "Each chart is one kind of matrix; each row is a layer and each column a bin of weight values, the same "
        f"{len(edges0) - 1} bins for every layer. The bins span the bulk of the weights (mean ± "
        f"{core_weights.TAIL_SIGMAS:g} standard deviations of that kind); the first and last bins also count "
        "the weights beyond, so outliers show up as bright edge columns. A wider row is a layer with a wider "
        "spread.")
    log_counts = keep(st.toggle, "Colour by log₁₀(1 + count)", value=True, key="w_hist_log",
                      help="Without the log, the few weights in the tails are invisible next to the peak.")
    cols = st.columns(2)
    for i, kind in enumerate(kinds):
        with cols[i % 2]:
            st.altair_chart(ui.histogram_heatmap(ws.hist_edges[kind], ws.hist_counts[kind],
                                                 core_weights.short_name(kind), log=log_counts), width="stretch")


histograms()

# ---------------------------------------------------------------- 3. one matrix up close


@st.fragment
def one_matrix() -> None:
    st.subheader("One matrix up close")
    outside = [r["name"] for r in ws.rows if r["layer"] is None and len(r["shape"]) == 2]
    c1, c2 = st.columns([2, 3])
    with c1:
        kind = keep(st.selectbox, "Matrix", kinds + outside, key="w_matrix",
                    format_func=lambda k: core_weights.short_name(k) if k in kinds else k)
    in_layers = kind in kinds
    layers_with = [r["layer"] for r in ws.rows if r["kind"] == kind and r["layer"] is not None]
    if in_layers and st.session_state.get("w_layer", layers_with[0]) not in layers_with:
        st.session_state["w_layer"] = layers_with[0]  # the previous model had more layers
    with c2:
        if in_layers and len(layers_with) > 1:
            layer = keep(st.select_slider, "Layer", layers_with, key="w_layer")
        else:
            layer = layers_with[0] if in_layers else None
    name = ws.name_of(layer, kind) if in_layers else kind
    row = ws.row(name)

    m = st.columns(5)
    m[0].metric("Frobenius norm", f"{row['frobenius']:.4g}")
    m[1].metric("Std", f"{row['std']:.4g}")
    m[2].metric("Excess kurtosis", "—" if row["kurtosis"] != row["kurtosis"] else f"{row['kurtosis']:.3g}")
    m[3].metric("Max |w|", f"{row['max_abs']:.4g}")
    m[4].metric(f"|w| < {ws.threshold:g}", f"{row['near_zero_share']:.2%}")
    st.caption(f"`{name}` · {' × '.join(map(str, row['shape']))} = {row['count']:,} weights · {row['dtype']} · "
               f"mean {row['mean']:.3g} · min {row['min']:.4g} · max {row['max']:.4g}")

    # on_change="rerun": only the open tab runs, so the SVD is computed on demand, not on every matrix change.
    tab_map, tab_svd = st.tabs(["Heatmap", "Singular values"], key="w_tab", on_change="rerun")
    if tab_map.open:
        with tab_map:
            heatmap_tab(lm, name, row)
    if tab_svd.open:
        with tab_svd:
            spectrum_tab(lm, name, row)
    # Last on the page, and inside the fragment so its command follows the chosen matrix.
    explain(layer, core_weights.module_name(kind) if in_layers else None)


one_matrix()
