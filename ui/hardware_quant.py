"""Streamlit side of the quantization lab: the background job, its results table and charts, the GGUF table."""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from core.hardware import quantization as core_quant
from core.jobs import Job, JobError
from core.models.loading import LoadedModel
from core.units import format_bytes

JOB_PARAM = "quantlab"  # not "quant": the model picker links the quantization under that name
GGUF_KEY = "hw_gguf_open"


def lab_work(lm: LoadedModel, variants: list[str]):
    """The worker: every variant in turn; a bad setup becomes a message for the user."""
    def work(job: Job) -> list[dict[str, Any]]:
        try:
            return [r.as_dict() for r in core_quant.run_lab(lm, variants, job)]
        except (ValueError, OSError) as exc:  # bad variants, weights that cannot be read or fetched
            raise JobError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    return work


def results_frame(rows: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return frame
    frame["memory"] = frame["memory_bytes"].map(lambda b: format_bytes(b) if b else "—")
    frame["memory_mib"] = frame["memory_bytes"] / 2**20
    frame["top-1 agreement"] = frame["top1_agreement"]
    return frame


def results_table(frame: pd.DataFrame) -> None:
    cols = ["label", "memory", "load_seconds", "tokens_per_s", "perplexity", "mean_kl", "max_kl", "top-1 agreement"]
    shown = frame[cols].rename(columns={"label": "variant", "load_seconds": "load (s)", "tokens_per_s": "tokens/s",
                                        "mean_kl": "mean KL to fp32 (nats)", "max_kl": "max KL (nats)"})
    st.dataframe(shown.style.format({"load (s)": "{:.2f}", "tokens/s": "{:.1f}", "perplexity": "{:.3f}",
                                     "mean KL to fp32 (nats)": "{:.3g}", "max KL (nats)": "{:.3g}",
                                     "top-1 agreement": "{:.1%}"}, na_rep="—"),
                 hide_index=True, width="stretch")
    for row in frame.itertuples():
        if getattr(row, "error", ""):
            st.warning(f"{row.label}: {row.error}")


def quality_chart(frame: pd.DataFrame, quality: str) -> alt.LayerChart | None:
    """Quality (perplexity or KL) against memory: the trade every quantization makes."""
    ok = frame[frame[quality].map(lambda v: isinstance(v, float) and math.isfinite(v))]
    if ok.empty:
        return None
    # Two lines: in one, the vertical title was longer than the 280 px plot and cut ("lower is bett").
    title = {"perplexity": ["perplexity on the held-out text", "(lower is better)"],
             "mean_kl": ["mean KL to fp32, nats", "(lower is better)"]}[quality]
    base = alt.Chart(ok).encode(
        x=alt.X("memory_mib:Q", title="memory of the loaded model (MiB)", scale=alt.Scale(zero=False)),
        y=alt.Y(f"{quality}:Q", title=title, scale=alt.Scale(zero=False)),
        tooltip=["label", alt.Tooltip("memory_mib:Q", format=",.1f"), alt.Tooltip(f"{quality}:Q", format=".5f"),
                 alt.Tooltip("tokens_per_s:Q", format=".1f")])
    return (base.mark_point(filled=True, size=90) + base.mark_text(dx=8, align="left").encode(text="label")
            ).properties(height=280)


def speed_chart(frame: pd.DataFrame) -> alt.Chart:
    ok = frame[frame["tokens_per_s"].map(lambda v: isinstance(v, float) and math.isfinite(v))]
    return alt.Chart(ok).mark_bar().encode(
        x=alt.X("tokens_per_s:Q", title=f"tokens/s, greedy decoding of {core_quant.GEN_TOKENS} tokens"),
        y=alt.Y("label:N", sort=None, title=None),
        tooltip=["label", alt.Tooltip("tokens_per_s:Q", format=".1f")]).properties(height=36 * max(1, len(ok)))


@st.cache_data(show_spinner="Reading the GGUF header…")
def gguf_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    tensors = core_quant.gguf_tensors()
    per = pd.DataFrame([{"tensor": t.name, "type": t.quant_type, "shape": " × ".join(map(str, t.shape)),
                         "weights": t.elements, "bytes": t.bytes, "bits/weight": t.bits_per_weight} for t in tensors])
    return pd.DataFrame(core_quant.gguf_summary(tensors)), per
