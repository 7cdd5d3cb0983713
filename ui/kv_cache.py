"""Cached wrapper and the latency chart for the KV cache page (the measuring lives in core/decode/kv_cache.py)."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from core.decode.kv_cache import CacheSize, KVMeasurement, cache_size
from core.models.loading import LoadedModel


@st.cache_resource(show_spinner=False, max_entries=16, ttl=3600)
def _cached_size(key: str, ids: tuple[int, ...], _lm: LoadedModel) -> CacheSize:
    return cache_size(_lm, list(ids))


def size(lm: LoadedModel, ids: list[int]) -> CacheSize:
    """Formula vs actual bytes for a prompt of these ids (one forward pass, shared)."""
    return _cached_size(lm.spec.key, tuple(ids), lm)


def _forward_input(m: KVMeasurement, use_cache: bool, i: int) -> str:
    """What the forward pass for new token i+1 was fed."""
    if use_cache:
        return f"{m.prompt_tokens} prompt tokens (prefill)" if i == 0 else "1 new token"
    return f"{m.prompt_tokens + i} tokens (everything so far)"


def latency_frame(m: KVMeasurement) -> pd.DataFrame:
    return pd.DataFrame([{"new token": i + 1, "ms": s * 1000, "run": label,
                          "forward input": _forward_input(m, timing.use_cache, i)}
                         for timing, label in ((m.with_cache, "with KV cache"), (m.without_cache, "without cache"))
                         for i, s in enumerate(timing.seconds)])


def latency_chart(frame: pd.DataFrame) -> alt.Chart:
    return alt.Chart(frame).mark_line(point=alt.OverlayMarkDef(size=18)).encode(
        x=alt.X("new token:Q", title="new token"),
        y=alt.Y("ms:Q", title="forward pass (ms)"),
        color=alt.Color("run:N", scale=alt.Scale(domain=["with KV cache", "without cache"],
                                                 range=["#1c7ed6", "#e8590c"]),
                        legend=alt.Legend(orient="bottom", title=None)),
        tooltip=["run:N", "new token:Q", alt.Tooltip("ms:Q", format=".2f"), "forward input:N"],
    ).properties(height=300, width="container")


def difference_text(m: KVMeasurement) -> str:
    """Whether the two runs chose the same tokens and, where they part, how close the top two logits were."""
    first = m.first_difference()
    if first is None:
        return "Both runs produced the same tokens."
    k, with_gap, without_gap = first
    tie = max(with_gap, without_gap) < 1e-3
    return (f"The two runs part at new token {k + 1}: the top two logits were {with_gap:.2g} apart with the cache "
            f"and {without_gap:.2g} without, "
            + ("a near tie that the two paths' different floating-point rounding can flip." if tie else
               "not a near tie, so rounding alone does not explain it."))
