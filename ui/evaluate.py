"""Cached wrappers and charts for the Evaluation page (the math lives in core/evaluate)."""

from __future__ import annotations

import math
from typing import Callable

import altair as alt
import pandas as pd
import streamlit as st

from core.evaluate import divergence, perplexity as ppl
from core.evaluate import multiple_choice as mc
from core.jobs import Job
from core.models.capture import InputError, token_display
from core.models.loading import EMBEDDED, TINY_SOURCES, LoadedModel, ModelSpec
from core.runs import saved_models

MAX_WINDOW = 1024  # eager attention holds heads x window^2 weights per layer
MAX_WORK = 32_768  # tokens through the model per perplexity on the page (passes x window)
MAX_TEXT_TOKENS = 2048  # the text box's cap: beyond it even a wide stride is many passes of the largest window
WHY_TEXT_CAP = "a longer text is many forward passes; the CLI scores files of any length"
WHY_KL_CAP = "both models keep a full next-token distribution for every position"

# ---------------------------------------------------------------- cached computations (key = model spec)


def perplexity_with_progress(lm: LoadedModel, text: str, window: int, stride: int) -> ppl.PerplexityResult:
    """The perplexity, kept per session; a new one shows a progress bar per window and a Cancel button.

    Cancel (like any click) starts a rerun, which stops this script at its next progress update."""
    key = (lm.spec.key, text, window, stride)
    kept = st.session_state.get("eval_ppl_kept")
    if kept is not None and kept[0] == key:
        return kept[1]
    box = st.empty()
    with box.container():
        if st.button("✖ Cancel", key="eval_ppl_cancel"):
            raise InputError("Cancelled: change the text, the window or the stride to score again.")
        bar = st.progress(0.0, text="Scoring the text…")

        def progress(done: int, total: int) -> None:
            bar.progress(done / total, text=f"Scoring the text: window {done:,} of {total:,}")

        result = ppl.perplexity(lm, text, window, stride, max_work=MAX_WORK, progress=progress)
    box.empty()
    st.session_state["eval_ppl_kept"] = (key, result)
    return result


def mc_work(lm: LoadedModel, items: list[mc.Item]) -> Callable[[Job], mc.MCResult]:
    """The background job that scores the items (a worker thread: no st.* calls in here)."""
    def work(job: Job) -> mc.MCResult:
        correct = [0, 0]

        def progress(done: int, total: int, scores: list[mc.ItemScore]) -> None:
            s = scores[-1]
            correct[0] += s.pick_summed == s.item.label
            correct[1] += s.pick_normalised == s.item.label
            job.report(step=done, metrics={"item": done, "correct (sum)": correct[0],
                                           "correct (per token)": correct[1]})
            job.tick()  # pause / stop between items

        return mc.score_items(lm, items, progress=progress)
    return work


@st.cache_data(show_spinner=False, max_entries=16, ttl=3600)
def kl_between(p_key: str, q_key: str, text: str, _p: LoadedModel, _q: LoadedModel) -> divergence.KLResult:
    return divergence.kl_on_text(_p, _q, text)


# ---------------------------------------------------------------- which models can be compared


def kl_partners(spec: ModelSpec) -> dict[str, ModelSpec]:
    """Models that read the same ids as `spec`, by label: the same weights at lower precision, the tiny
    models and the embedded one (they share SmolLM2's tokenizer), and the training lab's saved runs
    (their tokenizer is checked when compared)."""
    out: list[ModelSpec] = []
    if spec.source not in TINY_SOURCES:
        out += [ModelSpec(spec.source, "bfloat16", spec.device), ModelSpec(spec.source, "float32", spec.device),
                ModelSpec(spec.source, "float32", spec.device, "8bit"),
                ModelSpec(spec.source, "float32", spec.device, "4bit")]
    else:
        out.append(ModelSpec(spec.source, "bfloat16", spec.device))
    out += [ModelSpec(s) for s in (EMBEDDED, *TINY_SOURCES)]
    out += [ModelSpec(str(m.path)) for m in saved_models()]
    return {s.label: s for s in out if s != spec}


def other_cli(spec: ModelSpec | None) -> str:
    """The `--other ...` arguments of `python -m core kl` for Q."""
    if spec is None:
        return "--other tiny-llama"
    parts = [f"--other {spec.source}", f"--other-dtype {spec.dtype}"]
    if spec.quantization != "none":
        parts.append(f"--other-quantization {spec.quantization}")
    return " ".join(parts)


def nats(x: float) -> str:
    """A KL for a metric: '0.00127' is unreadable at a glance, '1.27e-03' is not."""
    return f"{x:.3f}" if x >= 0.01 else f"{x:.2e}"


def partner_label(label: str, specs: dict[str, ModelSpec]) -> str:
    runs = {str(m.path): m.label for m in saved_models()}
    return runs.get(specs[label].source, label) if label in specs else label


