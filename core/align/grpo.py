"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath) through TRL's GRPOTrainer.

For each prompt the policy samples a group of G completions, a reward function scores them, and each
completion's advantage is its reward standardised within its group:

    A_i = (r_i - mean(r_1..r_G)) / std(r_1..r_G)

No value model: the group mean is the baseline. The loss pushes up the log-probability of completions with
A_i > 0 and down those with A_i < 0 (PPO's clipped ratio, here one update per generation, so the ratio is 1
and the loss value itself sits near zero while its gradient does the work).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from core.align.common import (JobCallback, eval_mode, format_prompt, greedy_answers, preference_pairs,
                               private_copy, private_tokenizer, seeded, trainer_args)
from core.align.rewards import Reward, as_trl, make_reward
from core.jobs import Job, JobError

GRPO_METRICS = {"reward": "reward", "reward_std": "reward_std", "loss": "loss",
                "completions/mean_length": "length", "frac_reward_zero_std": "zero_std_groups"}
EPS = 1e-4  # TRL adds this to the group std so that a group of equal rewards gives A = 0, not 0/0


def group_advantages(rewards: list[float], eps: float = EPS) -> list[float]:
    """A_i = (r_i - mean) / (std + eps) with the sample (Bessel-corrected) std, as TRL computes it."""
    if len(rewards) < 2:
        return [0.0] * len(rewards)
    mean, std = statistics.fmean(rewards), statistics.stdev(rewards)
    return [(r - mean) / (std + eps) for r in rewards]


@torch.no_grad()
def sampled_mean_reward(model, tokenizer, prompts: list[str], reward: Reward, samples: int, max_new_tokens: int,
                        temperature: float, seed: int) -> float:
    """Mean reward of `samples` seeded samples per prompt: the same measurement before and after training."""
    device = next(model.parameters()).device
    values = []
    with eval_mode(model), seeded(seed):
        for prompt in prompts:
            ids = torch.tensor([tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]],
                               device=device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                                 top_p=1.0, temperature=temperature, max_new_tokens=max_new_tokens,
                                 num_return_sequences=samples, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            values += [reward(tokenizer.decode(o[ids.shape[1]:], skip_special_tokens=True)) for o in out]
    return statistics.fmean(values)


@dataclass
class GRPOConfigLab:
    reward: str = "length"  # one of core.align.rewards.REWARD_KINDS
    word: str = "thank"
    target: int = 5
    steps: int = 8
    lr: float = 2e-5
    generations: int = 4  # G, the group size; one prompt per step
    max_new_tokens: int = 16
    temperature: float = 1.0
    seed: int = 0
    eval_samples: int = 4  # per held-out prompt, before and after training
    before_after: tuple[str, ...] = ("Can you recommend a good movie?", "How do I fix a flat bicycle tyre?")
    answer_tokens: int = 24


@dataclass
class Group:
    """One prompt's completions as scored at one step: what the page shows step by step."""
    step: int
    prompt: str
    completions: list[str]
    rewards: list[float]
    advantages: list[float]  # by hand, group_advantages(rewards)
    trl_advantages: list[float]  # what TRL computed for the same completions


@dataclass
class GRPOResult:
    rows: list[dict[str, float]]
    reward_start: float  # mean reward over the first quarter of the steps
    reward_end: float  # ... and over the last quarter
    eval_before: float  # mean reward of seeded samples on the held-out prompts, before training
    eval_after: float  # ... and after
    seconds_per_step: float
    reward_name: str
    groups: list[Group] = field(default_factory=list)
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    before_rewards: list[float] = field(default_factory=list)
    after_rewards: list[float] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)


def validate(cfg: GRPOConfigLab) -> Reward:
    if not 1 <= cfg.steps <= 200:
        raise JobError("Steps must be between 1 and 200.")
    if not 2 <= cfg.generations <= 16:
        raise JobError("The group needs between 2 and 16 completions (with 1 there is nothing to compare).")
    if not 1 <= cfg.max_new_tokens <= 128:
        raise JobError("Completions must be 1 to 128 tokens long.")
    if not 0 < cfg.lr <= 1e-3:
        raise JobError("The learning rate must be in (0, 1e-3].")
    if not 0 < cfg.temperature <= 5:
        raise JobError("The sampling temperature must be in (0, 5]; GRPO needs varied samples, so not 0.")
    try:
        return make_reward(cfg.reward, cfg.word, cfg.target)
    except ValueError as exc:
        raise JobError(str(exc)) from exc


