"""`python -m core reward|dpo|grpo|ppo`: the alignment mini-runs from a terminal, figures as JSON."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from core.cli import add_model_args, command, load_from_args
from core.jobs import JobError


def _run(fn, *args) -> Any:
    """User errors of a run (JobError) become ValueError: one line on stderr, exit status 2."""
    try:
        return fn(*args)
    except JobError as exc:
        raise ValueError(str(exc)) from exc


def _reward_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--train-layers", type=int, default=0, help="last N blocks trained too (0: only the head)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--score", nargs=2, action="append", metavar=("PROMPT", "ANSWER"), default=[],
                   help="score an answer with the trained reward model (repeatable)")


@command("reward", "train a reward model (Bradley-Terry) on data/preferences.jsonl; held-out accuracy", _reward_args)
def cmd_reward(args: argparse.Namespace) -> Any:
    from core.align.reward import RewardConfig, score_answers, train_reward_model

    lm = load_from_args(args)
    cfg = RewardConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, train_layers=args.train_layers,
                       seed=args.seed)
    r = _run(train_reward_model, lm.model, lm.tokenizer, cfg)
    return {"config": asdict(cfg), "test_accuracy": {"start": r.test_accuracy_before, "end": r.test_accuracy_after},
            "loss": {"start": r.rows[0]["loss"], "end": r.rows[-1]["loss"]}, "seconds_per_step": r.seconds_per_step,
            "test_pairs": r.test_pairs,
            "scores": [{"prompt": p, "answer": a, "reward": score_answers(lm.model, lm.tokenizer, r, p, [a])[0]}
                       for p, a in args.score]}


def _dpo_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)


@command("dpo", "DPO (TRL DPOTrainer) on data/preferences.jsonl; reward margin start -> end", _dpo_args)
def cmd_dpo(args: argparse.Namespace) -> Any:
    from core.align.dpo import DPOConfigLab, run_dpo

    lm = load_from_args(args)
    cfg = DPOConfigLab(steps=args.steps, lr=args.lr, beta=args.beta, batch_size=args.batch_size, seed=args.seed)
    r = _run(run_dpo, lm.model, lm.tokenizer, cfg)
    return {"config": asdict(cfg),
            "margin_train": {"start": r.margin_train_before, "end": r.margin_train_after},
            "margin_test": {"start": r.margin_test_before, "end": r.margin_test_after},
            "test_accuracy_end": r.accuracy_test_after, "seconds_per_step": r.seconds_per_step, "steps": r.rows,
            "answers": [{"prompt": p, "before": b, "after": a} for p, b, a in zip(r.prompts, r.before, r.after)]}


def _grpo_args(p: argparse.ArgumentParser) -> None:
    from core.align.rewards import REWARD_KINDS

    add_model_args(p)
    p.add_argument("--reward", default="length", choices=REWARD_KINDS)
    p.add_argument("--word", default="thank", help="for --reward contains")
    p.add_argument("--target", type=int, default=5, help="words, for --reward length")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)


@command("grpo", "GRPO (TRL GRPOTrainer) with a programmatic reward; mean reward start -> end", _grpo_args)
def cmd_grpo(args: argparse.Namespace) -> Any:
    from core.align.grpo import GRPOConfigLab, run_grpo

    lm = load_from_args(args)
    cfg = GRPOConfigLab(reward=args.reward, word=args.word, target=args.target, steps=args.steps, lr=args.lr,
                        generations=args.generations, max_new_tokens=args.max_new_tokens, seed=args.seed)
    r = _run(run_grpo, lm.model, lm.tokenizer, cfg)
    return {"config": asdict(cfg), "reward": r.reward_name,
            "mean_reward": {"start": r.reward_start, "end": r.reward_end},
            "held_out_sampled_reward": {"start": r.eval_before, "end": r.eval_after}, "seconds_per_step": r.seconds_per_step,
            "steps": r.rows, "last_group": asdict(r.groups[-1]) if r.groups else None,
            "answers": [{"prompt": p, "before": b, "after": a, "reward_before": rb, "reward_after": ra}
                        for p, b, a, rb, ra in zip(r.prompts, r.before, r.after, r.before_rewards, r.after_rewards)]}


def _ppo_args(p: argparse.ArgumentParser) -> None:
    from core.align.rewards import REWARD_KINDS

    add_model_args(p)
    p.add_argument("--text", default="Can you recommend a good book?", help="the prompt of the rollout")
    p.add_argument("--reward", default="politeness", choices=REWARD_KINDS)
    p.add_argument("--word", default="thank")
    p.add_argument("--target", type=int, default=5)
    p.add_argument("--baseline", type=float, default=0.5, help="V, the value a critic would predict")
    p.add_argument("--epsilon", type=float, default=0.2)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)


@command("ppo", "one PPO clipped update worked term by term on a real rollout", _ppo_args)
def cmd_ppo(args: argparse.Namespace) -> Any:
    from core.align.ppo import ppo_example
    from core.align.rewards import make_reward

    lm = load_from_args(args)
    reward = make_reward(args.reward, args.word, args.target)
    ex = ppo_example(lm.model, lm.tokenizer, args.text, reward, baseline=args.baseline, epsilon=args.epsilon,
                     beta=args.beta, lr=args.lr, max_new_tokens=args.max_new_tokens, seed=args.seed)
    return {"completion": ex.completion, "reward": ex.reward, "advantage": ex.advantage,
            "clip_objective": ex.clip_objective, "kl": ex.kl, "objective": ex.objective,
            "clipped_tokens": ex.clipped_tokens, "tokens": [asdict(t) for t in ex.tokens]}


def _sft_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--text", default="How do I make a cup of tea?", help="the prompt")
    p.add_argument("--answer", required=True, help="the demonstration answer")


@command("sft-loss", "the SFT loss (mean -log p per answer token) of one demonstration", _sft_args)
def cmd_sft_loss(args: argparse.Namespace) -> Any:
    from core.align.common import sft_loss

    lm = load_from_args(args)
    loss, per_token, tokens = sft_loss(lm.model, lm.tokenizer, args.text, args.answer)
    return {"loss": loss, "tokens": [{"token": t, "nll": v} for t, v in zip(tokens, per_token)]}
