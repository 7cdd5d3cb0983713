"""Architecture: the block diagram generated from the real module tree, and two architectures side by side."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.inspect.architecture import (
    BYTES_PER_ELEMENT,
    architecture_summary,
    comparison_rows,
    format_bytes,
    format_value,
    kv_cache_per_token,
)
from core.inspect.diagram import build_diagram, to_dot
from core.units import format_count
from ui.architecture import (
    HUB_KEY,
    ORIGIN_KEY,
    PASTE_KEY,
    ModelLoadError,
    View,
    block_details,
    default_block,
    default_kv_dtype,
    hub_view,
    model_view,
    pasted_text,
    reference_ids,
    reference_view,
    show_error,
    text_view,
)
from ui.explain import how_computed
from ui.inputs import too_long
from ui.models import model_picker
from ui.state import keep, share_link
from ui.text import md
from ui.widgets import scroll_wide_charts

st.title("🏗️ Architecture")
scroll_wide_charts()
lm = model_picker()
share_link()
st.markdown(
    "The diagram below is generated from the model itself: its module tree (`named_modules()`, the module "
    "classes and parameter shapes) and its config. The order of the boxes comes from a forward pass traced "
    "on a weightless copy of the model on PyTorch's *meta* device. Any config can be drawn the same way, "
    "without downloading a single weight.")

# ---------------------------------------------------------------- 1. which architecture

LOADED, REFERENCE, PASTE, HUB = ("The loaded model", "A shipped reference config", "Paste or upload a config.json",
                                 "A Hugging Face Hub config")
source = keep(st.radio, "Architecture to draw", (LOADED, REFERENCE, PASTE, HUB), horizontal=True, key="arch_source")
view: View | None = None
try:
    if source == LOADED:
        view = model_view(lm)
    elif source == REFERENCE:
        ids = reference_ids()
        ref = keep(st.selectbox, "Reference config (config.json facts shipped in data/model_configs.json)", ids,
                   index=ids.index("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"), key="arch_reference")
        view = reference_view(ref)
    elif source == PASTE:
        text = pasted_text()
        if text is not None and not text.strip():
            st.info("Paste the contents of a config.json (a JSON object with a `model_type` field, as on any "
                    "model's Hub page), or upload the file.")
        elif text is not None:
            view = text_view(text, st.session_state[ORIGIN_KEY])
            st.session_state[PASTE_KEY] = (text, st.session_state[ORIGIN_KEY])
    else:
        c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
        with c1:
            hub_id = keep(st.text_input, "Hub model id", placeholder="Qwen/Qwen2.5-0.5B", key="arch_hub_input")
        long_id = too_long(hub_id, 200, "Hub model id")
        if c2.button("Fetch config", width="stretch") and hub_id.strip() and not long_id:
            st.session_state[HUB_KEY] = hub_id.strip()
        if st.session_state.get(HUB_KEY):
            view = hub_view(st.session_state[HUB_KEY])
        else:
            st.info("Type a model id and press **Fetch config**: only its config.json is downloaded.")
except (ValueError, ModelLoadError) as exc:
    show_error(exc)
    if source == HUB:
        st.session_state.pop(HUB_KEY, None)

@st.fragment
def numbers(view: View) -> None:
    """The KV-cache element type drives the metrics and the table of dimensions only."""
    diagram = view.diagram
    dtypes = list(BYTES_PER_ELEMENT)
    with st.columns([1, 2])[0]:
        kv_dtype = keep(st.selectbox, "Element type for the KV cache", dtypes,
                        index=dtypes.index(default_kv_dtype(view)), key="arch_kv")
    kv = kv_cache_per_token(view.config, kv_dtype)
    f = diagram.features
    c = st.columns(5)
    c[0].metric("Parameters", format_count(diagram.total_params),
                help=f"{diagram.total_params:,} parameters; tied weights are counted once.")
    c[1].metric("Layers", " + ".join(str(s.n_layers) for s in diagram.stacks) or "—")
    c[2].metric("Hidden size", diagram.dims["hidden_size"])
    c[3].metric("Heads / KV heads", f"{f['heads']} / {f['kv_heads']}")
    c[4].metric("KV cache per token", f"{kv['bytes']:,.0f} B" if kv["bytes"] else "none",  # dtype: chosen above
                help=f"In {kv_dtype}: " + (kv["formula"] or kv["note"]))
    if kv["bytes"]:
        st.caption(f"KV cache per token: {kv['formula']} ({format_bytes(kv['bytes'])})"
                   + (f". Note: {kv['note']}." if kv["note"] else "."))
    else:
        st.caption(f"KV cache: {kv['note']}.")
    summary = architecture_summary(diagram, view.config, kv_dtype)
    with st.expander("Every dimension of this architecture"):
        st.dataframe(pd.DataFrame([{"": k, "value": format_value(k, v)} for k, v in summary.items()]),
                     hide_index=True, width="stretch")


@st.fragment
def block_diagram(view: View) -> None:
    """Choosing a block redraws the diagram and its details, nothing else."""
    diagram = view.diagram
    st.subheader("The block diagram")
    st.caption("One layer is drawn; the dashed frame repeats it N times. Dashed arrows: the residual stream, "
               "rotary positions, and weights shared between boxes. "
               f"Order of operations: {diagram.order_source}. On a narrow screen, scroll the diagram sideways.")
    for note in diagram.notes:
        st.info(note)
    blocks = {b.id: b for b in diagram.blocks}
    ids = list(blocks)
    with st.columns([1, 1])[0]:
        chosen = keep(st.selectbox, "Inspect a block", ids, index=ids.index(default_block(diagram)), key="arch_block",
                      format_func=lambda i: blocks[i].title)
    # The whole width for the diagram: squeezed beside the details its 10 pt labels came out at ~7 px. On a phone
    # it keeps its natural size and scrolls sideways in its box (ui.widgets.scroll_wide_charts), not shrunk to 6 px.
    st.graphviz_chart(to_dot(diagram, selected=chosen), width="stretch")
    block_details(blocks[chosen], diagram)


if view is not None:
    diagram = view.diagram
    family = diagram.family
    if st.session_state.get("arch_drawn", view.name) != view.name:  # another architecture: its own defaults
        st.session_state["arch_kv"] = default_kv_dtype(view)
        st.session_state["arch_block"] = default_block(diagram)
    st.session_state["arch_drawn"] = view.name

    # ---------------------------------------------------------------- 2. what kind of transformer

    st.subheader(f"{md(view.name)}: {family.kind}, {family.name}")
    st.markdown(f"**{family.kind.capitalize()}**: {family.description}. "
                f"Detected from the config alone (`model_type` = `{diagram.dims['model_type']}`, "
                f"`is_encoder_decoder`, `architectures`); the module class is `{diagram.model_class}`.")
    with st.expander("The three families of transformers"):
        kinds = pd.DataFrame([
            {"family": "decoder-only", "reads": "left to right (causal mask)", "trained to": "predict the next token",
             "examples": "GPT-2, Llama, Qwen, Mistral, SmolLM2"},
            {"family": "encoder-only", "reads": "the whole input at once (bidirectional)",
             "trained to": "fill in masked tokens", "examples": "BERT, RoBERTa"},
            {"family": "encoder-decoder", "reads": "encoder: bidirectional; decoder: causal + cross-attention",
             "trained to": "turn one text into another", "examples": "T5, BART"},
        ])
        kinds.insert(0, "this one", kinds["family"].eq(family.kind).map({True: "◀", False: ""}))
        st.dataframe(kinds, hide_index=True, width="stretch")
    numbers(view)

    # ---------------------------------------------------------------- 3. the diagram

    block_diagram(view)

# ---------------------------------------------------------------- 4. two architectures side by side

options = {f"Loaded model: {lm.name}": ("loaded", "")}
options.update({f"Reference: {i}": ("reference", i) for i in reference_ids()})
if st.session_state.get(PASTE_KEY):
    options[st.session_state[PASTE_KEY][1].capitalize()] = ("paste", st.session_state[PASTE_KEY])
if st.session_state.get(HUB_KEY):
    options[f"Hub: {st.session_state[HUB_KEY]}"] = ("hub", st.session_state[HUB_KEY])


def _view(pick: str) -> View | None:
    kind, arg = options[pick]
    try:
        return {"loaded": lambda: model_view(lm), "reference": lambda: reference_view(arg),
                "paste": lambda: text_view(*arg), "hub": lambda: hub_view(arg)}[kind]()
    except (ValueError, ModelLoadError) as exc:
        show_error(exc)
        return None


@st.fragment
def compare() -> None:
    st.subheader("Compare two architectures")
    labels = list(options)
    ca, cb, cd = st.columns([2, 2, 1])
    with ca:
        pick_a = keep(st.selectbox, "A", labels, index=labels.index("Reference: distilgpt2"), key="arch_cmp_a")
    with cb:
        pick_b = keep(st.selectbox, "B", labels, key="arch_cmp_b",
                      index=labels.index("Reference: deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"))
    with cd:
        cmp_dtype = keep(st.selectbox, "dtype", list(BYTES_PER_ELEMENT), key="arch_cmp_dtype",
                         index=list(BYTES_PER_ELEMENT).index("bfloat16"),
                         help="Element type for the weight and KV cache sizes of both.")
    view_a, view_b = _view(pick_a), _view(pick_b)
    if view_a is not None and view_b is not None:
        rows = comparison_rows(architecture_summary(view_a.diagram, view_a.config, cmp_dtype),
                               architecture_summary(view_b.diagram, view_b.config, cmp_dtype),
                               name_a=f"A: {view_a.name}", name_b=f"B: {view_b.name}")
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", height=35 * len(rows) + 38,
                     column_config={"": st.column_config.TextColumn(width=240)})  # "KV cache per token (bfloat16)"
        st.caption("Parameters are counted on the module tree (tied weights once); the KV cache grows by the "
                   "per-token figure for every token in the context, for every sequence in a batch.")


compare()

how_computed(build_diagram, kv_cache_per_token, architecture_summary, comparison_rows,
             command="python -m core architecture " + (view.cli if view is not None else lm.spec.cli()))
