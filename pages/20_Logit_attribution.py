"""Direct logit attribution: which heads and MLPs wrote the logit of one next-token prediction."""

from __future__ import annotations

import shlex

import streamlit as st

from core.circuits import dla as D
from ui import circuits as ui
from ui import state
from ui.explain import how_computed
from ui.inputs import too_long
from ui.models import model_picker
from ui.text import code, md
from ui.widgets import keep_choice

DEFAULT_TEXT = "The Eiffel Tower is in the city of"

st.title("🧮 Logit attribution")
lm = model_picker()


def explain(text: str = DEFAULT_TEXT, position: int = -1, target: str = "", contrast: str = "") -> None:
    quoted = shlex.quote(text) if len(text) <= 200 else "'YOUR TEXT'"
    extra = (f" --target {shlex.quote(target)}" if target else "") + \
            (f" --contrast {shlex.quote(contrast)}" if contrast else "")
    how_computed(D.attribute, D.readout,
                 command=f"python -m core dla {lm.spec.cli()} --text {quoted} --position {position}{extra}",
                 note="One forward pass of the model records each attention output projection's input (the heads' "
                      "outputs side by side), each MLP's output and the residual stream before the final norm. "
                      "Each head's slice of the projection is applied alone; the final norm is frozen at the "
                      "scale it has at the chosen position, which makes it linear, so the pieces add up exactly.")


st.markdown(
    "The model's last hidden state is a **sum**: the token embedding plus what every attention head and every MLP "
    "added to the residual stream. The logit of a token is (almost) a dot product with that sum, so it splits into "
    "one number per component: its **direct** contribution. *Direct* means through the residual stream straight to "
    "the output; a head that matters by feeding later layers can score low here (ablation and patching see that).")

lay = ui.circuit_layout(lm)
if lay is None:
    explain()
    st.stop()
text = state.keep(st.text_area, "Text", value=DEFAULT_TEXT, key="dla_text", height=68,
                  help=f"Up to {ui.MAX_TOKENS} tokens are used (longer texts are cut).")
cap = ui.dla_capture(lm, lay, text)
if cap is None:
    explain()
    st.stop()


@st.fragment
def attribution_view(lm, cap, text: str) -> None:
    """Position, target and contrast, and what they explain: a change reruns this part only (the text box and
    the capture above stay)."""
    c1, c2, c3 = st.columns([2, 1, 1])
    positions = [-1, *range(cap.seq_len)]  # -1: the last token, whatever the text's length
    keep_choice("dla_pos", positions, -1)
    position = state.keep(c1.selectbox, "Prediction made at position", positions, key="dla_pos",
                          format_func=lambda p: f"the last token ({cap.labels[-1]})" if p < 0 else cap.labels[p])
    target = state.keep(c2.text_input, "Target token", key="dla_target",
                        help="Empty: the model's top prediction. A word (its first token) or a token id.")
    contrast = state.keep(c3.text_input, "Contrast token (optional)", key="dla_contrast",
                          help="With a contrast, every figure is of logit[target] − logit[contrast].")
    if too_long(target, 100, "Target token") | too_long(contrast, 100, "Contrast token"):
        return
    for name, value in (("target", target), ("contrast", contrast)):
        ids = lm.encode(value) if value and not value.strip().isdigit() else []
        if len(ids) > 1:
            st.caption(f"ℹ️ The {name} {code(value)} is {len(ids)} tokens; its first, "
                       f"{code(lm.token_strings(ids[:1])[0])}, is used.")

    a = ui.attribution(lm, cap, position, target or None, contrast or None)
    if a is None:
        explain(text, position, target, contrast)
        return

    names = lm.token_strings([a.target_id] + ([a.contrast_id] if a.contrast_id is not None else []))
    what = f"logit[{names[0]!r}]" + (f" − logit[{names[1]!r}]" if a.contrast_id is not None else "")
    st.markdown(f"Explaining {code(what)} at {md(cap.labels[a.position])}.")
    m = st.columns(3)
    m[0].metric("The model's value", f"{a.logit:.4f}")
    m[1].metric("Sum of the contributions", f"{a.total:.4f}")
    m[2].metric("Relative error", f"{a.relative_error:.1e}", help=f"Must be ≤ {D.TOLERANCE:.0e} in float32.")
    if a.ok:
        st.success(f"✓ The contributions add up to the model's own {what} (relative error {a.relative_error:.1e}).")
    else:
        st.error(f"The contributions miss the model's value by {a.relative_error:.1e} (relative): this model's layout "
                 "is not fully followed.")
    st.caption(f"Final norm ({a.norm_kind}) frozen at the scale it has at this position: divided by "
               f"{a.scale:.4g} ({'rms' if a.norm_kind == 'RMSNorm' else 'std'} of the last hidden state). "
               f"Embedding: {a.embed:+.4f}" + (f" · final norm and LM-head bias: {a.norm_bias:+.4f}"
                                              if a.has_norm_bias else "")
               + (f" · attention output biases: {float(a.attn_bias.sum()):+.4f}" if a.has_attn_bias else "") + ".")

    st.subheader("Every head and every MLP")
    h1, h2 = st.columns([3, 1])
    h1.altair_chart(ui.head_heatmap(a.heads.numpy(), "Attention heads", "contribution"), width="content")
    h2.altair_chart(ui.mlp_bars(a.mlps.numpy(), "MLPs", "contribution"), width="content")
    st.caption("Red adds to the target" + (" (over the contrast)" if a.contrast_id is not None else "")
               + ", blue takes away. Hover a cell for the value. With grouped-query attention each *query* head has "
               "its own slice of the output projection, so each is listed, also when it shares keys and values.")

    st.subheader("Top contributors")
    rows = [f"{i + 1}. {ui.unit_link(n, text)}: **{v:+.4f}**" for i, (n, v) in enumerate(a.top(10))]
    st.markdown("  \n".join(rows))
    st.caption("A head's name links to the Attention page on that head and this text.")

    st.subheader("Building up the logit, layer by layer")
    st.altair_chart(ui.cumulative_chart(a.cumulative().numpy(), "logit so far"), width="stretch")
    st.caption("The residual stream after the embeddings (0) and after each layer, read with the frozen final norm "
               "and the unembedding: it ends at the model's value. The Logit lens page reads the same stream but "
               "renormalises it at every layer, so its numbers differ in scale while the story matches.")

    explain(text, position, target, contrast)


attribution_view(lm, cap, text)
state.share_link()

