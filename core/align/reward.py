"""A reward model: the language model's backbone with a scalar head, trained on preference pairs.

    r(x, y) = w · h_last(x, y) + b          h_last: the final hidden state at the answer's last token
    L_BT    = -log σ( r(x, y_w) - r(x, y_l) )   (Bradley-Terry: P(y_w ≻ y_l) = σ(r_w - r_l))

Only differences of rewards are learned, so the scale's zero point is arbitrary. This is step 2 of RLHF
(InstructGPT, Ouyang et al. 2022); PPO then maximises this reward with a KL penalty to the SFT model.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.align.common import Pair, format_prompt, preference_pairs, private_tokenizer
from core.jobs import Job, JobError


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss per pair: -log σ(r_w - r_l); [batch] -> [batch]."""
    return -F.logsigmoid(r_chosen - r_rejected)


def decoder_blocks(backbone: nn.Module, n_layers: int) -> nn.ModuleList:
    """The stack of transformer blocks (Llama `layers`, GPT-2 `h`): the ModuleList with one entry per layer."""
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise JobError("Could not find the model's list of transformer blocks.")


class RewardModel(nn.Module):
    """A private copy of the causal LM's backbone (no LM head) + a linear head: text -> one number."""

    def __init__(self, causal_lm: nn.Module, tokenizer: Any, train_layers: int = 0, seed: int = 0,
                 share_backbone: bool = False):
        super().__init__()
        config = causal_lm.config
        if share_backbone:  # scoring only, frozen fp32 backbone: read the loaded model, copy nothing
            if train_layers or next(causal_lm.parameters()).dtype != torch.float32:
                raise ValueError("only a frozen fp32 backbone can be shared")
            object.__setattr__(self, "backbone", causal_lm.base_model)  # not a submodule: never trained or moved
        else:
            self.backbone = copy.deepcopy(causal_lm.base_model).float()
        self.tokenizer = private_tokenizer(tokenizer)
        generator = torch.Generator().manual_seed(seed)
        self.head = nn.Linear(config.hidden_size, 1)
        with torch.no_grad():  # small random head: rewards start near 0, held-out accuracy near chance
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=generator) * 0.01)
            self.head.bias.zero_()
        self.head.to(next(self.backbone.parameters()).device)
        blocks = decoder_blocks(self.backbone, config.num_hidden_layers)
        self.train_layers = max(0, min(int(train_layers), len(blocks)))
        if not share_backbone:
            self.backbone.requires_grad_(False)
            for block in list(blocks)[len(blocks) - self.train_layers:]:
                block.requires_grad_(True)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def encode(self, prompt: str, answer: str) -> list[int]:
        """Chat-formatted prompt + answer + end-of-sequence: the last position has read the whole answer."""
        text = format_prompt(self.tokenizer, prompt) + " " + answer.strip()
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids + ([self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else [])

    def forward(self, prompts: list[str], answers: list[str]) -> torch.Tensor:
        """Rewards [batch] for (prompt, answer) pairs; right padding, the last real token's hidden state."""
        seqs = [self.encode(p, a) for p, a in zip(prompts, answers)]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_layers > 0):
            hidden = self.backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        last = hidden[torch.arange(len(seqs), device=self.device), mask.sum(1) - 1]  # [batch, hidden]
        return self.head(last.float())[:, 0]

    @torch.no_grad()
    def score(self, prompt: str, answer: str) -> float:
        self.eval()
        return float(self([prompt], [answer])[0])

    @torch.no_grad()
    def pair_rewards(self, pairs: list[Pair]) -> tuple[list[float], list[float]]:
        """(chosen rewards, rejected rewards) for each pair."""
        self.eval()
        prompts = [p.prompt for p in pairs]
        return (self(prompts, [p.chosen for p in pairs]).tolist(), self(prompts, [p.rejected for p in pairs]).tolist())


def accuracy(model: RewardModel, pairs: list[Pair]) -> float:
    """Fraction of pairs where the chosen answer gets the higher reward."""
    rc, rr = model.pair_rewards(pairs)
    return sum(c > r for c, r in zip(rc, rr)) / len(pairs)


@dataclass
class RewardConfig:
    steps: int = 40
    lr: float = 1e-3
    batch_size: int = 8
    train_layers: int = 0  # 0: only the head learns (the backbone is a frozen feature extractor)
    seed: int = 0


