"""Pre-training: train the lab's own small GPT live in a background job, and the training lessons."""

from __future__ import annotations

import streamlit as st

from core.train.config import TrainConfig
from core.train.lessons import LESSONS
from core.train.model import INITS, MLPS, NORM_POSITIONS, NORMS, POSITIONS
from core.train.pretrain import Trainer, train
from core.runs import list_runs, runs_root
from ui import training as T
from ui.explain import how_computed
from ui.inputs import decimal_number, whole_number
from ui.jobs import attached_job, can_control, cap_notices, class_jobs, forget_job, job_controls, live_panel, owner_id
from ui.models import model_picker

st.title("🏋️ Pre-training")
cap_notices()
lm = model_picker()  # the sidebar; the BPE option uses the embedded model's tokenizer whichever is loaded

st.markdown(
    "Train a small GPT from random weights on real text and watch it learn. Every point on the curves is one "
    "AdamW step on Tiny Shakespeare (or your text); the samples are generated from the current weights. "
    "The run is a **background job**: it keeps going when you switch pages, and its id sits in the URL so a "
    "reload or a second tab reattaches to it. A finished GPT-2 or Llama style run appears in the sidebar's "
    "model picker (as a local folder), so every inspection page can dissect it.")

PRESETS = {
    "GPT-2 style (pre-LN, LayerNorm, learned positions, GELU)": ("pre", "layernorm", "learned", "gelu"),
    "Llama style (pre-RMSNorm, RoPE, SwiGLU)": ("pre", "rmsnorm", "rope", "swiglu"),
    "Original Transformer (post-LN, learned positions, GELU)": ("post", "layernorm", "learned", "gelu"),
}

# Keyed: an unkeyed tab bar is rebuilt, back on its first tab, whenever what stands above it changes
# (a start message), which threw a student who had just started a lesson back onto "Train a model".
TABS = ("Train a model", "Training lessons")
lesson_link = T.LESSON_PARAM in st.query_params and T.TRAIN_PARAM not in st.query_params
tab_train, tab_lessons = st.tabs(TABS, key="pt_tab", on_change="rerun", default=TABS[1] if lesson_link else None)


