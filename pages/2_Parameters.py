"""Parameter statistics: where the parameters are, weight tying, memory per format, statistics per matrix."""

from __future__ import annotations

import streamlit as st

from core.inspect import weights as core_weights
from core.models.params import check_tying, count_parameters, weight_memory
from core.units import format_bytes
from ui import weights as ui
from ui.explain import how_computed
from ui.models import model_picker
from ui.state import keep, share_link

st.title("🔢 Parameter statistics")
lm = model_picker()
share_link()
st.markdown(
    "A language model *is* its parameters: a few large matrices repeated in every layer, plus the token "
    "embeddings. This page counts them by component and by layer, checks whether the input embedding is "
    "reused as the output layer (weight tying), and summarises the values of every weight matrix.")

report = ui.parameter_report(lm)
counts, tying, memory = report.counts, report.tying, report.memory
total = counts["total"]
by = counts["by_component"]
embed = by.get("embeddings", 0)
layer_total = sum(r["total"] for r in counts["per_layer"])

m = st.columns(4)
m[0].metric("Parameters", f"{total / 1e6:,.1f} M" if total >= 1e6 else f"{total:,}",
            help=f"{total:,} parameters; a tied (shared) tensor is counted once.")
m[1].metric("Embedding share", f"{embed / total:.1%}" if total else "—",
            help="Token embedding matrix (vocabulary × hidden size) over all parameters.")
m[2].metric("Per layer", f"{layer_total / counts['n_layers'] / 1e6:,.2f} M" if counts["n_layers"] else "—",
            help=f"{counts['n_layers']} layers hold {layer_total / total:.1%} of the parameters." if total else None)
m[3].metric("Tied embeddings", "yes" if tying["same_storage"] else "no")

# ---------------------------------------------------------------- where the parameters are

st.subheader("Where the parameters are")
left, right = st.columns(2)
with left:
    st.markdown("**By component** (share of the total)")
    st.altair_chart(ui.bar_share_chart(ui.component_frame(by), "component", "parameters"), width="stretch")
with right:
    st.markdown("**By layer**")
    if counts["per_layer"]:
        st.altair_chart(ui.per_layer_chart(counts["per_layer"]), width="stretch")
    else:
        st.info("No numbered layers found in this model's parameter names.")
extra = f" and the untied LM head {by['lm_head'] / total:.1%}" if by.get("lm_head") else ""
st.caption(f"The token embeddings take {embed / total:.1%} of the parameters{extra}. In small models with a "
           "large vocabulary this share is big; in a 7B model it is a few percent.")

# ---------------------------------------------------------------- weight tying

st.subheader("Weight tying")
if not tying["has_output_embeddings"]:
    st.info("This model has no output embedding layer (LM head) to compare with the input embedding.")
else:
    inp, out = f"`{tying['input_name']}`", f"`{tying['output_name']}`"
    st.markdown(
        f"- **Same storage:** {'yes' if tying['same_storage'] else 'no'} — {inp} and {out} "
        f"{'are one tensor in memory (the same Parameter object)' if tying['same_storage'] else 'are separate tensors'}.\n"
        f"- **Equal values:** {'yes' if tying['equal_values'] else 'no'} — `torch.equal` on the two "
        f"{' × '.join(map(str, tying['shape']))} matrices {'finds every value equal' if tying['equal_values'] else 'finds differences'}.\n"
        f"- **Config:** `tie_word_embeddings = {tying['config_says_tied']}`.")
    if tying["same_storage"]:
        st.caption("Tied: the matrix that turns a token id into a vector also turns the last hidden state "
                   "back into one score per token, so it is stored (and counted) once.")
    elif tying["equal_values"]:
        st.caption("Untied in memory but equal in value: a copy, which costs memory twice.")

# ---------------------------------------------------------------- memory

st.subheader("Memory of the weights")
st.dataframe(ui.memory_frame(memory), hide_index=True, width="stretch")
st.caption(f"Weights only, counted tensor by tensor ({total:,} parameters, tied weights once). The quantized "
           "rows are bitsandbytes' layouts: only the linear layers are quantized (int8 with one float32 scale "
           "per output row; NF4 with one float32 absmax per block of 64 weights); embeddings, the LM head, norms "
           "and biases stay in bfloat16. Activations and the KV cache come on top. "
           f"Loaded now: {lm.precision}, {format_bytes(lm.memory_bytes())} reported by the model.")

# ---------------------------------------------------------------- statistics of every matrix

st.subheader("Statistics of every weight matrix")
ws = ui.weight_stats(lm)
ui.forget_on_model_change(lm, "p_kinds")
if note := ui.quantized_note(ws):
    st.info(note)
if ws.skipped:
    st.info(f"{len(ws.skipped)} offloaded parameters hold no values here and are left out.")
frame = ui.stats_frame(ws)
near = f"share |w| < {ws.threshold:g}"
st.caption(f"One row per parameter tensor ({len(frame)} rows). Near zero means |w| < {ws.threshold:g}. "
           "L2 norm = Frobenius norm = √Σw²; std is the population standard deviation; kurtosis is the "
           "excess kurtosis (0 for a normal distribution).")
st.dataframe(frame.rename(columns={"frobenius": "L2 norm", "near_zero_share": near}),
             hide_index=True, width="stretch", height=320,
             column_order=["name", "layer", "shape", "mean", "std", "min", "max", "L2 norm", near, "max_abs",
                           "kurtosis", "count", "dtype"],
             column_config={"mean": st.column_config.NumberColumn(format="%.2e"),
                            near: st.column_config.NumberColumn(format="percent")})
safe = lm.spec.source.replace("/", "_")
st.download_button("Download the table (CSV)", frame.to_csv(index=False).encode(), f"weight_stats_{safe}.csv",
                   "text/csv", key="p_csv")



@st.fragment
def across_layers(ws) -> None:
    """The statistic and the kinds drive only this chart: a change reruns this part alone."""
    st.markdown("**Across the layers**")
    c1, c2 = st.columns([2, 3])
    with c1:
        stat = keep(st.selectbox, "Statistic", ["std", "mean", "min", "max", "frobenius", "near_zero_share"],
                    key="p_stat", format_func=lambda s: "L2 norm" if s == "frobenius" else ui.STAT_LABELS[s])
    with c2:
        shown = keep(st.multiselect, "Parameters", ws.kinds, default=ws.matrix_kinds or ws.kinds, key="p_kinds",
                     format_func=core_weights.short_name)
    if shown:
        st.altair_chart(ui.layer_chart(ui.layer_frame(ws, stat, shown), ui.STAT_LABELS[stat]), width="stretch")
    else:
        st.info("Pick at least one parameter kind to draw.")


if ws.kinds:
    across_layers(ws)

how_computed(count_parameters, check_tying, weight_memory, core_weights.tensor_stats,
             command=f"python -m core params {lm.spec.cli()}\npython -m core weights {lm.spec.cli()} --all-parameters")
