"""The RLHF page's steps: each a function that draws what goes in, what comes out, the loss and its mini-run.

Runs are jobs (core.jobs) on private copies of the model; their ids sit in the URL (?rm=, ?dpo=, ?grpo=).
Short computations (the SFT loss, a greedy answer, one PPO update) go through the cached wrappers below.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import altair as alt
import pandas as pd
import streamlit as st

from core.align import memory as align_memory
from core.align import common, dpo, grpo, ppo, reward, rewards
from core.jobs import REGISTRY, Job, JobError, JobLimitError, JobSnapshot
from core.models.capture import token_display
from core.models.loading import LoadedModel
from core.units import format_duration
from ui.inputs import checked_text, decimal_number, too_long, whole_number
from ui.jobs import attached_job, job_controls, live_panel, start_job
from ui.text import md

SFT_PROMPT = "How do I make a cup of tea?"
SCORE_CAP = 512  # tokens per box of "Score your own answers": one forward pass of the reward model
WORD_CHARS = 40  # the "contains" reward's word: a substring test, any longer is not a word


def tokenizer_copy(lm: LoadedModel) -> Any:
    """A private tokenizer (fast tokenizers are not thread-safe), copied under the model's lock."""
    with lm.tokenizer_lock:
        return common.private_tokenizer(lm.tokenizer)


def with_tokenizer(lm: LoadedModel, run: Callable[[Any, Job], Any]) -> Callable[[Job], Any]:
    """A job's work with its own tokenizer copy, taken now (at the start), not on every render."""
    tok = tokenizer_copy(lm)
    return lambda job: run(tok, job)


# ---------------------------------------------------------------- cached wrappers around core


@st.cache_data(show_spinner="Scoring the answers…", max_entries=32)
def sft_losses(key: str, prompt: str, answers: tuple[str, ...], _lm: LoadedModel) -> list[tuple[float, list[float], list[str]]]:
    tok = tokenizer_copy(_lm)
    return [common.sft_loss(_lm.model, tok, prompt, a) for a in answers]


@st.cache_data(show_spinner="The model answers…", max_entries=32)
def answers(key: str, prompts: tuple[str, ...], max_new_tokens: int, _lm: LoadedModel) -> list[str]:
    return common.greedy_answers(_lm.model, tokenizer_copy(_lm), list(prompts), max_new_tokens)


@st.cache_data(show_spinner="Sampling a completion and taking one SGD step…", max_entries=16)
def ppo_update(key: str, prompt: str, reward_kind: str, word: str, target: int, baseline: float, epsilon: float,
               beta: float, lr: float, seed: int, _lm: LoadedModel) -> ppo.PPOExample:
    fn = rewards.make_reward(reward_kind, word, target)
    return ppo.ppo_example(_lm.model, tokenizer_copy(_lm), prompt, fn, baseline=baseline, epsilon=epsilon,
                           beta=beta, lr=lr, seed=seed)


# ---------------------------------------------------------------- small drawing helpers


def curves(rows: tuple[dict, ...] | list[dict], names: dict[str, str], title: str, height: int = 200) -> None:
    """Line chart of some metric columns against the step."""
    df = pd.DataFrame(list(rows))
    cols = [c for c in names if c in df]
    if df.empty or not cols:
        st.caption(f"{title}: waiting for the first step…")
        return
    long = df.melt(id_vars="step", value_vars=cols, var_name="series", value_name="value").dropna()
    long["series"] = long["series"].map(names)
    chart = alt.Chart(long, title=title).mark_line(point=True).encode(
        x=alt.X("step:Q", title="step"), y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
        color=alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom")),
        tooltip=["step", "series", alt.Tooltip("value:Q", format=".4f")]).properties(height=height)
    st.altair_chart(chart, width="stretch")


def in_out(goes_in: str, comes_out: str) -> None:
    c1, c2 = st.columns(2)
    c1.markdown(f"**What goes in**  \n{goes_in}")
    c2.markdown(f"**What comes out**  \n{comes_out}")