def configure() -> TrainConfig | None:
    """The configuration widgets, nanoGPT's baby-GPT settings as defaults; None while a number box holds
    something it cannot take (the box says what to type)."""
    d = TrainConfig()
    st.markdown("**Architecture**")
    preset = st.selectbox("Preset", list(PRESETS), key="pt_preset")
    pos0, norm0, place0, mlp0 = PRESETS[preset]
    c = st.columns(4)
    norm_position = c[0].selectbox("Norm position", NORM_POSITIONS, index=NORM_POSITIONS.index(pos0), key=f"pt_np{preset}")
    norm = c[1].selectbox("Norm", NORMS, index=NORMS.index(norm0), key=f"pt_norm{preset}")
    position = c[2].selectbox("Positions", POSITIONS, index=POSITIONS.index(place0), key=f"pt_pos{preset}")
    mlp = c[3].selectbox("MLP", MLPS, index=MLPS.index(mlp0), key=f"pt_mlp{preset}")
    c = st.columns(4)
    n = dict(n_layer=whole_number("Layers", d.n_layer, 1, 24, "pt_layers", where=c[0]),
             n_head=whole_number("Heads", d.n_head, 1, 32, "pt_heads", where=c[1]),
             n_embd=whole_number("Width (n_embd)", d.n_embd, 8, 1024, "pt_width", where=c[2], step=8),
             block_size=whole_number("Block size", d.block_size, 2, 1024, "pt_block", where=c[3]))
    c = st.columns(4)
    init = c[0].selectbox("Init", INITS, index=INITS.index(d.init), key="pt_init",
                          help="normal: N(0, 0.02) · scaled: residual projections / √(2·layers) (GPT-2) · "
                               "bad: N(0, 1), to see what a bad start costs")
    n["dropout"] = decimal_number("Dropout", d.dropout, 0.0, 0.9, "pt_dropout", where=c[1], step=0.05)
    tie = c[2].toggle("Tie embedding and head", d.tie_weights, key="pt_tie")
    bias = c[3].toggle("Biases", d.bias, key="pt_bias")

    st.markdown("**Data**")
    c = st.columns(3)
    dataset = c[0].selectbox("Text", ["tinyshakespeare", "pasted"], key="pt_data",
                             format_func={"tinyshakespeare": "Tiny Shakespeare (1.1 M chars)",
                                          "pasted": "Paste a text"}.get)
    tokenizer = c[1].selectbox("Tokenizer", ["char", "bpe"], key="pt_tok",
                               format_func={"char": "characters", "bpe": "BPE (SmolLM2's 49,152 tokens)"}.get)
    n["max_chars"] = whole_number("Use the first N characters (0: all)", 0, 0, 10_000_000, "pt_chars", where=c[2],
                                  step=10_000)
    text = st.text_area("Your text", key="pt_text", height=120, max_chars=2_000_000) if dataset == "pasted" else ""

    st.markdown("**Optimisation** (AdamW, linear warmup then cosine decay to min lr)")
    c = st.columns(4)
    n["batch_size"] = whole_number("Batch size", d.batch_size, 1, 512, "pt_batch", where=c[0])
    n["gradient_accumulation_steps"] = whole_number("Gradient accumulation", 1, 1, 64, "pt_accum", where=c[1])
    n["learning_rate"] = decimal_number("Learning rate", d.learning_rate, 0.0, 1.0, "pt_lr", where=c[2], step=1e-4)
    n["max_iters"] = whole_number("Steps", d.max_iters, 1, 100_000, "pt_iters", where=c[3])
    c = st.columns(4)
    n["warmup_iters"] = whole_number("Warmup steps", d.warmup_iters, 0, 100_000, "pt_warmup", where=c[0])
    n["min_lr"] = decimal_number("Min lr", d.min_lr, 0.0, 1.0, "pt_minlr", where=c[1], step=1e-5)
    n["weight_decay"] = decimal_number("Weight decay", d.weight_decay, 0.0, 1.0, "pt_wd", where=c[2], step=0.01)
    n["grad_clip"] = decimal_number("Clip grad norm (0: off)", d.grad_clip, 0.0, 100.0, "pt_clip", where=c[3],
                                    step=0.5)
    c = st.columns(4)
    n["seed"] = whole_number("Seed", d.seed, 0, 2**31 - 1, "pt_seed", where=c[0])
    n["eval_interval"] = whole_number("Evaluate + checkpoint every", d.eval_interval, 1, 10_000, "pt_eval", where=c[1])
    n["eval_iters"] = whole_number("Eval batches", d.eval_iters, 1, 500, "pt_evaliters", where=c[2])
    n["sample_interval"] = whole_number("Sample every (0: never)", d.sample_interval, 0, 10_000, "pt_sample",
                                        where=c[3])
    if None in n.values():
        return None
    return TrainConfig(**n, lr_decay_iters=n["max_iters"], bias=bool(bias), norm_position=norm_position, norm=norm,
                       position=position, mlp=mlp, tie_weights=bool(tie), init=init, dataset=dataset,
                       tokenizer=tokenizer, text=text)


def lr_controls(job) -> None:
    """Change the learning rate of the running job from its next step (its owner only)."""
    snap = job.snapshot()
    if snap.status not in ("running", "paused") or not can_control(job):
        return
    with st.expander("Change the learning rate while it runs", expanded=False):
        current = snap.controls.get("lr")
        st.caption("Takes effect at the next step. " + (f"Now fixed at **{current:.2e}** (schedule overridden)."
                                                        if current is not None else "Now following the schedule."))
        c = st.columns([2, 1, 1])
        new = decimal_number("New learning rate", float(current or 1e-3), 1e-6, 10.0, "pt_lr_new", where=c[0],
                             label_visibility="collapsed")
        if c[1].button("Set", key="pt_lr_set", width="stretch", disabled=new is None):
            job.set_control("lr", float(new), by=owner_id())
            st.rerun()
        if c[2].button("Back to schedule", key="pt_lr_sched", width="stretch", disabled=current is None):
            job.set_control("lr", None, by=owner_id())
            st.rerun()


