"""Scaling laws: Kaplan and Chinchilla, compute-optimal size and data for a budget, known models placed."""

from __future__ import annotations

import streamlit as st

from core.hardware import scaling as core_scaling
from ui import hardware_scaling as ui
from ui.hardware import parameters_of_model
from ui.explain import how_computed
from ui.inputs import decimal_number
from ui.models import model_picker

MIN_BUDGET = 1e12  # below this the 20-tokens rule gives a model of under ~100k parameters

st.title("📈 Scaling laws")
lm = model_picker()
st.markdown(
    "Training a transformer costs about **C = 6ND** FLOPs: N parameters, D tokens, 2N FLOPs per token forward "
    "and 4N backward. For a fixed budget C you can train a bigger model on fewer tokens or a smaller one on "
    "more. Scaling laws fit the loss as a function of N and D and answer: what split gives the lowest loss?")
st.latex(r"L(N, D) = E + \frac{A}{N^{\alpha}} + \frac{B}{D^{\beta}}"
         r"\quad E = 1.69,\ A = 406.4,\ B = 410.7,\ \alpha = 0.34,\ \beta = 0.28")
st.caption("Chinchilla's parametric fit (Hoffmann et al. 2022, approach 3): loss in nats per token on their "
           "MassiveText data. E is the irreducible loss of text itself; the other two terms shrink with size and data.")

# ---------------------------------------------------------------- the calculator
st.subheader("Compute-optimal model for a budget")
c1, c2 = st.columns([2, 3])
budget = decimal_number("Training budget C (FLOPs)", 5.76e23, 0.0, None, "sc_budget", where=c1, fmt="%.3e",
                        help="5.76e23 is the budget of Gopher and Chinchilla.")
if budget is None:
    allocations = []  # the box has said what to type
elif budget <= 0:
    st.warning("The budget must be above 0 FLOPs: C = 6ND needs some compute to spend.")
    allocations = []
elif budget < MIN_BUDGET:
    st.warning(f"{budget:.3g} FLOPs is below 10¹² FLOPs: the 20-tokens rule would make that a model of "
               f"{core_scaling.twenty_tokens_rule(budget).parameters:,.1f} parameters, far below anything these fits "
               "were measured on (Chinchilla's smallest runs: about 6×10¹⁸ FLOPs, 70M parameters); try 1e18–1e27.")
    allocations = []
elif budget > 1e30:
    st.warning("That is beyond 10³⁰ FLOPs, far outside anything these fits were measured on; try 1e18–1e27.")
    allocations = []
else:
    allocations = [core_scaling.twenty_tokens_rule(budget), core_scaling.chinchilla_optimal(budget),
                   core_scaling.kaplan_optimal(budget)]
    if budget < 1e18:
        c2.caption("Below 10¹⁸ FLOPs the fits are extrapolated: Chinchilla's runs started near 6×10¹⁸.")
    c2.markdown(f"= **{budget / core_scaling.PF_DAY:,.3g} petaflop/s-days**; on 1,000 H100s at 40% of their "
                f"989 dense BF16 TFLOPS: **{budget / (1000 * 989e12 * 0.4) / 86400:,.1f} days**.")
    cols = st.columns(3)
    for col, a in zip(cols, allocations):
        with col.container(border=True):
            st.markdown(f"**{a.rule}**")
            st.metric("Parameters N", ui.human(a.parameters))
            st.metric("Tokens D", ui.human(a.tokens))
            st.caption(f"{a.tokens_per_parameter:,.1f} tokens per parameter · predicted loss {a.loss:.3f}"
                       + (" (Kaplan's own L(N, D), WebText2: not comparable)" if "Kaplan" in a.rule else ""))
    twenty, fit = allocations[0], allocations[1]
    st.markdown(
        f"By the ~20 tokens per parameter rule (N = √(C/120)) this budget trains a **{ui.human(twenty.parameters)}** "
        f"model on **{ui.human(twenty.tokens)}** tokens (Chinchilla itself: 70B on 1.4T). The parametric fit's "
        f"own minimum sits at **{ui.human(fit.parameters)}** on **{ui.human(fit.tokens)}** tokens "
        f"({fit.tokens_per_parameter:,.0f} tokens per parameter), but its loss there ({fit.loss:.4f}) differs from "
        f"the 20-tokens point's ({twenty.loss:.4f}) by only {twenty.loss - fit.loss:.4f} nats: the valley is flat, "
        "and the paper's three approaches disagree on where exactly its bottom is. Kaplan et al. (2020) put "
        "most of the budget into parameters; Chinchilla showed models of that era were under-trained.")

# ---------------------------------------------------------------- IsoFLOP curves
if allocations:
    st.subheader("Loss along a fixed budget")
    st.altair_chart(ui.isoflop_chart(budget), width="stretch")
    st.caption("Each curve keeps C fixed and moves along 6ND = C: too small a model cannot use the data, too big "
               "a model sees too few tokens. Black dots: each curve's minimum (the parametric fit's optimum).")

# ---------------------------------------------------------------- known models and lab runs
st.subheader("Known models on the same axes")
known = core_scaling.known_models()
runs = ui.lab_runs()
mine = [{"name": "your budget (20 tokens/param)", "parameters": allocations[0].parameters,
         "tokens": allocations[0].tokens, "compute": budget}] if allocations else []
st.altair_chart(ui.placement_chart(known, runs, mine), width="stretch")
st.caption("Dashed lines: the compute-optimal (N, D) of each rule as the budget grows. Points above the 20-tokens "
           "line are trained longer than compute-optimal, which pays off when a model will serve many tokens "
           "(Llama 3 8B: ~1,900 tokens per parameter).")
if runs:
    st.caption(f"{len(runs)} training-lab run(s) placed (tokens = steps × batch × block size; their loss is per "
               "character on Tiny Shakespeare, not comparable with the fits).")
else:
    st.info("No runs of the training lab yet: train a small GPT on the Pre-training page and it appears here.")
st.dataframe(ui.known_table(known), hide_index=True, width="stretch")
st.caption("Predicted loss from Chinchilla's fit, for orientation only: each model used its own data and tokenizer.")

# ---------------------------------------------------------------- your own point
st.subheader("Your model")
p1, p2 = st.columns(2)
n = decimal_number("Parameters N", float(parameters_of_model(lm)[0]), 0.0, None, "sc_n", where=p1, fmt="%.3e",
                   help="Defaults to the loaded model's parameter count.")
d = decimal_number("Training tokens D", 2e12, 0.0, None, "sc_d", where=p2, fmt="%.3e")
if n is None or d is None:
    pass  # the box has said what to type
elif n > 0 and d > 0:
    st.markdown(f"C = 6ND = **{6 * n * d:.3e} FLOPs**; Chinchilla-predicted loss **{core_scaling.chinchilla_loss(n, d):.3f}** "
                f"nats/token; {d / n:,.0f} tokens per parameter "
                f"({'more' if d / n > core_scaling.TOKENS_PER_PARAM else 'fewer'} than the ~20 of compute-optimal).")
else:
    st.info("Give both N and D above 0.")

how_computed(core_scaling.chinchilla_optimal, core_scaling.twenty_tokens_rule, core_scaling.kaplan_optimal,
             core_scaling.chinchilla_loss,
             command=f"python -m core chinchilla --compute {5.76e23 if budget is None else budget:.3e}",
             note="Published fits, evaluated here: no simulation. Known models from `data/known_models.csv` "
                  "(parameters and tokens as their papers state, a source per row); lab runs from the runs folder.")
