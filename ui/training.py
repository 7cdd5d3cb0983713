"""Streamlit helpers of the pre-training page: starting runs and lessons as jobs, the live charts.

The page stays a thin story; everything that touches a job or draws a curve from its rows lives here.
"""

from __future__ import annotations

import math
import secrets
import shutil
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from core.jobs import REGISTRY, JobSnapshot
from core.train.config import TrainConfig, lr_at
from core.train.export import export_reason
from core.train.lessons import LESSONS, run_lesson
from core.train.lessons import figures as lesson_figures
from core.train.model import GPT
from core.runs import is_live, make_room, reserve_run, run_info, run_path
from core.train.pretrain import estimate_step_bytes, peak_bytes, prepare_data, read_run_config, train
from core.units import format_bytes, format_duration
from ui.jobs import owner_id, start_job

TRAIN_PARAM = "train"
LESSON_PARAM = "lesson"
MAX_POINTS = 600  # a curve is thinned to this many points per series (the page redraws it every second)


def parameter_count(config: TrainConfig, vocab_size: int) -> int:
    """Parameters of the model this config builds (on the meta device: no memory, no time)."""
    import torch

    with torch.device("meta"):
        return GPT(config.model_config(vocab_size)).num_parameters()


def check_config(config: TrainConfig) -> tuple[int, int] | None:
    """(vocab size, parameters) after validating against the data, or None after showing why not."""
    try:
        data = prepare_data(config)
    except ValueError as exc:
        st.error(str(exc))
        return None
    return data.vocab_size, parameter_count(config, data.vocab_size)


def start_pretraining(config: TrainConfig, name: str, resume: bool = False):
    """Validate, claim the run's name, start (or queue) the job; None after showing why not."""
    try:
        run = run_path(name)
        if resume:
            if is_live(run):
                raise ValueError(f"{name} is training right now in another job: watch it through its link, or "
                                 "resume it once it has stopped.")
            saved = read_run_config(run)
            done = int(run_info(run).get("step") or 0)
            if config.max_iters <= done:
                raise ValueError(f"{name} is already at step {done:,}: to continue, train until a later step.")
            saved.max_iters = config.max_iters
            config = saved
        data = prepare_data(config)
    except ValueError as exc:
        st.error(str(exc))
        return None
    owner, job_id = owner_id(), secrets.token_urlsafe(9)
    if not resume:
        try:  # one mkdir checks and claims the name, before the job may wait in the queue
            reserve_run(run, job_id=job_id, owner=owner, kind="pretrain")
        except ValueError as exc:
            st.error(str(exc))
            return None
    old_job = run_info(run).get("job_id") if resume else None
    job = start_job(TRAIN_PARAM, "pretrain", pretrain_work(config, run, owner, resume), title=f"pre-training {name}",
                    total_steps=config.max_iters, peak_bytes=peak_bytes(config, data), job_id=job_id)
    if job is None and not resume:
        shutil.rmtree(run, ignore_errors=True)  # refused: the name is free again, and nothing else was touched
    elif job is not None and old_job:
        REGISTRY.alias(old_job, job)  # a link to the run's earlier job now shows this one
    return job


def pretrain_work(config: TrainConfig, run: Path, owner: str, resume: bool):
    """The job: make room under the runs-folder cap once it really starts (never for a refused or queued
    start), then train. What the cap removed is reported on the job's own panel."""

    def work(job):
        make_room(job, owner, run)
        return train(config, run, job, resume=resume, owner=owner)

    return work


def resume_interrupted(entry) -> object | None:
    """Start a job that resumes an interrupted pre-training run for its owner (LLM_LAB_AUTO_RESUME); the run's
    old job id points at it."""
    from core.jobs import JobLimitError

    run = entry.path
    try:
        config = read_run_config(run)
        data = prepare_data(config)
        info = run_info(run)
        owner = str(info.get("owner") or "server")
        job = REGISTRY.start("pretrain", owner, pretrain_work(config, run, owner, True),
                             title=f"pre-training {run.name}", total_steps=config.max_iters,
                             peak_bytes=peak_bytes(config, data))
    except (ValueError, JobLimitError):
        return None
    if info.get("job_id"):
        REGISTRY.alias(str(info["job_id"]), job)
    return job


def planned_steps(run: Path) -> int:
    """The number of steps a saved run was configured for (what "Train until step" starts from)."""
    try:
        return int(read_run_config(run).max_iters)
    except (ValueError, OSError):
        return int(run_info(run).get("max_iters") or 2000)


def start_lesson(key: str):
    lesson = LESSONS[key]
    total = lesson.configs[0].max_iters
    return start_job(LESSON_PARAM, "lesson", lambda job: run_lesson(key, job), title=f"lesson: {lesson.title}",
                     total_steps=total)


def schedule_warning(config: TrainConfig) -> str | None:
    """A warmup as long as the run: the learning rate never reaches the value the user typed."""
    if not config.decay_lr or config.warmup_iters < config.max_iters:
        return None
    top = max(lr_at(config, s) for s in range(config.max_iters))
    return (f"Warmup ({config.warmup_iters:,} steps) is not shorter than the run ({config.max_iters:,} steps): the "
            f"learning rate only climbs, to {top:.3g} at the last step, and never reaches the {config.learning_rate:.3g} "
            "you set. Shorten the warmup or train longer.")


def config_notes(config: TrainConfig, vocab_size: int) -> list[str]:
    notes = []
    reason = export_reason(config)
    notes.append("Exported to the model picker as a Hugging Face model after each checkpoint." if reason is None
                 else reason)
    notes.append(f"About {format_bytes(estimate_step_bytes(config, vocab_size))} of activations per micro-batch.")
    return notes


# ---------------------------------------------------------------- live panel pieces