def run_block(param: str, kind: str, title: str, total: int, make_work: Callable[[], Callable[[Job], Any]],
              draw: Callable[[JobSnapshot], None], validate: Callable[[], Any], lm: LoadedModel) -> Job | None:
    """Start button (validated first, nothing starts on a bad setting), then controls and the live panel."""
    job = attached_job(param)
    if job is None or not job.snapshot().active:
        slot = st.empty()  # cleared once the job starts: no second Start while it runs
        if slot.button(f"▶ Start {title}", key=f"rlhf_start_{param}", type="primary"):
            try:
                validate()
            except JobError as exc:
                st.warning(str(exc))
            else:
                peak = align_memory.peak_bytes(kind, lm.n_parameters, lm.config)  # admitted against the budget
                job = start_job(param, kind, make_work(), title=title, total_steps=total, peak_bytes=peak) or job
                if job is not None and job.snapshot().active:
                    slot.empty()
    if job is not None:
        job_controls(job, key=f"rlhf_{param}")
        live_panel(job, draw)
    return job


def before_after(prompts: list[str], before: list[str], after: list[str], extra: dict[str, list] | None = None) -> None:
    st.markdown("**Before / after**: greedy answers of the starting model and of the trained copy, same prompts.")
    table = {"prompt": prompts, "before": before, "after": after, **(extra or {})}
    st.dataframe(pd.DataFrame(table), width="stretch", hide_index=True)


# ---------------------------------------------------------------- 1. supervised fine-tuning


def sft_step(lm: LoadedModel) -> None:
    in_out("Prompts with demonstration answers written by people (instruction data).",
           "A model that answers in the demonstrated style: the *SFT model*, start and reference of the next steps.")
    st.latex(r"\mathcal{L}_\text{SFT} = -\frac{1}{T}\sum_{t=1}^{T} \log \pi_\theta(y_t \mid x, y_{<t})")
    st.markdown("Plain next-token cross-entropy, counted on the answer tokens only. The embedded "
                "SmolLM2-135M-**Instruct** has already been through this step; the **Fine-tuning** page runs it "
                "live. Here: the loss SFT would minimise, on two answers to one prompt, measured on the loaded model.")
    pairs = common.preference_pairs()
    prompts = [p.prompt for p in pairs]
    prompt = st.selectbox("Prompt", prompts, index=prompts.index(SFT_PROMPT) if SFT_PROMPT in prompts else 0,
                          key="rlhf_sft_prompt")
    pair = pairs[prompts.index(prompt)]
    (l_c, nll_c, tok_c), (l_r, nll_r, tok_r) = sft_losses(lm.spec.key, prompt, (pair.chosen, pair.rejected), lm)
    c1, c2 = st.columns(2)
    c1.metric("SFT loss on the polite answer", f"{l_c:.3f} nats/token", help=pair.chosen)
    c2.metric("SFT loss on the rude answer", f"{l_r:.3f} nats/token", help=pair.rejected)
    st.caption(f"Polite: {pair.chosen}  \nRude: {pair.rejected}")
    top = max(nll_c + nll_r, default=1.0)  # one y scale for both answers, so their bars compare
    for name, toks, nll, colour in (("polite", tok_c, nll_c, "#1c7ed6"), ("rude", tok_r, nll_r, "#e8590c")):
        st.altair_chart(token_loss_chart(name, toks, nll, colour, top), width="stretch")
    own = answers(lm.spec.key, (prompt,), 40, lm)[0]
    st.markdown(f"**The model's own answer** (greedy): {md(own) if own else '(empty)'}")
    st.caption("SFT teaches imitation, not preference: it never sees a *bad* answer. The next steps use "
               "comparisons between answers.")


