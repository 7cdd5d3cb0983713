"""Shared results with a progress bar and Cancel, and charts, for the Decoding comparator page (no math: that lives in
core/decode)."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict

import altair as alt
import pandas as pd
import streamlit as st

from core.decode.beam import BeamNode
from core.decode.comparator import Comparison, Step, compare, distinct_n
from core.decode.strategies import Strategy
from core.jobs import REGISTRY, JobLimitError
from core.models.capture import InputError, token_display
from core.models.memory import kv_cache_bytes
from core.models.loading import LoadedModel

STATUS_COLOURS = {"kept": "#1c7ed6", "finished": "#37b24d", "pruned": "#adb5bd"}
CANCEL_KEY = "dec_cancel"


class _Shared:
    """Finished comparisons for every session (a class decodes the same default prompt), newest last.

    Not st.cache_*: the decoding draws its progress bar as it goes, and a cached function's drawing is
    replayed on a hit, which a progress bar created outside it cannot be."""

    def __init__(self, size: int = 16):
        self.size, self.lock, self.items = size, threading.Lock(), OrderedDict()

    def get(self, key: tuple) -> Comparison | None:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
            return self.items.get(key)

    def put(self, key: tuple, value: Comparison) -> None:
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)


@st.cache_resource(show_spinner=False)
def _shared() -> _Shared:
    return _Shared()


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


# A decoding whose KV cache and logits pass this is admitted against the server's memory budget like a job (48
# rows x 640 tokens of the embedded model hold ~1.4 GB of cache); smaller ones run at once, side by side.
HEAVY_BYTES = 256 * 2**20


def decoding_peak_bytes(lm: LoadedModel, text: str, rows: int, max_new_tokens: int) -> int:
    """The batch's KV cache after prompt + new tokens (windows honoured) and two [rows, vocab] float32 logits."""
    tokens = len(lm.encode(text)) + max_new_tokens
    kv = kv_cache_bytes(lm.config, tokens, rows, lm.model.dtype).bytes or 0
    return int(kv + 2 * 4 * rows * lm.model.get_output_embeddings().weight.shape[0])


def comparison(lm: LoadedModel, text: str, strategies: list[Strategy], max_new_tokens: int,
               seed: int) -> Comparison | None:
    """The comparison (shared, read-only), or None after telling the user what to change.

    A new one shows a progress bar (one step per forward pass) and a Cancel button: a click on it, like any
    click, starts a rerun, which stops this script at its next progress update (the page then sees the button
    pressed and decodes nothing). So this must run outside a fragment: a click inside one waits for the run."""
    key = (lm.spec.key, text, tuple(strategies), max_new_tokens, seed)
    done = _shared().get(key)
    if done is not None:
        return done
    rows = sum(s.rows for s in strategies)
    box = st.empty()
    try:
        with box.container():
            st.button("✖ Cancel", key=CANCEL_KEY, help="Stops the decoding after the current forward pass.")
            bar = st.progress(0.0, text=f"Decoding {rows} rows as one batch…")

            def progress(step: int, total: int) -> None:
                bar.progress(step / total, text=f"Decoding {rows} rows as one batch: forward pass {step} of {total}")

            peak = decoding_peak_bytes(lm, text, rows, max_new_tokens)
            with REGISTRY.heavy(peak, "the decoding") if peak > HEAVY_BYTES else contextlib.nullcontext():
                result = compare(lm, text, strategies, max_new_tokens, seed, progress=progress)
    except (InputError, ValueError, JobLimitError) as exc:
        box.empty()
        st.warning(str(exc))
        return None
    box.empty()
    _shared().put(key, result)
    return result


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
    # A step's token labels need ~65 px: squeezed to a phone's width they overlapped, so the width follows the
    # steps shown and a narrow screen scrolls the chart in its box. pad: the height is the plot area's, not
    # squeezed by the axes and the legend.
    return alt.layer(lines, points, text).properties(height=max(160, 36 * rows), width=max(320, 66 * (last + 1)),
                                                     autosize=alt.AutoSizeParams(type="pad"))