# ---------------------------------------------------------------- charts


def windows_chart(result: ppl.PerplexityResult) -> alt.Chart:
    """One row per forward pass: the tokens it reads (light) and the tokens it scores (dark)."""
    rows = []
    for k, w in enumerate(result.windows):
        for part, first in (("context only", w.start), ("scored", w.score_start)):
            rows.append({"pass": k + 1, "x0": first - 0.5, "x1": w.end - 0.5, "y0": k + 0.65, "y1": k + 1.35,
                         "part": part, "tokens": f"{first}–{w.end - 1}"})
    n = len(result.windows)
    return alt.Chart(pd.DataFrame(rows)).mark_rect().encode(
        x=alt.X("x0:Q", title="token position", scale=alt.Scale(domain=[-0.5, len(result.ids) - 0.5], nice=False)),
        x2="x1:Q",
        y=alt.Y("y0:Q", title="forward pass", scale=alt.Scale(domain=[n + 0.5, 0.5], nice=False),
                axis=alt.Axis(values=list(range(1, n + 1))) if n <= 20 else alt.Axis(format="d", tickMinStep=1)),
        y2="y1:Q",
        color=alt.Color("part:N", scale=alt.Scale(domain=["context only", "scored"], range=["#c6dbef", "#2171b5"]),
                        legend=alt.Legend(title=None)),
        tooltip=[alt.Tooltip("pass:O", title="forward pass"), "part:N", "tokens:N"],
    ).properties(height=min(360, 34 * n + 70))


def nll_chart(result: ppl.PerplexityResult) -> alt.Chart:
    nll = result.token_nll.tolist()
    df = pd.DataFrame({
        "position": range(len(result.ids)),
        "token": [token_display(t) for t in result.tokens],
        "nll": [None if math.isnan(x) else x for x in nll],
        "p": [None if math.isnan(x) else math.exp(-x) for x in nll],
        "context": result.context.tolist(),
    }).dropna()
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("position:Q", title="token position",
                scale=alt.Scale(domain=[-0.5, len(result.ids) - 0.5], nice=False)),
        y=alt.Y("nll:Q", title="−log p (nats)"),
        color=alt.Color("context:Q", title="context tokens", scale=alt.Scale(scheme="viridis")),
        tooltip=["position:Q", "token:N", alt.Tooltip("nll:Q", format=".3f", title="−log p"),
                 alt.Tooltip("p:Q", format=".4f", title="p(token)"), "context:Q"],
    ).properties(height=220)


def kl_chart(result: divergence.KLResult, q_tokens: list[str], p_tokens: list[str]) -> alt.Chart:
    df = pd.DataFrame({
        "position": range(len(result.ids)),
        "token": [token_display(t) for t in result.tokens],
        "kl": result.per_position.tolist(),
        "p_top": [token_display(t) for t in p_tokens],
        "q_top": [token_display(t) for t in q_tokens],
        "agree": ["yes" if a == b else "no" for a, b in zip(result.top1_p, result.top1_q)],
    })
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("position:Q", title="position (the next token is predicted here)",
                scale=alt.Scale(domain=[-0.5, len(result.ids) - 0.5], nice=False)),
        y=alt.Y("kl:Q", title="KL(P‖Q) nats"),
        color=alt.Color("agree:N", title="same top-1", scale=alt.Scale(domain=["yes", "no"],
                                                                       range=["#4c78a8", "#e45756"])),
        tooltip=["position:Q", "token:N", alt.Tooltip("kl:Q", format=".5f", title="KL (nats)"),
                 alt.Tooltip("p_top:N", title="P's top-1 next"), alt.Tooltip("q_top:N", title="Q's top-1 next")],
    ).properties(height=220)


def mc_table(result: mc.MCResult) -> pd.DataFrame:
    letters = "ABCDEFGH"
    return pd.DataFrame([{
        "context": s.item.context,
        "correct": f"{letters[s.item.label]}. {s.item.endings[s.item.label]}",
        "pick (sum)": letters[s.pick_summed] + (" ✓" if s.pick_summed == s.item.label else " ✗"),
        "pick (per token)": letters[s.pick_normalised] + (" ✓" if s.pick_normalised == s.item.label else " ✗"),
        **{f"{letters[j]} sum": round(v, 2) for j, v in enumerate(s.summed)},
        **{f"{letters[j]} /tok": round(v, 3) for j, v in enumerate(s.normalised)},
    } for s in result.scores])


def mc_item_table(score: mc.ItemScore) -> pd.DataFrame:
    return pd.DataFrame({"ending": score.item.endings, "tokens": score.n_tokens,
                         "log-likelihood (sum)": score.summed, "per token": score.normalised,
                         "correct": ["✓" if j == score.item.label else "" for j in range(len(score.summed))]})
