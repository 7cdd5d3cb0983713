"""Head roles: induction, previous-token and duplicate-token heads, scored on a repeated random sequence."""

from __future__ import annotations

import streamlit as st

from core.circuits import head_roles as R
from ui import circuits as ui
from ui import state
from ui.explain import how_computed
from ui.models import model_picker
from ui.text import md
from ui.widgets import clamp_state, keep_choice

st.title("🧩 Head roles")
lm = model_picker()


def explain(role: str = "induction", length: int = R.DEFAULT_LENGTH, seed: int = 0) -> None:
    how_computed(R.head_roles, R.role_scores, R.repeated_random_tokens,
                 command=f"python -m core heads {lm.spec.cli()} --role {role} --length {length} --seed {seed}",
                 note="One forward pass of the model on N random tokens followed by the same N tokens; the "
                      "attention probabilities it returns (eager attention) are averaged at the offsets each "
                      "role predicts.")


st.markdown(
    "Some heads do one recognisable job on any text. To find them, the model reads **N random tokens, then the "
    "same N tokens again**: nothing but the repetition links the two halves, so a head that looks back at the "
    "right place can only be doing that job. Each score is the head's mean attention at the place the role says.")
lay = ui.circuit_layout(lm)
if lay is None:
    explain()
    st.stop()

c1, c2, c3 = st.columns([2, 1, 1])
role = state.keep(c1.radio, "Role", list(R.ROLES), key="hr_role", horizontal=True)
context = getattr(lm.config, "max_position_embeddings", None) or 2 * R.MAX_LENGTH + 1
top_length = max(2, min(R.MAX_LENGTH, (context - 1) // 2))
clamp_state("hr_len", 2, top_length, min(R.DEFAULT_LENGTH, top_length))
length = state.keep(c2.number_input, "Random tokens N", 2, top_length, key="hr_len", step=1)
seed = state.keep(c3.number_input, "Seed", 0, 10_000, key="hr_seed", step=1)
st.markdown(f"**{role.capitalize()} head**: {R.ROLES[role]}.")

roles = ui.head_roles(lm, role, int(length), int(seed))
if roles is None:
    explain(role, int(length), int(seed))
    st.stop()

h1, h2 = st.columns([3, 2])
h1.altair_chart(ui.head_heatmap(roles.scores.numpy(), f"{role} score, every head", "score", diverging=False,
                                domain=(0.0, 1.0)), width="content")
top = roles.top(5)
with h2:
    st.markdown("**Top heads**")
    text = lm.decode(roles.ids)
    st.markdown("  \n".join(f"{i + 1}. {ui.unit_link(f'L{l}.H{h}', text)}: {s:.3f}" for i, (l, h, s) in enumerate(top)))
    st.caption("Each name opens the Attention page on that head, with the repeated sequence as the text "
               "(re-tokenised there, so positions can shift by a token).")
    chance = 1.0 / (roles.offset + roles.length + 1)
    st.caption(f"For scale: a head spreading its attention evenly would score about {chance:.3f} at the first "
               "query of the second copy, less later.")

st.subheader("The pattern that earns the score")
choices = [f"L{l}.H{h}" for l, h, _ in top]
keep_choice("hr_head", choices, choices[0])
pick = st.selectbox("Head", choices, key="hr_head")
layer, head = (int(x) for x in pick[1:].split(".H"))
labels = [f"{i}·{t}" for i, t in enumerate(lm.token_strings(roles.ids))]
st.altair_chart(ui.pattern_chart(roles.attentions[layer, head].numpy(), labels,
                                 f"{pick} on the repeated sequence"), width="content")
where = {"induction": "the stripe one step right of the diagonal that starts N tokens back (the token after the "
                      "earlier copy)",
         "duplicate": "the stripe N tokens back (the same token, earlier)",
         "previous": "the line just below the diagonal (the previous token)"}[role]
st.caption(f"Rows are queries, columns keys. The score reads {md(where)}; the second copy starts at position "
           f"{roles.offset + roles.length}.")

state.share_link()
explain(role, int(length), int(seed))