def _thin(df: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    if by is None:
        step = max(1, len(df) // MAX_POINTS)
        return df.iloc[::step]
    return pd.concat([_thin(g) for _, g in df.groupby(by, sort=False)]) if len(df) else df


def loss_chart(rows: tuple[dict[str, Any], ...], color: str | None = None) -> alt.Chart | None:
    """Train loss per step (line) and val loss at each evaluation (points), optionally one colour per run."""
    if not rows:
        return None
    df = pd.DataFrame(list(rows))
    train_df = _thin(df.dropna(subset=["train_loss"]), color).assign(split="train")
    val_df = df.dropna(subset=["val_loss"]).assign(split="val")
    enc_color = (alt.Color(f"{color}:N", title=None) if color else
                 alt.Color("split:N", title=None, scale=alt.Scale(domain=["train", "val"], range=["#4c78a8", "#f58518"])))
    base_x = alt.X("step:Q", title="step")
    line = alt.Chart(train_df).mark_line(opacity=0.55).encode(
        base_x, alt.Y("train_loss:Q", title="loss (nats/token)", scale=alt.Scale(zero=False)), enc_color,
        tooltip=["step", alt.Tooltip("train_loss:Q", format=".4f")] + ([color] if color else []))
    layers = [line]
    if len(val_df):
        points = alt.Chart(val_df).mark_line(point=True, strokeDash=[4, 2]).encode(
            base_x, alt.Y("val_loss:Q"), enc_color,
            tooltip=["step", alt.Tooltip("val_loss:Q", format=".4f")] + ([color] if color else []))
        layers.append(points)
    return alt.layer(*layers).properties(height=300)


def step_chart(rows: tuple[dict[str, Any], ...], field: str, title: str) -> alt.Chart | None:
    """One per-step series of the run: the learning rate (warmup, cosine decay, a live change) or the gradient norm."""
    df = _thin(pd.DataFrame(list(rows)))[["step", field]].dropna() if rows else pd.DataFrame()
    if df.empty:
        return None
    return alt.Chart(df).mark_line().encode(
        alt.X("step:Q"), alt.Y(f"{field}:Q", title=None),
        tooltip=["step", alt.Tooltip(f"{field}:Q", format=".3g")]).properties(height=230, title=title)


def metric_strip(snap: JobSnapshot) -> None:
    rows = snap.metrics
    last = rows[-1] if rows else {}
    val = next((r["val_loss"] for r in reversed(rows) if r.get("val_loss") is not None), None)
    c = st.columns(6)
    c[0].metric("train loss", f"{last['train_loss']:.3f}" if last else "–")
    c[1].metric("val loss", f"{val:.3f}" if val is not None else "–",
                help="mean cross-entropy over eval_iters batches of the held-out split")
    c[2].metric("val perplexity", f"{math.exp(val):.2f}" if val is not None and val < 50 else "–",
                help="exp(val loss): the model is as unsure as a uniform choice among this many tokens")
    # "2.7e-4", not "2.65e-04": six columns leave a metric about six characters before it is cut off
    c[3].metric("learning rate", f"{last['lr']:.1e}".replace("e-0", "e-").replace("e+0", "e+") if last else "–",
                help=f"{last['lr']:.4g}" if last else None)
    c[4].metric("grad norm", f"{last['grad_norm']:.3f}" if last else "–", help="before clipping")
    c[5].metric("tokens/s", f"{snap.info.get('tokens_per_s_mean', 0):,.0f}", help="mean since the start")
    params = snap.info.get("parameters")
    mem = snap.info.get("memory_bytes")
    st.caption(" · ".join(x for x in (
        f"{params:,} parameters" if isinstance(params, int) else "",
        f"the run holds {format_bytes(mem)} in tensors (weights, gradients, AdamW moments, token ids)" if mem else "",
        f"{snap.info.get('processes', 1)} process(es) on {snap.info.get('device', '?')}",
        f"elapsed {format_duration(last['elapsed_s'])} of training" if last.get("elapsed_s") else "") if x))


def draw_training(snap: JobSnapshot) -> None:
    metric_strip(snap)
    chart = loss_chart(snap.metrics)
    if chart is not None:
        st.altair_chart(chart, width="stretch")
        for column, (field, title) in zip(st.columns(2), (("lr", "learning rate"),
                                                          ("grad_norm", "gradient norm (before clipping)"))):
            chart = step_chart(snap.metrics, field, title)
            if chart is not None:
                column.altair_chart(chart, width="stretch")
    if snap.info.get("sample"):
        st.markdown(f"**Sample at step {snap.info.get('sample_step')}** (temperature 0.8, top-k 200)")
        st.code(snap.info["sample"], language=None, wrap_lines=True)
    if snap.info.get("checkpoint"):
        st.caption(f"Last checkpoint: `{Path(snap.info['checkpoint']).relative_to(Path(snap.info['run_dir']).parent)}`")


def draw_lesson(snap: JobSnapshot) -> None:
    chart = loss_chart(snap.metrics, color="run")
    if chart is not None:
        st.altair_chart(chart, width="stretch")
    else:
        st.caption("Building the two models…")
    for label, why in (snap.info.get("diverged") or {}).items():
        st.warning(f"**{label}** diverged at {why}")
    finals = {}
    for r in snap.metrics:
        if r.get("val_loss") is not None:
            finals[r["run"]] = (r["step"], r["val_loss"])
    if finals:
        st.caption(" · ".join(f"{k}: val loss {v:.3f} at step {s}" for k, (s, v) in finals.items()))
    key = next((k for k, lesson in LESSONS.items() if snap.title.endswith(lesson.title)), None)
    if key and (quoted := lesson_figures(key, snap.metrics)):
        st.markdown(quoted)
