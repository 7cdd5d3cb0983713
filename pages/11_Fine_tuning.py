"""Fine-tuning: supervised fine-tuning of the loaded model on a small instruction set, as a background job."""

from __future__ import annotations

import streamlit as st

from core.models.capture import token_display
from core.train import finetune as core_ft
from core.train import finetune_data as fd
from core.train import finetune_store as store
from core.units import format_count, format_duration
from ui import finetune as ui_ft
from ui.explain import how_computed
from ui.inputs import checked_text, decimal_number, whole_number
from ui.jobs import attached_job, can_control, cap_notices, forget_job, job_controls, live_panel, owner_id
from ui.models import model_picker

MODE_LABELS = {"lora": "LoRA (low-rank adapters)", "full": "Full fine-tuning",
               "freeze": "Freeze the lower layers"}
DEFAULT_LR = {"lora": 1e-3, "full": 5e-5, "freeze": 1e-4}

st.title("🎯 Fine-tuning")
cap_notices()
lm = model_picker()
n_layers = core_ft.num_layers(lm.config)


def explain(cfg: core_ft.FinetuneConfig | None = None) -> None:
    cfg = cfg or core_ft.FinetuneConfig()
    args = {"lora": f"--r {cfg.lora_r} --alpha {cfg.lora_alpha:g} --dropout {cfg.lora_dropout:g} "
                    f"--targets {cfg.lora_targets}",
            "freeze": f"--freeze-layers {cfg.freeze_layers}"
                      + ("" if cfg.freeze_embeddings else " --train-embeddings"),
            "full": ""}[cfg.mode]
    command = (f"python -m core finetune {lm.spec.cli()} --mode {cfg.mode} --steps {cfg.steps} "
               f"--lr {cfg.learning_rate:g} --batch-size {cfg.batch_size} {args} --out RUN_DIR")
    how_computed(fd.encode_example, core_ft.configure, core_ft.trainable_parameters, core_ft.train_step,
                 core_ft.finetune, command=command.replace("  ", " "),
                 note="Every loss point is one AdamW step on the model's own copy, computed on a batch of the "
                      "shipped instruction set (`data/instructions.jsonl`); the held-out loss and the answers "
                      "use prompts the run never trains on. LoRA goes through PEFT (`get_peft_model`); the "
                      "trainable count is PEFT's `get_nb_trainable_parameters()`.")


st.markdown(
    "Pre-training teaches a model language; **supervised fine-tuning** (SFT) teaches it a behaviour from "
    "prompt/response pairs. Each pair is written in the model's own chat template and the loss is counted "
    "**on the response tokens only**: the model is not asked to predict the question. Every response in "
    "this lab's small instruction set ends with the sign-off **“Over and out.”**, so you can watch the "
    "fine-tune take hold on questions it never saw. The run works on a private copy: the model every other "
    "page (and every other user) sees does not change.")

try:
    examples = ui_ft.instructions()
    train_set, heldout = fd.split_examples(examples)
except ValueError as exc:
    st.error(f"The instruction set cannot be used: {exc}")
    st.stop()
with st.expander(f"The instruction set: {len(train_set)} training pairs, {len(heldout)} held out"):
    st.dataframe(ui_ft.examples_frame(examples), width="stretch", hide_index=True)
    shown, labels = ui_ft.example_tokens(lm, train_set[0])
    st.markdown("How the first pair reaches the model (**bold** = tokens with a loss, the rest has label −100):")
    st.markdown(" ".join(f"**`{token_display(t)}`**" if label != fd.IGNORE else f"`{token_display(t)}`"
                         for t, label in zip(shown, labels)))
    if not fd.has_chat_template(lm.tokenizer):
        st.caption("This tokenizer has no chat template: the plain format `User: … / Assistant: …` is used.")

job = attached_job(ui_ft.JOB_PARAM)