def token_loss_chart(name: str, tokens: list[str], nll: list[float], colour: str, top: float) -> alt.Chart:
    """One answer's per-token loss, each bar labelled by its own token (the two answers differ token by token)."""
    df = pd.DataFrame({"token": [f"{i}·{token_display(t)}" for i, t in enumerate(tokens)], "nll": nll})
    return alt.Chart(df, title=f"Per-token loss −log π(yₜ | x, y<ₜ), {name} answer").mark_bar(color=colour).encode(
        x=alt.X("token:N", sort=None, title=None, axis=alt.Axis(labelAngle=-45, labelLimit=120)),
        y=alt.Y("nll:Q", title="−log p (nats)", scale=alt.Scale(domain=[0, top])),
        tooltip=["token", alt.Tooltip("nll:Q", format=".3f", title="−log p")]).properties(height=220)


# ---------------------------------------------------------------- 2. reward model


def reward_step(lm: LoadedModel) -> None:
    in_out("Preference pairs: a prompt, a *chosen* and a *rejected* answer (here 42 for training, 8 held out, "
           "`data/preferences.jsonl`: polite and concise vs rude).",
           "A reward model r(x, y): the language model's backbone with a linear head on the last token's hidden "
           "state, one number per answer.")
    st.latex(r"\mathcal{L}_\text{BT} = -\log \sigma\big(r(x, y_w) - r(x, y_l)\big)"
             r"\qquad P(y_w \succ y_l) = \sigma(r_w - r_l)")
    with st.expander("The preference pairs"):
        st.dataframe(pd.DataFrame([p.__dict__ for p in common.preference_pairs()]), width="stretch", hide_index=True)
    c1, c2, c3 = st.columns(3)
    steps = whole_number("Steps", 40, 1, 2000, "rlhf_rm_steps", where=c1)
    lr = c2.select_slider("Learning rate", [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], 1e-3, key="rlhf_rm_lr")
    layers = whole_number("Blocks trained too", 0, 0, 4, "rlhf_rm_layers", where=c3,
                          help="0: the backbone is frozen and only the head learns (fast)")
    if steps is None or layers is None:
        return  # the box says what to type
    cfg = reward.RewardConfig(steps=int(steps), lr=float(lr), train_layers=int(layers))

    def draw(snap: JobSnapshot) -> None:
        a, b = st.columns(2)
        with a:
            curves(snap.metrics, {"loss": "Bradley-Terry loss"}, "Loss")
        with b:
            curves(snap.metrics, {"train_accuracy": "training batch", "test_accuracy": "held-out pairs"}, "Accuracy")

    job = run_block("rm", "reward", f"reward model ({lm.name})", cfg.steps,
                    lambda: with_tokenizer(lm, lambda tok, job: reward.train_reward_model(lm.model, tok, cfg, job)), draw,
                    lambda: reward.validate(cfg), lm)
    snap = job.snapshot() if job else None
    if snap is None or snap.status != "finished":
        return
    res: reward.RewardResult = snap.result
    m = st.columns(3)
    m[0].metric("Held-out accuracy", f"{res.test_accuracy_after:.0%}",
                f"{res.test_accuracy_after - res.test_accuracy_before:+.0%} from {res.test_accuracy_before:.0%}")
    m[1].metric("Final loss", f"{res.rows[-1]['loss']:.3f}", f"{res.rows[-1]['loss'] - res.rows[0]['loss']:+.3f}",
                delta_color="inverse")  # a falling loss is the good direction: green
    m[2].metric("Time per step", format_duration(res.seconds_per_step))
    st.dataframe(pd.DataFrame(res.test_pairs), width="stretch", hide_index=True,
                 column_config={"r_chosen": st.column_config.NumberColumn(format="%.3f"),
                                "r_rejected": st.column_config.NumberColumn(format="%.3f")})
    st.markdown("**Score your own answers**")
    with st.form("rlhf_score"):
        prompt = st.text_input("Prompt", "Can you help me with my homework?")
        a1 = st.text_area("Answer A", "Of course! Tell me which exercise, and we will go through it together.", height=68)
        a2 = st.text_area("Answer B", "Do it yourself. I am not your teacher.", height=68)
        scored = st.form_submit_button("Score both")
    if scored:
        why = "the reward model reads each box in one forward pass"
        if not prompt.strip() or not a1.strip() or not a2.strip():
            st.info("Type a prompt and two answers.")
        elif all([checked_text(lm, prompt, SCORE_CAP, why, "prompt", caption=False),
                  checked_text(lm, a1, SCORE_CAP, why, "answer A", caption=False),
                  checked_text(lm, a2, SCORE_CAP, why, "answer B", caption=False)]):
            r1, r2 = reward.score_answers(lm.model, tokenizer_copy(lm), res, prompt, [a1, a2])
            c = st.columns(3)
            c[0].metric("r(x, A)", f"{r1:.3f}")
            c[1].metric("r(x, B)", f"{r2:.3f}")
            c[2].metric("P(A ≻ B) = σ(r_A − r_B)", f"{1 / (1 + math.exp(-(r1 - r2))):.1%}")


