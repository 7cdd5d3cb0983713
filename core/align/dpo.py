"""Direct Preference Optimization (Rafailov et al. 2023): the loss by hand, and a real run through TRL.

    L_DPO = -log σ( β [ (log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x)) ] )

y_w is the chosen answer, y_l the rejected one. The implicit reward of an answer is β·(log π - log π_ref);
the reward margin is chosen reward minus rejected reward. No reward model, no sampling: two forward passes
(policy and frozen reference) per answer.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from core.align.common import (JobCallback, Pair, eval_mode, format_prompt, greedy_answers, preference_pairs,
                               private_copy, private_tokenizer, seeded, sequence_logprobs, trainer_args)
from core.jobs import Job, JobError

# TRL's log names -> the short names of our curves
DPO_METRICS = {"loss": "loss", "rewards/margins": "margin", "rewards/chosen": "reward_chosen",
               "rewards/rejected": "reward_rejected", "rewards/accuracies": "accuracy",
               "logps/chosen": "logp_chosen", "logps/rejected": "logp_rejected"}
BEFORE_AFTER_PROMPTS = ("Can you recommend a good movie?", "How do I fix a flat bicycle tyre?",
                        "What is the capital of Italy?")


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss and implicit rewards, from sequence log-probabilities (each [batch]).

    Returns (losses [batch], chosen_rewards [batch], rejected_rewards [batch]).
    """
    chosen_rewards = beta * (policy_chosen - ref_chosen)  # β log π(y_w|x)/π_ref(y_w|x)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards, rejected_rewards


@dataclass
class DPOConfigLab:
    steps: int = 10
    lr: float = 5e-6
    beta: float = 0.1
    batch_size: int = 4
    max_length: int = 96
    seed: int = 0
    before_after: tuple[str, ...] = BEFORE_AFTER_PROMPTS
    answer_tokens: int = 32


@dataclass
class DPOResult:
    rows: list[dict[str, float]]  # per-step metrics
    margin_train_before: float  # mean β-margin on the training pairs, measured by hand (0 at the start)
    margin_train_after: float
    margin_test_before: float
    margin_test_after: float
    accuracy_test_after: float  # held-out pairs whose chosen reward beats the rejected one
    seconds_per_step: float
    before: list[str] = field(default_factory=list)  # greedy answers of the reference
    after: list[str] = field(default_factory=list)  # ... and of the trained policy, same prompts
    prompts: list[str] = field(default_factory=list)


def validate(cfg: DPOConfigLab) -> None:
    if not 1 <= cfg.steps <= 500:
        raise JobError("Steps must be between 1 and 500.")
    if not 0 < cfg.lr <= 1e-3:
        raise JobError("The learning rate must be in (0, 1e-3].")
    if not 0 < cfg.beta <= 10:
        raise JobError("β must be in (0, 10].")
    if not 1 <= cfg.batch_size <= 16:
        raise JobError("The batch size must be between 1 and 16.")


