"""Widgets for the Attention-by-hand page: the exercise in session state, answer boxes, checking, solutions.

An exercise is rebuilt from its seed on every rerun (core.evaluate.attention_exercises.random_exercise), and
the seed lives in st.session_state, so typing an answer never changes the numbers under the learner.
"""

from __future__ import annotations

import random

import pandas as pd
import streamlit as st

from core.evaluate import attention_exercises as X
from core.models.loading import LoadedModel


TABS = {"dot": "1 · Score", "softmax": "2 · Softmax", "weighted_sum": "3 · Weighted sum",
        "model": "4 · A real head"}


def seed_key(kind: str) -> str:
    return f"abh_seed_{kind}"


def current_exercise(kind: str) -> X.Exercise:
    """This session's exercise of `kind`: the seed document's example first, then new random ones."""
    return X.random_exercise(kind, st.session_state.setdefault(seed_key(kind), 0))


def new_exercise(kind: str) -> None:
    """Button callback: draw a new seed (the answer boxes are keyed by seed, so they start empty)."""
    old = st.session_state.get(seed_key(kind), 0)
    seed = old
    while seed in (old, 0):
        seed = random.randrange(1, 1_000_000)
    st.session_state[seed_key(kind)] = seed


def given_markdown(exercise: X.Exercise) -> str:
    g = exercise.given
    if exercise.kind == "dot":
        return f"q = {X.vec(g['q'])}  \nk = {X.vec(g['k'])}"
    if exercise.kind == "softmax":
        return "scores = " + X.vec(g["scores"])
    if exercise.kind == "weighted_sum":
        lines = [f"w = {X.vec(g['weights'])}"]
        lines += [f"v{chr(0x2081 + j)} = {X.vec(v)}" for j, v in enumerate(g["values"])]
        return "  \n".join(lines)
    return ""


def answer_boxes(exercise: X.Exercise, key: str, per_row: int = 4) -> list[str]:
    """One text box per number to type; returns what is in them."""
    typed = []
    for start in range(0, len(exercise.labels), per_row):
        cols = st.columns(per_row)
        for col, i in zip(cols, range(start, min(start + per_row, len(exercise.labels)))):
            typed.append(col.text_input(exercise.labels[i], key=f"{key}_{i}", placeholder="a number"))
    return typed


def show_check(result: X.CheckResult, exercise: X.Exercise) -> None:
    tol = f"± {exercise.tolerance:g}" + (f" or {100 * exercise.rel_tolerance:g}%" if exercise.rel_tolerance else "")
    if result.ok:
        st.success(f"All {len(result.fields)} correct (within {tol}).")
    else:
        lines = []
        for f in result.fields:
            mark = "✓" if f.ok else ("⚠️" if f.value is None else "✗")
            lines.append(f"- {mark} **{f.label}**: {f.message}" + ("" if f.ok or f.value is None
                                                                  else f" (you typed {X.fmt(f.value, 4)})"))
        missing = sum(f.value is None for f in result.fields)
        box = st.warning if missing == len(result.fields) else st.error
        box(f"{sum(f.ok for f in result.fields)} of {len(result.fields)} correct (tolerance {tol}):\n\n"
            + "\n".join(lines))


def show_solution(exercise: X.Exercise, expanded: bool, note: str | None = None) -> None:
    with st.expander("Worked solution", expanded=expanded):
        for n, step in enumerate(exercise.steps, 1):
            st.markdown(f"{n}. {step.text}  \n&nbsp;&nbsp;&nbsp;→ `{step.result}`")
        st.markdown("Answer: " + ", ".join(f"{lab} = **{X.fmt(a, 4)}**" for lab, a in zip(exercise.labels,
                                                                                         exercise.answers)))
        if note:
            st.markdown(note)


def exercise_block(kind: str, explanation: str) -> None:
    """The whole exercise of one kind: numbers, answer boxes, Check, solution, New exercise."""
    exercise = current_exercise(kind)
    key = f"abh_{kind}_{exercise.seed}"
    st.markdown(explanation)
    st.markdown(f"**Exercise{' (the seed example)' if exercise.seed == 0 else ''}.** {exercise.question}")
    st.markdown(given_markdown(exercise))
    typed = answer_boxes(exercise, key)
    c1, c2, c3 = st.columns([1, 1, 3])
    if c1.button("Check", key=f"{key}_check", type="primary"):
        st.session_state[f"{key}_checked"] = True
    c2.button("New exercise", key=f"abh_{kind}_new", on_click=new_exercise, args=(kind,))
    checked = st.session_state.get(f"{key}_checked", False)
    result = X.check(exercise, typed)
    if checked:
        show_check(result, exercise)
    show_solution(exercise, expanded=checked and result.complete)


# ---------------------------------------------------------------- the real model


@st.cache_data(show_spinner="Running the model on three tokens…", max_entries=32, ttl=3600)
def model_attention(model_key: str, text: str, layer: int, head: int, _lm: LoadedModel) -> X.ModelAttention:
    return X.model_attention(_lm, text, layer, head)


def vectors_table(m: X.ModelAttention, labels: list[str]) -> pd.DataFrame:
    """Rows = the head's dimensions; q, each key and the products q_i k_i that the dot product adds up."""
    data = {"q (token 3)": m.q.numpy()}
    for j in range(3):
        data[f"k{j + 1} ({labels[j]})"] = m.keys[j].numpy()
    for j in range(3):
        data[f"q·k{j + 1} terms"] = (m.q * m.keys[j]).numpy()
    df = pd.DataFrame(data, index=range(1, m.head_dim + 1))
    df.index.name = "dim"
    return df


def values_table(m: X.ModelAttention, labels: list[str], dims: int = 4) -> pd.DataFrame:
    return pd.DataFrame(m.values[:, :dims].numpy(), index=[f"v{j + 1} ({labels[j]})" for j in range(3)],
                        columns=[f"dim {i + 1}" for i in range(min(dims, m.head_dim))])