with tab_train:
    job = attached_job(T.TRAIN_PARAM)
    if job is None:
        config = configure()
        name = st.text_input("Run name", "shakespeare-char", key="pt_name",
                             help="Letters, digits, '-', '_', '.'; the run's folder under the runs folder")
        checked = T.check_config(config) if config is not None else None
        if config is None:
            st.caption("A number box above holds something it cannot take: its message says what to type.")
        if checked is not None:
            vocab, params = checked
            st.caption(f"{params:,} parameters · vocabulary {vocab:,} · "
                       + " ".join(T.config_notes(config, vocab)))
        if config is not None and (warning := T.schedule_warning(config)) is not None:
            st.warning(warning)
        if st.button("▶ Start training", type="primary", disabled=checked is None, key="pt_start"):
            if T.start_pretraining(config, name) is not None:
                st.rerun()
        runs = [r for r in list_runs() if r.kind == "pretrain" and (r.path / "checkpoints").is_dir()
                and (r.path / "config.json").is_file()]
        if runs:
            with st.expander(f"Resume a saved run ({len(runs)} in `{runs_root()}`)",
                             expanded=any(r.status == "interrupted" for r in runs)):
                by_name = {r.name: r for r in runs}
                chosen = st.selectbox("Run", list(by_name), key="pt_resume_run",
                                      format_func=lambda n: f"{n} (step {by_name[n].step:,}, {by_name[n].status})")
                entry = by_name[chosen]
                planned = T.planned_steps(entry.path)
                more = whole_number("Train until step", max(planned, entry.step + 1), 1, 100_000,
                                    f"pt_resume_iters_{chosen}",
                                    help=f"The run was planned for {planned:,} steps; it is at step {entry.step:,}.")
                if entry.live:
                    st.caption("This run is training right now in a job: it can be resumed once that job has stopped.")
                if st.button("⏯ Resume from its last checkpoint", key="pt_resume",
                             disabled=entry.live or more is None):
                    if T.start_pretraining(TrainConfig(max_iters=int(more)), chosen, resume=True) is not None:
                        st.rerun()
        class_jobs(T.TRAIN_PARAM, "pretrain")
    else:
        job_controls(job, "pt")
        lr_controls(job)
        live_panel(job, T.draw_training)
        if not job.snapshot().active and st.button("New run", key="pt_new"):
            forget_job(T.TRAIN_PARAM)
            st.rerun()

with tab_lessons:
    st.markdown(
        "Each lesson trains **two** small models that differ in one setting, on the same batches, and draws "
        "both curves on one chart. They run as **one job** that alternates a step of each model, so a lesson "
        "uses one job slot (one job per user at a time). Solid lines: training loss per step; dashed with "
        "points: validation loss.")
    key = st.selectbox("Lesson", list(LESSONS), format_func=lambda k: LESSONS[k].title, key="pt_lesson")
    lesson = LESSONS[key]
    a, b = lesson.configs
    st.markdown(f"**What to look for.** {lesson.look_for}")
    st.caption(f"{a.n_layer} layers × width {a.n_embd}, block {a.block_size}, batch {a.batch_size}, "
               f"{a.max_iters} steps each, lr {a.learning_rate:g}" + (f", first {a.max_chars:,} characters only"
                                                                       if a.max_chars else "")
               + f" · {lesson.labels[0]} vs {lesson.labels[1]}")
    ljob = attached_job(T.LESSON_PARAM)
    if ljob is not None and not ljob.title.endswith(lesson.title):
        st.caption(f"Attached: {ljob.title}")
    if ljob is None:
        if st.button("▶ Run this lesson", type="primary", key="pt_lesson_start"):
            if T.start_lesson(key) is not None:
                st.rerun()
    else:
        job_controls(ljob, "ls")
        live_panel(ljob, T.draw_lesson)
        if not ljob.snapshot().active and st.button("Another lesson", key="pt_lesson_new"):
            forget_job(T.LESSON_PARAM)
            st.rerun()

how_computed(train, Trainer.train_step, Trainer.evaluate,
             command="python -m core train --config data/train_configs/shakespeare_char.json --out runs/shakespeare-char"
                     "\n# data-parallel on 2 processes (CPU: gloo; GPUs: NCCL, or `accelerate launch -m core train ...`)"
                     "\ntorchrun --nproc_per_node 2 -m core train --config data/train_configs/shakespeare_char.json "
                     "--out runs/ddp",
             note="The model is `core/train/model.py`, a nanoGPT-sized decoder-only transformer. Each step draws "
                  "`batch_size` random windows of `block_size` tokens, computes the mean next-token cross-entropy, "
                  "backpropagates, clips the gradient norm and takes an AdamW step at the scheduled learning rate. "
                  "Validation loss is the mean over `eval_iters` batches of the held-out last 10% of the text.")