def to_dataset(tokenizer: Any, pairs: list[Pair]):
    """TRL's standard preference format: formatted prompt text, chosen and rejected completions."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": format_prompt(tokenizer, p.prompt), "chosen": " " + p.chosen.strip(),
                               "rejected": " " + p.rejected.strip()} for p in pairs])


@torch.no_grad()
def pair_margins(policy, ref, tokenizer, pairs: list[Pair], beta: float) -> list[float]:
    """β-margin per pair, β[(log π - log π_ref)(y_w) - (log π - log π_ref)(y_l)], with our own log-probs.
    Measured in eval mode (dropout off, as TRL scores): a policy equal to its reference gives exactly 0."""
    xs = [format_prompt(tokenizer, p.prompt) for p in pairs]
    chosen, rejected = [" " + p.chosen.strip() for p in pairs], [" " + p.rejected.strip() for p in pairs]
    with eval_mode(policy), eval_mode(ref):
        lp = {(m, side): sequence_logprobs(model, tokenizer, xs, ys) for m, model in (("pi", policy), ("ref", ref))
              for side, ys in (("w", chosen), ("l", rejected))}
    _, r_w, r_l = dpo_loss(lp["pi", "w"], lp["pi", "l"], lp["ref", "w"], lp["ref", "l"], beta)
    return (r_w - r_l).tolist()


@torch.no_grad()
def token_kl(policy, ref, tokenizer, pairs: list[Pair]) -> float:
    """Mean per-token KL(π ‖ π_ref) over the chosen answers' tokens, Σ_v π(v) (log π(v) - log π_ref(v)) at each
    position that predicts an answer token (the prompt and its chat template are left out), in eval mode."""
    total, count = 0.0, 0
    with eval_mode(policy), eval_mode(ref):
        for p in pairs:
            prompt = tokenizer(format_prompt(tokenizer, p.prompt), add_special_tokens=False)["input_ids"]
            answer = tokenizer(" " + p.chosen.strip(), add_special_tokens=False)["input_ids"]
            x = torch.tensor([prompt + answer], device=next(policy.parameters()).device)
            span = slice(len(prompt) - 1, len(prompt) + len(answer) - 1)  # logits at t predict token t + 1
            lp = F.log_softmax(policy(input_ids=x, use_cache=False).logits[0, span].float(), -1)
            lq = F.log_softmax(ref(input_ids=x, use_cache=False).logits[0, span].float(), -1)
            kl = (lp.exp() * (lp - lq)).sum(-1)  # [answer tokens]
            total, count = total + float(kl.sum()), count + kl.numel()
    return total / max(1, count)


def run_dpo(model, tokenizer, cfg: DPOConfigLab, job: Job | None = None) -> DPOResult:
    """DPO on the shipped training pairs through TRL's DPOTrainer, on private copies of `model`. Seeded:
    the whole run holds the process's random generators (`seeded`), so a job beside it cannot change it."""
    validate(cfg)
    with seeded(cfg.seed, job):
        return _run_dpo(model, tokenizer, cfg, job)


def _run_dpo(model, tokenizer, cfg: DPOConfigLab, job: Job | None) -> DPOResult:
    from trl import DPOConfig, DPOTrainer

    train, test = preference_pairs("train"), preference_pairs("test")
    policy, ref = private_copy(model), private_copy(model, trainable=False)
    tok = private_tokenizer(tokenizer)
    if job is not None:
        job.report(phase="measuring the starting margins")
    before = greedy_answers(ref, tok, list(cfg.before_after), cfg.answer_tokens)
    m_train0 = pair_margins(policy, ref, tok, train, cfg.beta)
    m_test0 = pair_margins(policy, ref, tok, test, cfg.beta)
    kl_pairs = train[: cfg.batch_size]
    callback = JobCallback(job, DPO_METRICS, extra=lambda step, m: {"kl": token_kl(m, ref, tok, kl_pairs)})
    with tempfile.TemporaryDirectory(prefix="lab-dpo-") as out:
        args = DPOConfig(**trainer_args(out, cfg.steps, cfg.lr, cfg.batch_size, cfg.seed), beta=cfg.beta,
                         max_length=cfg.max_length, precompute_ref_log_probs=False)
        trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=to_dataset(tok, train),
                             processing_class=tok, callbacks=[callback])
        if job is not None:
            job.report(phase="training")
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    callback.finish()
    policy.eval()
    if job is not None:
        job.report(phase="measuring the final margins and answers")
    m_train1 = pair_margins(policy, ref, tok, train, cfg.beta)
    m_test1 = pair_margins(policy, ref, tok, test, cfg.beta)
    return DPOResult(
        rows=callback.rows, margin_train_before=_mean(m_train0), margin_train_after=_mean(m_train1),
        margin_test_before=_mean(m_test0), margin_test_after=_mean(m_test1),
        accuracy_test_after=sum(m > 0 for m in m_test1) / len(m_test1),
        seconds_per_step=seconds / max(1, len(callback.rows)), before=before,
        after=greedy_answers(policy, tok, list(cfg.before_after), cfg.answer_tokens), prompts=list(cfg.before_after))


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")