# ---------------------------------------------------------------- 3. PPO


def ppo_step(lm: LoadedModel) -> None:
    in_out("The SFT model (policy π and frozen reference π_ref), prompts, and the reward model of step 2.",
           "A policy that earns more reward while its KL penalty keeps it near π_ref.")
    st.latex(r"J(\theta) = \frac{1}{T}\sum_t \min\big(\rho_t A,\ \operatorname{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\,A\big)"
             r" - \beta\,\frac{1}{T}\sum_t \mathrm{KL}_t(\pi_\theta \,\|\, \pi_\text{ref}),\qquad"
             r"\rho_t = \frac{\pi_\theta(y_t \mid x, y_{<t})}{\pi_\text{old}(y_t \mid x, y_{<t})}")
    st.markdown("Full PPO also trains a value model V (the critic) and generates thousands of rollouts; here **one "
                "update on one real rollout**, term by term: the model samples an answer, a programmatic reward "
                "scores it, A = R − V with V a baseline you set, one SGD step on A·log π(y) gives π_θ, and every "
                "token's ratio, clip and KL are read from the two models.")
    c1, c2, c3 = st.columns(3)
    prompt = c1.text_input("Prompt", "Can you recommend a good book?", key="rlhf_ppo_prompt")
    kind = c2.selectbox("Reward", rewards.REWARD_KINDS, key="rlhf_ppo_reward",
                        format_func=lambda k: k.replace("_", " "))
    baseline = decimal_number("Baseline V", 0.5, -5.0, 5.0, "rlhf_ppo_baseline", where=c3, step=0.1)
    c4, c5, c6, c7 = st.columns(4)
    eps = c4.select_slider("ε (clip)", [0.05, 0.1, 0.2, 0.3, 0.5], 0.2, key="rlhf_ppo_eps")
    beta = c5.select_slider("β (KL)", [0.0, 0.01, 0.05, 0.1, 0.5], 0.05, key="rlhf_ppo_beta")
    lr = c6.select_slider("SGD step size", [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], 1e-3, key="rlhf_ppo_lr")
    seed = whole_number("Seed", 0, 0, 10_000, "rlhf_ppo_seed", where=c7)
    word = st.text_input("Word", "thank", key="rlhf_ppo_word") if kind == "contains" else "thank"
    long_word = too_long(word, WORD_CHARS, "Word")
    target = whole_number("Target words", 5, 1, 200, "rlhf_ppo_target") if kind == "length" else 5
    fits = checked_text(lm, prompt, ppo.MAX_PROMPT_TOKENS, ppo.WHY_CAP, "prompt")
    if st.button("▶ Sample a rollout and take one PPO step", key="rlhf_ppo_go", type="primary",
                 disabled=not fits or long_word or seed is None or target is None or baseline is None):
        try:  # a PPO step copies the model three times: admitted against the server's memory like a job
            with REGISTRY.heavy(align_memory.peak_bytes("ppo", lm.n_parameters, lm.config, ppo.MAX_PROMPT_TOKENS),
                                "the PPO step"):
                st.session_state["rlhf_ppo_result"] = ppo_update(lm.spec.key, prompt, kind, word, target,
                                                                 float(baseline), float(eps), float(beta), float(lr),
                                                                 int(seed), lm)
        except (ValueError, JobError, JobLimitError) as exc:
            st.warning(str(exc))
    ex: ppo.PPOExample | None = st.session_state.get("rlhf_ppo_result")
    if ex is None:
        st.info("Press the button: the numbers below come from the loaded model (a few seconds on a CPU).")
        return
    st.markdown(f"**Rollout** for “{md(ex.prompt)}”: {md(repr(ex.completion))}")
    m = st.columns(5)
    m[0].metric("Reward R", f"{ex.reward:.3f}")
    m[1].metric("Advantage A = R − V", f"{ex.advantage:+.3f}")
    m[2].metric("Clipped surrogate", f"{ex.clip_objective:+.4f}", help="mean over tokens of min(ρA, clip(ρ)A)")
    m[3].metric("KL to π_ref", f"{ex.kl:.5f}")
    m[4].metric("J = surrogate − β·KL", f"{ex.objective:+.4f}")
    df = pd.DataFrame([t.__dict__ for t in ex.tokens])
    st.dataframe(df, width="stretch", hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.4f") for c in df.columns if c != "token"})
    df["position"] = range(len(df))
    band = alt.Chart(pd.DataFrame({"lo": [1 - ex.epsilon], "hi": [1 + ex.epsilon]})).mark_rect(opacity=0.15).encode(
        y="lo:Q", y2="hi:Q")
    points = alt.Chart(df).mark_circle(size=70).encode(
        x=alt.X("position:O", title="completion token"), y=alt.Y("ratio:Q", title="ρₜ", scale=alt.Scale(zero=False)),
        color=alt.condition("datum.term != datum.surrogate", alt.value("#d62728"), alt.value("#1f77b4")),
        tooltip=["token", alt.Tooltip("ratio:Q", format=".4f"), alt.Tooltip("term:Q", format=".4f")])
    st.altair_chart((band + points).properties(height=220, title="Ratios and the clip band [1−ε, 1+ε]"),
                    width="stretch")
    st.caption(f"{ex.clipped_tokens} of {len(ex.tokens)} tokens clipped (red): for them min(ρA, clip(ρ)A) is the "
               "clipped term, so moving further would not raise J: PPO's brake on one update. With A > 0 the ratio "
               "is capped above at 1+ε, with A < 0 below at 1−ε.")


# ---------------------------------------------------------------- DPO


def dpo_step(lm: LoadedModel) -> None:
    in_out("The SFT model (trained copy π and frozen reference π_ref) and the preference pairs. No reward model, "
           "no sampling.",
           "A policy whose implicit reward β·log π/π_ref ranks the chosen answers above the rejected ones.")
    st.latex(r"\mathcal{L}_\text{DPO} = -\log\sigma\Big(\beta\big[\log\tfrac{\pi_\theta(y_w|x)}{\pi_\text{ref}(y_w|x)}"
             r" - \log\tfrac{\pi_\theta(y_l|x)}{\pi_\text{ref}(y_l|x)}\big]\Big)")
    st.markdown("TRL's `DPOTrainer` on CPU. The margin is β·(log-ratio of the chosen − log-ratio of the rejected); "
                "it starts at exactly 0 because π = π_ref. KL is the mean per-token KL(π ‖ π_ref) on a batch of "
                "chosen answers.")
    c1, c2, c3, c4 = st.columns(4)
    steps = whole_number("Steps", 10, 1, 500, "rlhf_dpo_steps", where=c1)
    lr = c2.select_slider("Learning rate", [1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5], 5e-6, key="rlhf_dpo_lr")
    beta = c3.select_slider("β", [0.01, 0.05, 0.1, 0.3, 0.5, 1.0], 0.1, key="rlhf_dpo_beta")
    batch = whole_number("Pairs per step", 4, 1, 16, "rlhf_dpo_batch", where=c4)
    if steps is None or batch is None:
        return
    cfg = dpo.DPOConfigLab(steps=int(steps), lr=float(lr), beta=float(beta), batch_size=int(batch))

    def draw(snap: JobSnapshot) -> None:
        if snap.info.get("phase") and snap.active:
            st.caption(snap.info["phase"])
        a, b = st.columns(2)
        with a:
            curves(snap.metrics, {"loss": "DPO loss"}, "Loss")
            curves(snap.metrics, {"logp_chosen": "log π(chosen)", "logp_rejected": "log π(rejected)"},
                   "Sequence log-probabilities (batch)")
        with b:
            curves(snap.metrics, {"margin": "margin", "reward_chosen": "chosen reward", "reward_rejected":
                                  "rejected reward"}, "Implicit rewards (batch, before the step)")
            curves(snap.metrics, {"kl": "KL(π ‖ π_ref) per token"}, "KL to the reference")

    job = run_block("dpo", "dpo", f"DPO ({lm.name})", cfg.steps,
                    lambda: with_tokenizer(lm, lambda tok, job: dpo.run_dpo(lm.model, tok, cfg, job)), draw, lambda: dpo.validate(cfg),
                    lm)
    snap = job.snapshot() if job else None
    if snap is None or snap.status != "finished":
        return
    res: dpo.DPOResult = snap.result
    m = st.columns(4)
    m[0].metric("Margin, training pairs", f"{res.margin_train_after:+.3f}", f"from {res.margin_train_before:+.3f}")
    m[1].metric("Margin, held-out pairs", f"{res.margin_test_after:+.3f}", f"from {res.margin_test_before:+.3f}")
    m[2].metric("Held-out pairs ranked right", f"{res.accuracy_test_after:.0%}")
    m[3].metric("Time per step", format_duration(res.seconds_per_step))
    before_after(res.prompts, res.before, res.after)


# ---------------------------------------------------------------- GRPO


def grpo_step(lm: LoadedModel) -> None:
    in_out("The SFT model, prompts, and a reward function (here programmatic: no reward model to train).",
           "A policy whose samples earn more reward. No value model: each completion is compared with its group.")
    st.latex(r"A_i = \frac{r_i - \operatorname{mean}(r_1,\dots,r_G)}{\operatorname{std}(r_1,\dots,r_G)}"
             r"\qquad \mathcal{L} = -\frac{1}{\sum_i |y_i|}\sum_i\sum_t \min\big(\rho_{i,t} A_i,"
             r"\ \operatorname{clip}(\rho_{i,t}, 1-\epsilon, 1+\epsilon) A_i\big)")
    st.markdown("TRL's `GRPOTrainer`, one prompt and G sampled completions per step, β = 0 (TRL's default: no KL "
                "term). With one update per generation ρ = 1, so the loss sits near zero while its gradient, "
                "A_i·∇log π, does the work: watch the reward, not the loss.")
    if lm.spec.source.startswith("tiny-"):
        st.info("A random tiny model writes noise: a sparse reward (contains a word) never fires. Load the embedded "
                "model for a meaningful run; the length reward still moves here.")
    c1, c2, c3 = st.columns(3)
    kind = c1.selectbox("Reward", rewards.REWARD_KINDS, key="rlhf_grpo_reward", format_func=lambda k: k.replace("_", " "))
    word = c2.text_input("Word", "thank", key="rlhf_grpo_word") if kind == "contains" else "thank"
    target = whole_number("Target words", 5, 1, 200, "rlhf_grpo_target", where=c2) if kind == "length" else 5
    steps = whole_number("Steps", 8, 1, 200, "rlhf_grpo_steps", where=c3)
    c4, c5, c6 = st.columns(3)
    gens = whole_number("Group size G", 4, 2, 16, "rlhf_grpo_g", where=c4)
    new = whole_number("Completion tokens", 16, 4, 128, "rlhf_grpo_tokens", where=c5)
    lr = c6.select_slider("Learning rate", [5e-6, 1e-5, 2e-5, 5e-5, 1e-4], 2e-5, key="rlhf_grpo_lr")
    if None in (target, steps, gens, new) or too_long(word, WORD_CHARS, "Word", where=c2):
        return
    cfg = grpo.GRPOConfigLab(reward=kind, word=word, target=target, steps=int(steps), lr=float(lr),
                             generations=int(gens), max_new_tokens=int(new))

    def draw(snap: JobSnapshot) -> None:
        a, b = st.columns(2)
        with a:
            curves(snap.metrics, {"reward": "mean reward of the group"}, "Reward")
        with b:
            curves(snap.metrics, {"loss": "loss", "reward_std": "reward std"}, "Loss and reward spread")
        group = snap.info.get("group")
        if group is not None:
            group_table(group)

    job = run_block("grpo", "grpo", f"GRPO ({lm.name})", cfg.steps,
                    lambda: with_tokenizer(lm, lambda tok, job: grpo.run_grpo(lm.model, tok, cfg, job)), draw, lambda: grpo.validate(cfg),
                    lm)
    snap = job.snapshot() if job else None
    if snap is None or snap.status != "finished":
        return
    res: grpo.GRPOResult = snap.result
    m = st.columns(3)
    m[0].metric(f"Training reward ({res.reward_name})", f"{res.reward_end:.3f}", f"{res.reward_end - res.reward_start:+.3f}"
                f" from {res.reward_start:.3f}", help="mean over the last vs the first quarter of the steps")
    m[1].metric("Held-out prompts, sampled", f"{res.eval_after:.3f}", f"{res.eval_after - res.eval_before:+.3f} from "
                f"{res.eval_before:.3f}", help="mean reward of the same seeded samples on 4 held-out prompts, "
                "before and after training")
    m[2].metric("Time per step", format_duration(res.seconds_per_step))
    if res.groups:
        i = st.slider("Group at step", 1, len(res.groups), len(res.groups), key="rlhf_grpo_group") - 1
        group_table(res.groups[i])
    before_after(res.prompts, res.before, res.after, {"reward before": res.before_rewards,
                                                       "reward after": res.after_rewards})


def group_table(group: grpo.Group) -> None:
    """One group, step by step: rewards, their mean and std, each advantage (by hand and TRL's)."""
    r = group.rewards
    mean = sum(r) / len(r)
    std = (sum((x - mean) ** 2 for x in r) / max(1, len(r) - 1)) ** 0.5
    st.markdown(f"**Group at step {group.step}**: G = {len(r)} completions of one prompt")
    st.latex(rf"\bar r = {mean:.3f},\quad s = {std:.3f}\ (\text{{sample std}}),\quad "
             rf"A_i = \frac{{r_i - {mean:.3f}}}{{{std:.3f} + 10^{{-4}}}}")
    df = pd.DataFrame({"completion": group.completions, "reward r_i": r, "A_i by hand": group.advantages})
    if len(group.trl_advantages) == len(r):
        df["A_i in TRL"] = group.trl_advantages
    st.dataframe(df, width="stretch", hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.4f") for c in df.columns if c != "completion"})
    if std == 0:
        st.caption("All rewards equal: every advantage is 0 and this group teaches nothing.")


STEPS: dict[str, tuple[Callable[[LoadedModel], None], str]] = {
    "1 · SFT": (sft_step, "Supervised fine-tuning"),
    "2 · Reward model": (reward_step, "Reward model"),
    "3 · PPO": (ppo_step, "PPO with a KL penalty"),
    "DPO": (dpo_step, "Direct Preference Optimization"),
    "GRPO": (grpo_step, "Group Relative Policy Optimization"),
}
