"""Attention by hand: the dot product, the softmax and the weighted sum, then one real head of the model."""

from __future__ import annotations

import shlex

import streamlit as st

from core.evaluate import attention_exercises as X
from core.inspect.architecture import config_dims
from core.models.capture import InputError, token_display
from ui import exercises as ui
from ui.explain import how_computed
from ui.inputs import whole_number
from ui.models import model_picker
from ui.text import md

st.title("✍️ Attention by hand")
lm = model_picker()
st.markdown(
    "One attention head does three small things for each token. Do them yourself with pen and paper (or a "
    "calculator), type the answers, and check them:\n\n"
    "1. **score** each earlier token: the dot product of this token's query **q** with that token's key **k**, "
    "scaled by 1/√d;\n"
    "2. turn the scores into **weights** with a softmax (positive, summing to 1);\n"
    "3. **mix** the tokens' values **v** with those weights.\n\n"
    "Attention(Q, K, V) = softmax(QKᵀ / √d) V. Answers count as right within a small tolerance; the worked "
    "solution is always one click away. *New exercise* draws fresh numbers.")


# ---------------------------------------------------------------- the real model
def real_head() -> None:
    """The same three steps on one head of the loaded model, for the first three tokens of a text."""
    dims = config_dims(lm.config)
    n_layers, n_heads = int(dims["layers"]), int(dims["heads"])
    st.markdown(
        f"The same three steps, with the numbers of **{lm.name}**: the first three tokens of your text go "
        "through the model, and we read one head's query for the third token and the keys and values of all "
        "three.")
    if st.session_state.get("abh_dims") != (n_layers, n_heads):  # another model: start inside its range
        st.session_state["abh_dims"] = (n_layers, n_heads)
        for key, limit in (("abh_layer", n_layers), ("abh_head", n_heads)):
            if st.session_state.get(key, 0) >= limit:
                st.session_state[key] = float(limit - 1)
    c1, c2, c3 = st.columns([2, 1, 1])
    text = c1.text_input("Text (its first three tokens are used)", "The cat sat on the mat", key="abh_text")
    # whole_number: Streamlit's integer box read "1e1" as 1 and showed layer 1 without a word
    layer = whole_number("Layer", 0, 0, n_layers - 1, "abh_layer", where=c2)
    head = whole_number("Head", 0, 0, n_heads - 1, "abh_head", where=c3)
    m = None
    try:
        if layer is not None and head is not None:  # else the box says what to type
            m = ui.model_attention(lm.spec.key, text, layer, head, lm)
    except InputError as exc:
        st.info(str(exc))
    if m is not None:
        labels = [token_display(t) for t in m.tokens]
        st.markdown(f"Tokens: **{md(labels[0])}**, **{md(labels[1])}**, **{md(labels[2])}** · layer {m.layer}, head {m.head}"
                    + (f" (reading K/V head {m.kv_head}, shared with other query heads)"
                       if int(dims.get("kv_heads") or n_heads) < n_heads else "")
                    + f" · head dimension d = {m.head_dim}."
                    + (" q and k are shown after RoPE has rotated them by their positions, as the model does."
                       if m.rope else " (positions were added to the embeddings: no rotation of q and k)"))
        st.dataframe(ui.vectors_table(m, labels).style.format("{:.4f}"), height=230, width="stretch")
        st.markdown(f"With d = {m.head_dim} dimensions the dot products are long sums, so here they are (the sum of "
                    "each *terms* column above):  \n"
                    + "  \n".join(f"q · k{j + 1} = **{X.fmt(r, 4)}**" for j, r in enumerate(m.raw.tolist())))
        st.markdown("The values' first " + ("four dimensions" if m.head_dim >= 4 else "dimensions") + ":")
        st.dataframe(ui.values_table(m, labels).style.format("{:.4f}"), width="stretch")
        exercise = X.model_exercise(m)
        st.markdown(f"**Exercise.** Scale the three dot products by {X.fmt(m.scaling, 5)}"
                    + (f" (= 1/√{m.head_dim})" if abs(m.scaling - m.head_dim ** -0.5) < 1e-9 else "")
                    + ", softmax them into three weights, then compute the first dimension of the output "
                    "Σⱼ wⱼ vⱼ[1].")
        key = f"abh_model_{abs(hash((lm.spec.key, text, layer, head))) % 10**8}"
        typed = ui.answer_boxes(exercise, key)
        if st.button("Check", key=f"{key}_check", type="primary"):
            st.session_state[f"{key}_checked"] = True
        checked = st.session_state.get(f"{key}_checked", False)
        result = X.check(exercise, typed)
        if checked:
            ui.show_check(result, exercise)
        own = ("The model's own attention weights for this head and token: "
               + ", ".join(f"**{X.fmt(w, 4)}**" for w in m.model_weights.tolist())
               + f" (the softmax by hand differs from them by at most {m.max_weight_difference:.1e}).")
        ui.show_solution(exercise, expanded=checked and result.complete, note=own)


EXERCISES = {
    "dot": "The score says how well a key matches the query: multiply them dimension by dimension and add up. "
           "Large and positive = a good match.",
    "softmax": "Softmax turns any scores into weights: wⱼ = exp(sⱼ) / Σᵢ exp(sᵢ). The largest score gets the "
               "largest weight, and the weights add up to 1.",
    "weighted_sum": "The output is a blend of the values, each weighted by its attention: output = Σⱼ wⱼ vⱼ, "
                    "dimension by dimension.",
}
# A keyed tab keeps its place across reruns; the real head runs the model only while its tab is open.
tabs = dict(zip(ui.TABS, st.tabs(list(ui.TABS.values()), key="abh_tab", on_change="rerun")))
for kind, explanation in EXERCISES.items():
    with tabs[kind]:
        ui.exercise_block(kind, explanation)
if tabs["model"].open:
    with tabs["model"]:
        real_head()

state = st.session_state
# The boxes may hold what they refuse (2.5, nothing): the command then shows 0, as the page's default does.
layer, head = (int(v) if isinstance(v, (int, float)) and float(v).is_integer() else 0
               for v in (state.get("abh_layer", 0), state.get("abh_head", 0)))
how_computed(X.dot, X.softmax, X.weighted_sum, X.check, X.model_attention,
             command=f"python -m core by-hand {lm.spec.cli()} --text {shlex.quote(state.get('abh_text', 'The cat sat'))} "
                     f"--layer {layer} --head {head}",
             note="The exercises' numbers are drawn from a seed kept in your session, so a rerun never changes "
                  "them. The real head's q, k and v come from the model's own weights "
                  "(`core.inspect.stepwise.layer_by_hand`, which applies RoPE as the model does); the model's own "
                  "attention weights (eager attention, `output_attentions=True`) are shown for comparison.")
