"""Charts of the scaling-laws page: IsoFLOP curves, and parameters against tokens with known models and lab runs."""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from core.hardware import scaling as core_scaling
from ui.charts import place_labels

BUDGETS = (1e19, 1e20, 1e21, 1e22, 1e23, 1e24, 1e25)


def human(n: float) -> str:
    """70e9 -> '70.0B', 1.4e12 -> '1.40T'."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:,.2f}{unit}" if unit == "T" else f"{n / div:,.1f}{unit}"
    return f"{n:,.0f}"


def isoflop_chart(budget: float) -> alt.LayerChart:
    """Chinchilla loss along 6ND = C for several budgets (and the user's), each curve's minimum marked."""
    budgets = sorted(set(BUDGETS) | {budget})
    rows, optima = [], []
    for c in budgets:
        label = f"{c:.3g}" + (" (yours)" if c == budget else "")
        rows += [{**r, "budget": label} for r in core_scaling.loss_along_budget(c, points=50, span=3.0)]
        a = core_scaling.chinchilla_optimal(c)
        optima.append({"parameters": a.parameters, "loss": a.loss, "budget": label, "tokens": a.tokens})
    curves = alt.Chart(pd.DataFrame(rows)).mark_line().encode(
        x=alt.X("parameters:Q", scale=alt.Scale(type="log"), title="parameters N (log; G = billion)",
                axis=alt.Axis(format="~s")),
        y=alt.Y("loss:Q", scale=alt.Scale(zero=False), title="predicted loss (nats/token)"),
        color=alt.Color("budget:N", sort=None, title="C (FLOPs)", scale=alt.Scale(scheme="viridis")),
        tooltip=["budget", alt.Tooltip("parameters:Q", format=".3s"), alt.Tooltip("tokens:Q", format=".3s"),
                 alt.Tooltip("loss:Q", format=".4f")])
    dots = alt.Chart(pd.DataFrame(optima)).mark_point(filled=True, size=60, color="black").encode(
        x="parameters:Q", y="loss:Q", tooltip=["budget", alt.Tooltip("parameters:Q", format=".3s"),
                                               alt.Tooltip("tokens:Q", format=".3s"), alt.Tooltip("loss:Q", format=".4f")])
    return (curves + dots).properties(height=330)


def frontier_rows(lo: float = 1e17, hi: float = 1e26) -> pd.DataFrame:
    rows = []
    for c in np.logspace(math.log10(lo), math.log10(hi), 40):
        for rule in (core_scaling.twenty_tokens_rule, core_scaling.chinchilla_optimal, core_scaling.kaplan_optimal):
            a = rule(float(c))
            rows.append({"parameters": a.parameters, "tokens": a.tokens, "rule": a.rule, "compute": a.compute})
    return pd.DataFrame(rows)


def placement_chart(known: list[dict], runs: list[dict], budget_points: list[dict]) -> alt.LayerChart:
    """Parameters against training tokens, log-log: the three rules as lines, known models and lab runs as dots."""
    lines_frame = frontier_rows(1e12 if runs else 1e17)
    lines = alt.Chart(lines_frame).mark_line(strokeDash=[5, 3]).encode(
        x=alt.X("parameters:Q", scale=alt.Scale(type="log"), title="parameters N (log; G = billion)",
                axis=alt.Axis(format="~s")),
        y=alt.Y("tokens:Q", scale=alt.Scale(type="log"), title="training tokens D (log; T = trillion)",
                axis=alt.Axis(format="~s")),
        color=alt.Color("rule:N", title="compute-optimal by", scale=alt.Scale(scheme="set2"),
                        legend=alt.Legend(orient="bottom", columns=2, labelLimit=300)),  # the plot keeps the width
        detail="rule:N", tooltip=["rule", alt.Tooltip("compute:Q", format=".2e")])
    points = pd.DataFrame([{**k, "kind": "published model"} for k in known]
                          + [{**r, "kind": "training-lab run"} for r in runs]
                          + [{**b, "kind": "your budget"} for b in budget_points])
    dots = alt.Chart(points).mark_point(filled=True, size=70).encode(
        x="parameters:Q", y="tokens:Q",
        shape=alt.Shape("kind:N", title=None, legend=alt.Legend(orient="bottom")),
        fill=alt.value("#333"),
        tooltip=["name", "kind", alt.Tooltip("parameters:Q", format=".3s"), alt.Tooltip("tokens:Q", format=".3s"),
                 alt.Tooltip("compute:Q", format=".2e")])
    named = points[points["kind"] != "your budget"].copy()
    # Labels on free spots around their points: 65B-70B models trained on 1.4-2T tokens sit on top of each other.
    named["lx"], named["ly"] = place_labels(named["parameters"].to_numpy(float), named["tokens"].to_numpy(float),
                                            list(named["name"]), width=620, height=270, char_px=5.6, log=True,
                                            domain=(_decades(lines_frame["parameters"], named["parameters"]),
                                                    _decades(lines_frame["tokens"], named["tokens"])))
    labels = alt.Chart(named).mark_text(align="left", baseline="middle", fontSize=10).encode(
        x="lx:Q", y="ly:Q", text="name")
    return (lines + dots + labels).properties(height=400)


def _decades(*columns: pd.Series) -> tuple[float, float]:
    """The range a log axis shows for these values: Vega rounds it out to whole powers of ten."""
    values = pd.concat(columns).astype(float)
    return 10.0 ** math.floor(math.log10(values.min())), 10.0 ** math.ceil(math.log10(values.max()))


@st.cache_data(show_spinner=False, ttl=30)
def lab_runs() -> list[dict]:
    """Runs of the training lab; re-read at most every 30 s (a run in progress adds points)."""
    return core_scaling.training_runs()


def known_table(known: list[dict]) -> pd.DataFrame:
    """Published models as display text (figures this large overflow a browser's integer columns)."""
    return pd.DataFrame([{"model": k["name"], "year": str(k["year"]), "parameters": human(k["parameters"]),
                          "tokens": human(k["tokens"]), "tokens / parameter": f"{k['tokens_per_parameter']:,.0f}",
                          "compute 6ND (FLOPs)": f"{k['compute']:.2e}",
                          "Chinchilla loss": f"{k['chinchilla_loss']:.3f}", "source": k["source"]} for k in known])