# ---------------------------------------------------------------- settings (only while no run is attached)
if job is None:
    st.subheader("1 · Choose what trains")
    mode = st.radio("Mode", list(MODE_LABELS), format_func=MODE_LABELS.get, horizontal=True, key="ft_mode")
    c = st.columns(4)
    lr = decimal_number("Learning rate", DEFAULT_LR[mode], 0.0, 1.0, f"ft_lr_{mode}", where=c[0], step=1e-5,
                        help="AdamW's step size; you can change it while the run goes.")
    steps = whole_number("Steps", 30, 1, 2000, "ft_steps", where=c[1])
    batch = whole_number("Batch size", 4, 1, 64, "ft_batch", where=c[2])
    checkpoint_every = whole_number("Checkpoint every", 10, 1, 1000, "ft_ckpt", where=c[3],
                                    help="steps between checkpoints (one is also written at stop)")
    extra: dict = {}
    if mode == "lora":
        c = st.columns(4)
        extra["lora_r"] = whole_number("Rank r", 8, 0, 256, "ft_r", where=c[0])
        extra["lora_alpha"] = decimal_number("alpha", 16.0, 0.0, 1024.0, "ft_alpha", where=c[1], step=1.0,
                                             help="The update B·A is scaled by alpha / r.")
        extra["lora_dropout"] = decimal_number("Dropout", 0.05, 0.0, 0.9, "ft_dropout", where=c[2], step=0.05)
        targets = list(core_ft.LORA_TARGETS)
        extra["lora_targets"] = c[3].selectbox("Target modules", targets, key=f"ft_targets_{lm.spec.key}",
                                               index=targets.index(ui_ft.default_targets(lm)),
                                               help="\n".join(f"- **{k}**: {v}"
                                                               for k, v in core_ft.LORA_TARGETS.items()))
        st.caption("LoRA keeps every weight W fixed and learns a low-rank update beside chosen matrices: "
                   "h = W·x + (alpha / r)·B·A·x with A of shape [r, d_in] and B of shape [d_out, r]. B starts "
                   "at zero, so step 0 is exactly the original model.")
    elif mode == "freeze":
        c = st.columns([1, 2])
        extra["freeze_layers"] = whole_number(f"Frozen blocks (of {n_layers})", n_layers // 2, 0, 1000, "ft_freeze",
                                              where=c[0])
        extra["freeze_embeddings"] = c[1].checkbox("Freeze the embeddings too", value=True, key="ft_freeze_emb",
                                                   help="With tied embeddings the output head is the same "
                                                        "matrix, so it stays fixed as well.")
        st.caption("The lower blocks hold general features; training only the upper ones is cheaper and "
                   "changes less of what the model knew.")
    if None in (lr, steps, batch, checkpoint_every, *extra.values()):
        explain()  # the box says what to type; nothing is counted or started with a number that is not one
        st.stop()
    cfg = core_ft.FinetuneConfig(mode=mode, learning_rate=float(lr), steps=steps, batch_size=batch,
                                 checkpoint_every=checkpoint_every, **extra)
    counts = ui_ft.trainable_preview(lm, cfg)
    if counts is None:
        explain()
        st.stop()
    m = st.columns(3)
    m[0].metric("Trainable parameters", format_count(counts["trainable"]), help=f"{counts['trainable']:,}")
    m[1].metric("All parameters", format_count(counts["total"]),
                help=f"{counts['total']:,}. LoRA adds its A and B matrices to the model's own parameters.")
    m[2].metric("Share that trains", f"{counts['share']:.3%}")
    if mode == "lora":
        where = counts["target_modules"]
        where = where if isinstance(where, str) else ", ".join(sorted(where))
        st.caption(f"Adapters on {where} in each of the {n_layers} blocks. PEFT's own count: "
                   f"{counts['peft_count'][0]:,} trainable of {counts['peft_count'][1]:,}.")
    if lm.spec.quantization != "none":
        st.warning("This model is loaded 8-bit/4-bit: fine-tuning here needs full weights. Load it with "
                   "quantization `none` in the sidebar.")
        explain(cfg)
        st.stop()

    st.subheader("2 · Start")
    runs = ui_ft.resumable_runs(lm.spec.source)
    c = st.columns([2, 2])
    resume_from = c[1].selectbox("…or resume a saved run", ["(new run)"] + [r["name"] for r in runs],
                                 key="ft_resume", help="Runs of this model with a checkpoint; the run continues "
                                                       "from its last checkpoint with its own settings.")
    resume = resume_from != "(new run)"
    name_key = f"ft_name_{mode}_{lm.spec.key}"  # a fixed default per model and mode, so typing is not reset
    st.session_state.setdefault(name_key, store.default_run_name(lm.spec.source, mode))
    run_name = c[0].text_input("Run name", key=name_key,
                               disabled=resume, help="A folder under the runs folder; letters, digits, - _ .")
    prompt = st.text_input("Your own prompt, answered before and after (optional)", key="ft_prompt")
    prompt_fits = checked_text(lm, prompt, ui_ft.OWN_PROMPT_TOKENS, ui_ft.WHY_OWN_PROMPT, "prompt") \
        if prompt.strip() else True
    if resume:
        chosen = next(r for r in runs if r["name"] == resume_from)
        stored = core_ft.FinetuneConfig(**{k: v for k, v in chosen["config"].items()
                                           if k in core_ft.FinetuneConfig.__dataclass_fields__})
        more = whole_number("Total steps after resuming", max(chosen["step"], stored.steps), chosen["step"],
                            chosen["step"] + 2000, "ft_resume_steps")
        if more is None:
            st.stop()
        cfg, run_name = core_ft.FinetuneConfig(**{**stored.__dict__, "steps": more}), resume_from
        st.caption(f"{chosen['name']}: {chosen['mode']} at step {chosen['step']} of {chosen['steps']}.")
    if st.button("▶ Start fine-tuning" if not resume else "▶ Resume", type="primary", key="ft_start",
                 disabled=not prompt_fits):
        job = ui_ft.start(lm, cfg, run_name, (prompt,) if prompt.strip() else (), resume)
        if job is not None:
            st.rerun()  # the settings give way to the run
    if job is None:
        explain(cfg)
        st.stop()