@dataclass
class RewardResult:
    """Figures and the trained tensors (the head, and the top blocks when they trained), not a model: a
    finished job keeps no copy of the backbone. `score_answers` rebuilds the scorer on demand."""
    trained_state: dict[str, torch.Tensor]
    train_layers: int
    rows: list[dict[str, float]]
    test_accuracy_before: float
    test_accuracy_after: float
    seconds_per_step: float
    test_pairs: list[dict[str, Any]] = field(default_factory=list)  # held-out prompt, both answers and scores


def validate(cfg: RewardConfig) -> None:
    if not 1 <= cfg.steps <= 2000:
        raise JobError("Steps must be between 1 and 2000.")
    if not 0 < cfg.lr <= 0.1:
        raise JobError("The learning rate must be in (0, 0.1].")
    if not 1 <= cfg.batch_size <= 32:
        raise JobError("The batch size must be between 1 and 32.")


def train_reward_model(causal_lm: nn.Module, tokenizer: Any, cfg: RewardConfig, job: Job | None = None) -> RewardResult:
    """Bradley-Terry training on the shipped training pairs; held-out accuracy before, during and after."""
    validate(cfg)
    torch.manual_seed(cfg.seed)
    train, test = preference_pairs("train"), preference_pairs("test")
    rm = RewardModel(causal_lm, tokenizer, cfg.train_layers, cfg.seed)
    acc0 = accuracy(rm, test)
    params = [p for p in rm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(cfg.seed)
    perm: list[int] = []
    rows: list[dict[str, float]] = []
    eval_every = max(1, cfg.steps // 10)
    t0 = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        if job is not None:
            job.tick()
        if len(perm) < cfg.batch_size:
            perm += torch.randperm(len(train), generator=order).tolist()
        batch, perm = [train[i] for i in perm[:cfg.batch_size]], perm[cfg.batch_size:]
        rm.train()
        prompts = [p.prompt for p in batch]
        r_w, r_l = rm(prompts, [p.chosen for p in batch]), rm(prompts, [p.rejected for p in batch])
        loss = bt_loss(r_w, r_l).mean()
        if not torch.isfinite(loss):
            raise JobError(f"The loss became {float(loss)} at step {step}: lower the learning rate.")
        opt.zero_grad()
        loss.backward()
        opt.step()
        row = {"step": step, "loss": loss.item(), "margin": float((r_w - r_l).detach().mean()),
               "train_accuracy": float((r_w > r_l).float().mean())}
        if step % eval_every == 0 or step == cfg.steps:
            row["test_accuracy"] = accuracy(rm, test)
        rows.append(row)
        if job is not None:
            job.report(step=step, metrics=row)
    seconds = time.perf_counter() - t0
    rc, rr = rm.pair_rewards(test)
    table = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "r_chosen": c, "r_rejected": r}
             for p, c, r in zip(test, rc, rr)]
    trained = {n: p.detach().cpu().clone() for n, p in rm.named_parameters() if p.requires_grad}
    return RewardResult(trained_state=trained, train_layers=rm.train_layers, rows=rows, test_accuracy_before=acc0,
                        test_accuracy_after=rows[-1]["test_accuracy"], seconds_per_step=seconds / cfg.steps,
                        test_pairs=table)


def score_answers(causal_lm: nn.Module, tokenizer: Any, result: RewardResult, prompt: str,
                  answers: list[str]) -> list[float]:
    """r(prompt, answer) for each answer with the trained reward model, rebuilt from the loaded model and the
    result's trained tensors (no copy at all when only the head trained on an fp32 model)."""
    share = result.train_layers == 0 and next(causal_lm.parameters()).dtype == torch.float32
    rm = RewardModel(causal_lm, tokenizer, result.train_layers, share_backbone=share)
    missing = set(result.trained_state) - {n for n, _ in rm.named_parameters()}
    if missing:
        raise JobError("This reward model was trained on another model; load that model to score with it.")
    with torch.no_grad():
        params = dict(rm.named_parameters())
        for name, tensor in result.trained_state.items():
            params[name].copy_(tensor)
    rm.eval()
    with torch.no_grad():
        return rm([prompt] * len(answers), answers).tolist()