def run_grpo(model, tokenizer, cfg: GRPOConfigLab, job: Job | None = None) -> GRPOResult:
    """GRPO on the shipped prompts with a programmatic reward, on a private copy of `model`. Seeded: the whole
    run holds the process's random generators (`seeded`), so a job sampling beside it cannot change it."""
    reward = validate(cfg)
    with seeded(cfg.seed, job):
        return _run_grpo(model, tokenizer, cfg, reward, job)


def _run_grpo(model, tokenizer, cfg: GRPOConfigLab, reward: Reward, job: Job | None) -> GRPOResult:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    class AdvantageTap(GRPOTrainer):
        """Reads the advantages TRL trains on from `compute_loss`'s inputs (public API), not its private logs."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # TRL shuffles the batch before the loss: keep each advantage with its completion's text
            ids = [row[:int(n)] for row, n in zip(inputs["completion_ids"].tolist(), inputs["completion_mask"].sum(-1))]
            texts = tok.batch_decode(ids, skip_special_tokens=True)
            tapped.append(dict(zip(texts, (float(a) for a in inputs["advantages"].reshape(-1).tolist()))))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    tapped: list[dict[str, float]] = []
    policy, tok = private_copy(model), private_tokenizer(tokenizer)
    before = greedy_answers(policy, tok, list(cfg.before_after), cfg.answer_tokens)
    held_out = [p.prompt for p in preference_pairs("test")][:4]

    def evaluate() -> float:
        return sampled_mean_reward(policy, tok, held_out, reward, cfg.eval_samples, cfg.max_new_tokens,
                                   cfg.temperature, cfg.seed + 1)

    if job is not None:
        job.report(phase="sampling the held-out prompts before training")
    eval_before = evaluate()
    groups: list[Group] = []
    state: dict[str, Any] = {"trainer": None, "step": 0}

    def on_call(prompts: list, completions: list[str], rewards: list[float]) -> None:
        g = cfg.generations  # one prompt per step: the first G completions are its group
        trainer = state["trainer"]
        prompt = originals.get(str(prompts[0]), str(prompts[0]))
        groups.append(Group(step=state["step"] + 1, prompt=prompt, completions=completions[:g], rewards=rewards[:g],
                            advantages=group_advantages(rewards[:g]), trl_advantages=[]))
        del groups[:-50]
        if job is not None:
            job.report(group=groups[-1], trainer_ready=trainer is not None)

    def extra(step: int, _model) -> dict[str, float]:
        state["step"] = step
        trainer = state["trainer"]
        if groups and trainer is not None and tapped and not groups[-1].trl_advantages:
            by_text = tapped[-1]
            if all(c in by_text for c in groups[-1].completions):
                groups[-1].trl_advantages = [by_text[c] for c in groups[-1].completions]
            if job is not None:
                job.report(group=groups[-1])
        return {}

    originals = {format_prompt(tok, p.prompt): p.prompt for p in preference_pairs("train")}
    prompts = list(originals)
    callback = JobCallback(job, GRPO_METRICS, extra=extra)
    with tempfile.TemporaryDirectory(prefix="lab-grpo-") as out:
        args = GRPOConfig(**trainer_args(out, cfg.steps, cfg.lr, cfg.generations, cfg.seed),
                          num_generations=cfg.generations, max_completion_length=cfg.max_new_tokens,
                          temperature=cfg.temperature, beta=0.0, steps_per_generation=1, num_iterations=1)
        trainer = AdvantageTap(model=policy, reward_funcs=as_trl(reward, on_call), args=args,
                               train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                               processing_class=tok, callbacks=[callback])
        state["trainer"] = trainer
        if job is not None:
            job.report(phase="training")
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    callback.finish()
    rows = callback.rows
    if job is not None:
        job.report(phase="sampling the held-out prompts after training")
    eval_after = evaluate()
    quarter = max(1, len(rows) // 4)
    after = greedy_answers(policy, tok, list(cfg.before_after), cfg.answer_tokens)
    return GRPOResult(
        rows=rows, reward_start=statistics.fmean(r["reward"] for r in rows[:quarter]),
        reward_end=statistics.fmean(r["reward"] for r in rows[-quarter:]), eval_before=eval_before,
        eval_after=eval_after, seconds_per_step=seconds / max(1, len(rows)),
        reward_name=reward.name, groups=groups, before=before, after=after,
        before_rewards=[reward(t) for t in before], after_rewards=[reward(t) for t in after],
        prompts=list(cfg.before_after))
