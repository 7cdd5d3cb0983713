"""RLHF and preference tuning: SFT -> reward model -> PPO, then DPO and GRPO, each with a real mini-run."""

from __future__ import annotations

import streamlit as st

from core.align import common, dpo, grpo, ppo, reward, rewards
from ui import rlhf
from ui.explain import how_computed
from ui.models import model_picker

st.title("🤝 RLHF and preference tuning")
lm = model_picker()

st.markdown(
    "A pretrained model continues text; an assistant answers the way people prefer. **RLHF** (InstructGPT, "
    "Ouyang et al. 2022) gets there in three steps: **supervised fine-tuning** on demonstrations, a **reward "
    "model** trained on human comparisons, then **PPO** to maximise that reward with a **KL penalty** that keeps "
    "the model close to where it started. **DPO** skips the reward model and the sampling; **GRPO** keeps the "
    "sampling but drops the value model. Pick a step: each shows what goes in, what comes out, the loss, and a "
    "run on the loaded model. Every run trains its own copy: the model other pages show never changes.")
st.graphviz_chart("""digraph {
  rankdir=LR; node [shape=box, style="rounded,filled", fillcolor="#eef2ff", fontname="sans-serif", fontsize=11];
  edge [fontname="sans-serif", fontsize=9];
  pre [label="pretrained model"]; sft [label="1 · SFT model"]; rm [label="2 · reward model r(x, y)"];
  ppo [label="3 · PPO policy"]; dpo [label="DPO policy"]; grpo [label="GRPO policy"];
  pre -> sft [label="demonstrations"]; sft -> rm [label="preference pairs"]; rm -> ppo [label="reward"];
  sft -> ppo [label="start + KL anchor"]; sft -> dpo [label="preference pairs"];
  sft -> grpo [label="reward function"];
}""")

# A link to a running job (?rm=, ?dpo=, ?grpo=) opens on that job's step, where its panel shows it.
if st.session_state.get("rlhf_step") is None:  # (a default= beside a session value would warn on the page)
    st.session_state["rlhf_step"] = next((linked for param, linked in (("rm", "2 · Reward model"), ("dpo", "DPO"),
                                                                       ("grpo", "GRPO")) if st.query_params.get(param)),
                                         "1 · SFT")
step = st.segmented_control("Step", list(rlhf.STEPS), key="rlhf_step",
                            label_visibility="collapsed") or "1 · SFT"
draw, heading = rlhf.STEPS[step]
st.subheader(heading)
draw(lm)

EXPLAIN = {
    "1 · SFT": ((common.sft_loss, common.completion_token_logprobs),
                "sft-loss --text 'How do I make a cup of tea?' --answer 'Boil water, ...'"),
    "2 · Reward model": ((reward.bt_loss, reward.RewardModel.forward, reward.train_reward_model),
                         "reward --steps 40"),
    "3 · PPO": ((ppo.ppo_example, ppo.clipped_terms), "ppo --text 'Can you recommend a good book?'"),
    "DPO": ((dpo.dpo_loss, dpo.pair_margins, dpo.run_dpo), "dpo --steps 10"),
    "GRPO": ((grpo.group_advantages, rewards.make_reward, grpo.run_grpo), "grpo --reward length --steps 8"),
}
functions, args = EXPLAIN[step]
how_computed(*functions, command=f"python -m core {args} {lm.spec.cli()}",
             note="Training runs go through TRL (`DPOTrainer`, `GRPOTrainer`) or a plain PyTorch loop (the reward "
                  "model), on a deep copy of the loaded model, as background jobs: the curves are the trainer's "
                  "own logs, step by step. Margins, KL and advantages are also recomputed by the functions below.")
