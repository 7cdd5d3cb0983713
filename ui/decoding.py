"""Cached wrapper and charts for the Decoding comparator page (no math: that lives in core/decode)."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from core.decode.beam import BeamNode
from core.decode.comparator import Comparison, Step, compare, distinct_n
from core.decode.strategies import Strategy
from core.models.capture import InputError, token_display
from core.models.loading import LoadedModel

STATUS_COLOURS = {"kept": "#1c7ed6", "finished": "#37b24d", "pruned": "#adb5bd"}


@st.cache_resource(show_spinner=False, max_entries=16, ttl=3600)
def _cached_compare(key: str, text: str, strategies: tuple[Strategy, ...], max_new_tokens: int, seed: int,
                    _lm: LoadedModel) -> Comparison:
    return compare(_lm, text, list(strategies), max_new_tokens, seed)


def usable(picked: list[Strategy | str]) -> tuple[list[Strategy], list[str]]:
    """(strategies that can run, a note per one that cannot): a bad setting skips only its own strategy."""
    ok, skipped = [], []
    for s in picked:
        if isinstance(s, str):
            skipped.append(s)
            continue
        try:
            s.check()
        except ValueError as exc:
            skipped.append(f"{s.name}: {exc}")
        else:
            ok.append(s)
    return ok, skipped


def comparison(lm: LoadedModel, text: str, strategies: list[Strategy], max_new_tokens: int,
               seed: int) -> Comparison | None:
    """The comparison (shared, read-only), or None after telling the user what to change."""
    try:
        for s in strategies:
            s.check()
        with st.spinner(f"Decoding {sum(s.rows for s in strategies)} rows as one batch…"):
            return _cached_compare(lm.spec.key, text, tuple(strategies), max_new_tokens, seed, lm)
    except (InputError, ValueError) as exc:
        st.warning(str(exc))
        return None


def summary_table(lm: LoadedModel, result: Comparison) -> pd.DataFrame:
    rows = []
    for o in result.outputs:
        same = [x.token_ids for x in result.of(o.strategy.name)]
        rows.append({"strategy": o.strategy.name, "sample": o.sample + 1, "tokens": o.length,
                     "log p": o.logprob, "perplexity": o.perplexity,
                     "distinct-1": distinct_n(same, 1), "distinct-2": distinct_n(same, 2),
                     "text": lm.decode(o.token_ids)})
    return pd.DataFrame(rows)


def step_frame(lm: LoadedModel, step: Step) -> pd.DataFrame:
    """One step's top-20: probability before and after the filters, cut and picked marks."""
    labels = [token_display(t) for t in lm.token_strings(step.top_ids)]
    rows = []
    for rank, (tid, label, pm, pf) in enumerate(zip(step.top_ids, labels, step.p_model, step.p_filtered)):
        mark = "★ " if tid == step.picked else ("✂ " if pf == 0 else "")
        name = f"{rank + 1:>2}. {mark}{label}"
        rows.append({"token": name, "rank": rank, "series": "model (before filters)", "p": pm,
                     "status": "picked" if tid == step.picked else ("cut" if pf == 0 else "kept")})
        rows.append({"token": name, "rank": rank, "series": "after filters", "p": pf,
                     "status": "picked" if tid == step.picked else ("cut" if pf == 0 else "kept")})
    return pd.DataFrame(rows)


def step_chart(frame: pd.DataFrame) -> alt.Chart:
    order = list(dict.fromkeys(frame.sort_values("rank")["token"]))
    return alt.Chart(frame).mark_bar().encode(
        y=alt.Y("token:N", sort=order, title=None, axis=alt.Axis(labelLimit=180)),
        x=alt.X("p:Q", title="probability"),
        yOffset=alt.YOffset("series:N", sort=["model (before filters)", "after filters"]),
        color=alt.Color("series:N", scale=alt.Scale(domain=["model (before filters)", "after filters"],
                                                    range=["#adb5bd", "#1c7ed6"]),
                        legend=alt.Legend(orient="bottom", title=None)),
        tooltip=["token:N", "series:N", alt.Tooltip("p:Q", format=".5f"), "status:N"],
    ).properties(height=alt.Step(9), width="container")


def tree_frames(lm: LoadedModel, nodes: list[BeamNode], best_path: list[int], steps: int
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(nodes, edges) of the first `steps` steps; y = the candidate's rank within its step."""
    shown = [n for n in nodes if n.step < steps]
    rank: dict[int, int] = {}
    per_step: dict[int, int] = {}
    for n in shown:  # candidates come in score order within a step
        rank[n.id] = per_step.get(n.step, 0)
        per_step[n.step] = rank[n.id] + 1
    on_best = set(best_path)
    labels = lm.token_strings([n.token_id for n in shown])
    node_rows = [{"id": n.id, "step": n.step + 1, "y": rank[n.id], "token": token_display(label),
                  "status": n.status, "score": n.score, "best": n.id in on_best}
                 for n, label in zip(shown, labels)]
    edge_rows = []
    for n in shown:
        x0, y0 = (0, 0) if n.parent < 0 else (nodes[n.parent].step + 1, rank[n.parent])
        edge_rows.append({"x0": x0, "y0": y0, "x1": n.step + 1, "y1": rank[n.id], "best": n.id in on_best})
    return pd.DataFrame(node_rows), pd.DataFrame(edge_rows)


def tree_chart(nodes: pd.DataFrame, edges: pd.DataFrame) -> alt.LayerChart:
    y = alt.Y("y:Q", scale=alt.Scale(reverse=True), axis=alt.Axis(title="candidate rank at its step", tickMinStep=1))
    last = int(nodes["step"].max()) if len(nodes) else 1
    x = alt.X("x0:Q", title="step (0 = the prompt)", axis=alt.Axis(tickMinStep=1),
              scale=alt.Scale(domain=[0, last + 0.9]))  # room for the last step's token labels
    lines = alt.Chart(edges).mark_rule().encode(
        x=x, x2="x1:Q", y=alt.Y("y0:Q", scale=alt.Scale(reverse=True)), y2="y1:Q",
        color=alt.condition("datum.best", alt.value("#e8590c"), alt.value("#ced4da")),
        strokeWidth=alt.condition("datum.best", alt.value(3), alt.value(1)))
    points = alt.Chart(nodes).mark_circle(size=90).encode(
        x=alt.X("step:Q", scale=alt.Scale(domain=[0, last + 0.9])), y=y,
        color=alt.Color("status:N", scale=alt.Scale(domain=list(STATUS_COLOURS), range=list(STATUS_COLOURS.values())),
                        legend=alt.Legend(orient="bottom", title=None)),
        tooltip=["step:Q", "token:N", alt.Tooltip("score:Q", format=".3f", title="log p so far"), "status:N",
                 "best:N"])
    text = alt.Chart(nodes).mark_text(align="left", dx=7, fontSize=11).encode(
        x="step:Q", y=y, text="token:N",
        color=alt.condition("datum.best", alt.value("#e8590c"), alt.value("#495057")))
    rows = int(nodes["y"].max()) + 1 if len(nodes) else 1
    # pad: the height is the plot area's, not squeezed by the axes and the legend
    return alt.layer(lines, points, text).properties(height=max(160, 36 * rows), width="container",
                                                     autosize=alt.AutoSizeParams(type="pad"))
