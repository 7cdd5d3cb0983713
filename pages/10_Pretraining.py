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


def configure() -> TrainConfig:
    """The configuration widgets, nanoGPT's baby-GPT settings as defaults."""
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
    n_layer = c[0].number_input("Layers", 1, 24, d.n_layer, key="pt_layers")
    n_head = c[1].number_input("Heads", 1, 32, d.n_head, key="pt_heads")
    n_embd = c[2].number_input("Width (n_embd)", 8, 1024, d.n_embd, step=8, key="pt_width")
    block_size = c[3].number_input("Block size", 2, 1024, d.block_size, key="pt_block")
    c = st.columns(4)
    init = c[0].selectbox("Init", INITS, index=INITS.index(d.init), key="pt_init",
                          help="normal: N(0, 0.02) · scaled: residual projections / √(2·layers) (GPT-2) · "
                               "bad: N(0, 1), to see what a bad start costs")
    dropout = c[1].number_input("Dropout", 0.0, 0.9, d.dropout, step=0.05, key="pt_dropout")
    tie = c[2].toggle("Tie embedding and head", d.tie_weights, key="pt_tie")
    bias = c[3].toggle("Biases", d.bias, key="pt_bias")

    st.markdown("**Data**")
    c = st.columns(3)
    dataset = c[0].selectbox("Text", ["tinyshakespeare", "pasted"], key="pt_data",
                             format_func={"tinyshakespeare": "Tiny Shakespeare (1.1 M chars)",
                                          "pasted": "Paste a text"}.get)
    tokenizer = c[1].selectbox("Tokenizer", ["char", "bpe"], key="pt_tok",
                               format_func={"char": "characters", "bpe": "BPE (SmolLM2's 49,152 tokens)"}.get)
    max_chars = c[2].number_input("Use the first N characters (0: all)", 0, 10_000_000, 0, step=10_000, key="pt_chars")
    text = st.text_area("Your text", key="pt_text", height=120, max_chars=2_000_000) if dataset == "pasted" else ""

    st.markdown("**Optimisation** (AdamW, linear warmup then cosine decay to min lr)")
    c = st.columns(4)
    batch_size = c[0].number_input("Batch size", 1, 512, d.batch_size, key="pt_batch")
    accum = c[1].number_input("Gradient accumulation", 1, 64, 1, key="pt_accum")
    lr = c[2].number_input("Learning rate", 0.0, 1.0, d.learning_rate, step=1e-4, format="%.5f", key="pt_lr")
    max_iters = c[3].number_input("Steps", 1, 100_000, d.max_iters, key="pt_iters")
    c = st.columns(4)
    warmup = c[0].number_input("Warmup steps", 0, 100_000, d.warmup_iters, key="pt_warmup")
    min_lr = c[1].number_input("Min lr", 0.0, 1.0, d.min_lr, step=1e-5, format="%.5f", key="pt_minlr")
    weight_decay = c[2].number_input("Weight decay", 0.0, 1.0, d.weight_decay, step=0.01, key="pt_wd")
    grad_clip = c[3].number_input("Clip grad norm (0: off)", 0.0, 100.0, d.grad_clip, step=0.5, key="pt_clip")
    c = st.columns(4)
    seed = c[0].number_input("Seed", 0, 2**31 - 1, d.seed, key="pt_seed")
    eval_interval = c[1].number_input("Evaluate + checkpoint every", 1, 10_000, d.eval_interval, key="pt_eval")
    eval_iters = c[2].number_input("Eval batches", 1, 500, d.eval_iters, key="pt_evaliters")
    sample_interval = c[3].number_input("Sample every (0: never)", 0, 10_000, d.sample_interval, key="pt_sample")
    return TrainConfig(
        n_layer=int(n_layer), n_head=int(n_head), n_embd=int(n_embd), block_size=int(block_size), dropout=float(dropout),
        bias=bool(bias), norm_position=norm_position, norm=norm, position=position, mlp=mlp, tie_weights=bool(tie),
        init=init, dataset=dataset, tokenizer=tokenizer, text=text, max_chars=int(max_chars),
        batch_size=int(batch_size), gradient_accumulation_steps=int(accum), learning_rate=float(lr),
        max_iters=int(max_iters), warmup_iters=int(warmup), lr_decay_iters=int(max_iters), min_lr=float(min_lr),
        weight_decay=float(weight_decay), grad_clip=float(grad_clip), seed=int(seed), eval_interval=int(eval_interval),
        eval_iters=int(eval_iters), sample_interval=int(sample_interval))


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
        new = c[0].number_input("New learning rate", 1e-6, 10.0, float(current or 1e-3), format="%.6f",
                                key="pt_lr_new", label_visibility="collapsed")
        if c[1].button("Set", key="pt_lr_set", width="stretch"):
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
        checked = T.check_config(config)
        if checked is not None:
            vocab, params = checked
            st.caption(f"{params:,} parameters · vocabulary {vocab:,} · "
                       + " ".join(T.config_notes(config, vocab)))
        if (warning := T.schedule_warning(config)) is not None:
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
                more = st.number_input("Train until step", 1, 100_000, max(planned, entry.step + 1),
                                       key=f"pt_resume_iters_{chosen}",
                                       help=f"The run was planned for {planned:,} steps; it is at step {entry.step:,}.")
                if entry.live:
                    st.caption("This run is training right now in a job: it can be resumed once that job has stopped.")
                if st.button("⏯ Resume from its last checkpoint", key="pt_resume", disabled=entry.live):
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
