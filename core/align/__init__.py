"""Alignment: reward model, DPO and GRPO through TRL, the PPO objective worked on real numbers."""
