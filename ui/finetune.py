"""Streamlit side of fine-tuning: cached previews, the job start, the loss chart and the before/after table.
The math lives in core/train/finetune*.py."""

from __future__ import annotations

import secrets
import shutil
from dataclasses import asdict
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from core.jobs import REGISTRY, Job, JobSnapshot
from core.models.loading import LoadedModel
from core.train import finetune_data as fd
from core.train import finetune_store as store
from core.runs import is_live, make_room, reserve_run, run_info
from core.train.finetune import FinetuneConfig, default_lora_targets, finetune, peak_bytes, preview
from ui.jobs import owner_id, start_job
from ui.text import md

JOB_PARAM = "finetune"  # the URL key holding the run's job id
NO_TEXT = "(no text: only an end or special token)"
# The user's own prompt is answered twice inside the job (before and after training) and shown in the table; the
# box used to cut a paste at 300 characters without a word. About 500 characters fit; a longer one is refused.
OWN_PROMPT_TOKENS = 128
WHY_OWN_PROMPT = "it is answered before and after training, beside the held-out prompts"


@st.cache_data(show_spinner=False, max_entries=64)
def _preview(model_key: str, cfg_items: tuple, _config: Any) -> dict[str, Any]:
    return preview(_config, FinetuneConfig(**dict(cfg_items)))


def trainable_preview(lm: LoadedModel, cfg: FinetuneConfig) -> dict[str, Any] | None:
    """Trainable / total counts for `cfg` (a meta-device model, no weights); None after showing why not."""
    try:
        return _preview(lm.spec.key, tuple(sorted(asdict(cfg).items())), lm.config)
    except ValueError as exc:
        st.error(str(exc))
        return None


@st.cache_data(show_spinner=False, max_entries=16)
def _default_targets(model_key: str, _config: Any) -> str:
    return default_lora_targets(_config)


def default_targets(lm: LoadedModel) -> str:
    return _default_targets(lm.spec.key, lm.config)


@st.cache_data(show_spinner=False)
def instructions() -> list[fd.Example]:
    return fd.load_instructions()


@st.cache_data(show_spinner=False, max_entries=8)
def _example_tokens(model_key: str, example: fd.Example, _lm: LoadedModel) -> tuple[list[str], list[int]]:
    with _lm.tokenizer_lock:
        enc = fd.encode_example(_lm.tokenizer, example, 256)
    return _lm.token_strings(enc.input_ids), enc.labels


def example_tokens(lm: LoadedModel, example: fd.Example) -> tuple[list[str], list[int]]:
    """The example's tokens as text and its labels (-100 on the prompt)."""
    return _example_tokens(lm.spec.key, example, lm)


def examples_frame(examples: list[fd.Example]) -> pd.DataFrame:
    return pd.DataFrame([{"split": e.split, "prompt": e.prompt, "response": e.response} for e in examples])


def start(lm: LoadedModel, cfg: FinetuneConfig, run_name: str, extra_prompts: tuple[str, ...],
          resume: bool) -> Job | None:
    """Check and claim the run folder, then start or queue the job (its id goes into the URL); a message and
    None on refusal."""
    owner, job_id = owner_id(), secrets.token_urlsafe(9)
    try:
        run_dir = store.run_dir_for(run_name)
        if resume and is_live(run_dir):
            raise ValueError(f"{run_name} is training right now in another job: resume it once it has stopped.")
        examples = instructions()
        fd.split_examples(examples)
        peak = peak_bytes(lm, cfg)
        if not resume:
            reserve_run(run_dir, job_id=job_id, owner=owner, kind="finetune")
    except ValueError as exc:
        st.error(str(exc))
        return None
    old_job = run_info(run_dir).get("job_id") if resume else None

    def work(job: Job):
        make_room(job, owner, run_dir)
        return finetune(job, lm, cfg, run_dir, examples, extra_prompts, resume=resume)

    job = start_job(JOB_PARAM, "finetune", work, title=f"Fine-tuning {lm.name} ({cfg.mode})", total_steps=cfg.steps,
                    controls={"lr": cfg.learning_rate}, peak_bytes=peak, job_id=job_id)
    if job is None and not resume:
        shutil.rmtree(run_dir, ignore_errors=True)  # refused: the name is free again
    elif job is not None and old_job:
        REGISTRY.alias(str(old_job), job)
    return job


def resumable_runs(source: str) -> list[dict[str, Any]]:
    """Not cached: a few small files per run, and a run saved a second ago must show."""
    return store.finetune_runs(base=source)


# ---------------------------------------------------------------- the live panel


def loss_chart(metrics: tuple[dict[str, Any], ...], total_steps: int | None = None) -> alt.Chart | None:
    """Training loss per step (line) and held-out loss (points and line), both on response tokens only."""
    rows = [{"step": m["step"], "loss": m[k], "curve": label} for m in metrics
            for k, label in (("loss", "training batch"), ("val_loss", "held-out prompts"))
            if m.get(k) is not None]
    if not rows:
        return None
    df = pd.DataFrame(rows)
    base = alt.Chart(df).encode(
        x=alt.X("step:Q", title="optimizer step", axis=alt.Axis(format="d", tickMinStep=1),
                scale=alt.Scale(domain=[0, max(1, total_steps or int(df["step"].max()))])),
        y=alt.Y("loss:Q", title="cross-entropy on response tokens (nats)", scale=alt.Scale(zero=False),
                axis=alt.Axis(format=".2f")),
        color=alt.Color("curve:N", title=None, legend=alt.Legend(orient="top"),
                        scale=alt.Scale(domain=["training batch", "held-out prompts"], range=["#6baed6", "#e6550d"])),
        tooltip=["step", alt.Tooltip("loss:Q", format=".4f"), "curve"])
    return (base.mark_line() + base.mark_point(filled=True, size=30)).properties(height=280)


def answers_frame(snap: JobSnapshot) -> pd.DataFrame | None:
    """Prompt -> the answers before and after, escaped: st.table renders its cells as Markdown, and a model's
    "1." or "**" must read as the model wrote it, not as a list or bold type."""
    before, after = snap.info.get("before"), snap.info.get("after") or {}
    if not before:
        return None
    pending = "… (after the run)" if snap.active else "—"
    return pd.DataFrame([{"prompt": md(p), "before": md(b) if b else NO_TEXT,
                          "after": md(after[p]) if after.get(p) else (pending if p not in after else NO_TEXT)}
                         for p, b in before.items()]).set_index("prompt")


def last(metrics: tuple[dict[str, Any], ...], key: str) -> float | None:
    for m in reversed(metrics):
        if m.get(key) is not None:
            return m[key]
    return None