# ---------------------------------------------------------------- the run
st.subheader("3 · The run")
job_controls(job, "ft")
snap = job.snapshot()
if snap.status in ("running", "paused") and can_control(job):  # the owner's, and only once it runs
    c = st.columns([1, 1, 2])
    new_lr = decimal_number("Learning rate now", float(snap.controls.get("lr") or 1e-3), 1e-8, 1.0, "ft_live_lr",
                            where=c[0], step=1e-5)
    if c[1].button("Apply", key="ft_apply_lr", disabled=new_lr is None):
        job.set_control("lr", new_lr, by=owner_id())
        st.toast(f"Learning rate {new_lr:g} from the next step")


def draw(s) -> None:
    rows = s.metrics
    m = st.columns(5)
    loss, val = ui_ft.last(rows, "loss"), ui_ft.last(rows, "val_loss")
    first_loss = next((r["loss"] for r in rows if r.get("loss") is not None), None)
    m[0].metric("Step", f"{s.step:,} / {s.total_steps:,}")
    m[1].metric("Training loss", f"{loss:.3f}" if loss is not None else "–",
                delta=f"{loss - first_loss:+.3f}" if loss is not None and first_loss is not None else None,
                delta_color="inverse")
    m[2].metric("Held-out loss", f"{val:.3f}" if val is not None else "–")
    pace = ui_ft.last(rows, "s_per_step")
    m[3].metric("Time per step", format_duration(pace) if pace is not None else "–")
    if s.info.get("trainable"):
        m[4].metric("Trainable", format_count(s.info["trainable"]),  # "134,515,008" is cut in a fifth column
                    help=f"{s.info['trainable']:,} of {s.info['total']:,} parameters "
                         f"({s.info['trainable'] / s.info['total']:.3%})")
    if s.active and s.info.get("phase"):
        st.caption(f"Now: {s.info['phase']}.")
    chart = ui_ft.loss_chart(rows, s.total_steps)
    if chart is not None:
        st.altair_chart(chart, width="stretch")
    table = ui_ft.answers_frame(s)
    if table is not None:
        st.markdown("**The same prompts, greedy answers before and after** (held-out: never trained on)")
        st.table(table)
    if s.info.get("checkpoint_step") is not None:
        st.caption(f"Last checkpoint: step {s.info['checkpoint_step']} in `{s.info.get('checkpoint')}`.")


live_panel(job, draw)
snap = job.snapshot()
if not snap.active:
    if snap.result is not None and snap.result.model_dir:
        st.success(f"The fine-tuned model is saved in `{snap.result.model_dir}`"
                   + (f" (LoRA adapter: `{snap.result.adapter_dir}`)" if snap.result.adapter_dir else "")
                   + ". It is listed in the sidebar's model picker: open it on any page to dissect it.")
    if st.button("Start another run", key="ft_again"):
        forget_job(ui_ft.JOB_PARAM)
        for key in [k for k in st.session_state if str(k).startswith("ft_name_")]:
            del st.session_state[key]  # a fresh default name for the next run
        st.rerun()
explain(core_ft.FinetuneConfig(**snap.info["config"]) if snap.info.get("config") else None)
