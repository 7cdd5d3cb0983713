"""One PPO update worked on real numbers (Schulman et al. 2017; with a KL penalty as in InstructGPT).

    ρ_t = π_θ(y_t | x, y_<t) / π_old(y_t | x, y_<t)                         probability ratio per token
    J   = 1/T Σ_t min( ρ_t A, clip(ρ_t, 1-ε, 1+ε) A )  -  β · 1/T Σ_t KL_t(π_θ ‖ π_ref)

The rollout (a completion sampled from π_old) gets a scalar reward R; A = R - V with V the baseline a value
model would predict (here a number the caller gives, so the example needs no critic). π_θ is π_old after one
SGD step on A·log π(y), the gradient of J at ρ = 1; the clip then caps how much a token's ratio may count.
At the first PPO iteration π_old is the SFT model, which is also π_ref.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from core.align.common import format_prompt, private_copy

# The update backpropagates through every layer over the whole prompt: activations grow with its length (and
# eager attention's with its square). A 20,000-character prompt (~4,500 tokens) took ~24 GB on the embedded
# model; 256 tokens keep one step near a second and a few hundred MB.
MAX_PROMPT_TOKENS = 256
WHY_CAP = "one PPO step backpropagates through the model over the whole prompt, and its memory grows with the length"


@dataclass(frozen=True)
class TokenTerm:
    token: str
    logp_old: float  # log π_old(y_t | ·), also log π_ref at the first iteration
    logp_new: float  # log π_θ(y_t | ·) after the SGD step
    ratio: float  # ρ_t = exp(logp_new - logp_old)
    clipped: float  # clip(ρ_t, 1-ε, 1+ε)
    surrogate: float  # ρ_t · A
    clipped_surrogate: float  # clip(ρ_t) · A
    term: float  # min of the two: what the token contributes to J
    kl: float  # KL(π_θ ‖ π_ref) of the next-token distribution at this position (all vocabulary)


@dataclass
class PPOExample:
    prompt: str
    completion: str
    reward: float
    baseline: float
    advantage: float
    epsilon: float
    beta: float
    lr: float
    tokens: list[TokenTerm] = field(default_factory=list)

    @property
    def clip_objective(self) -> float:
        return sum(t.term for t in self.tokens) / len(self.tokens)

    @property
    def kl(self) -> float:
        return sum(t.kl for t in self.tokens) / len(self.tokens)

    @property
    def objective(self) -> float:
        return self.clip_objective - self.beta * self.kl

    @property
    def clipped_tokens(self) -> int:
        return sum(t.term != t.surrogate for t in self.tokens)


def clipped_terms(ratio: torch.Tensor, advantage: float, epsilon: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ρ·A, clip(ρ, 1-ε, 1+ε)·A, their minimum) per token; ratio [T]."""
    surrogate = ratio * advantage
    clipped = ratio.clamp(1 - epsilon, 1 + epsilon) * advantage
    return surrogate, clipped, torch.minimum(surrogate, clipped)


def _logits(model, ids: torch.Tensor, n_prompt: int) -> torch.Tensor:
    """Next-token logits at the completion positions: [T, vocab]."""
    return model(input_ids=ids, use_cache=False).logits[0, n_prompt - 1:-1].float()


def ppo_example(model, tokenizer, prompt: str, reward_fn: Callable[[str], float], *, baseline: float = 0.5,
                epsilon: float = 0.2, beta: float = 0.05, lr: float = 1e-3, max_new_tokens: int = 16,
                seed: int = 0) -> PPOExample:
    """Sample a completion, score it, take one SGD step on a private copy, and compute J term by term."""
    if not prompt.strip():
        raise ValueError("Type a prompt for the rollout.")
    if not 0 < epsilon < 1:
        raise ValueError("ε must be in (0, 1).")
    if not 0 < lr <= 1:
        raise ValueError("The learning rate must be in (0, 1].")
    if not 1 <= max_new_tokens <= 64:
        raise ValueError("The completion must be 1 to 64 tokens long.")
    n_prompt = len(tokenizer(prompt[:100_000], add_special_tokens=False)["input_ids"])
    if n_prompt > MAX_PROMPT_TOKENS:  # the slice: a megabyte prompt is refused without tokenizing all of it
        more = "+" if len(prompt) > 100_000 else ""
        raise ValueError(f"The prompt has {n_prompt:,}{more} tokens; a PPO step takes at most {MAX_PROMPT_TOKENS}: "
                         f"{WHY_CAP}.")
    device = next(model.parameters()).device
    prompt_ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    x = torch.tensor([prompt_ids], device=device)
    torch.manual_seed(seed)
    with torch.no_grad():  # the rollout: a sample from π_old, the model as it is
        ids = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=True, temperature=1.0,
                             top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        if ids.shape[1] == x.shape[1]:
            raise ValueError("The model produced no token for this prompt.")
        logp_ref_all = F.log_softmax(_logits(model, ids, len(prompt_ids)), -1)  # [T, vocab]
    targets = ids[0, len(prompt_ids):]
    completion = tokenizer.decode(targets, skip_special_tokens=True)
    reward = float(reward_fn(completion))
    advantage = reward - baseline
    logp_old = logp_ref_all.gather(-1, targets[:, None])[:, 0]

    policy = private_copy(model)  # π_θ: one SGD step on -A·mean_t log π(y_t), the gradient of J at ρ = 1
    logp = F.log_softmax(_logits(policy, ids, len(prompt_ids)), -1).gather(-1, targets[:, None])[:, 0]
    (-(advantage * logp).mean()).backward()
    with torch.no_grad():
        for p in policy.parameters():
            if p.grad is not None:
                p -= lr * p.grad
        logp_new_all = F.log_softmax(_logits(policy, ids, len(prompt_ids)), -1)
    del policy
    logp_new = logp_new_all.gather(-1, targets[:, None])[:, 0]
    kl = (logp_new_all.exp() * (logp_new_all - logp_ref_all)).sum(-1)  # [T]
    ratio = (logp_new - logp_old).exp()
    surrogate, clipped, term = clipped_terms(ratio, advantage, epsilon)
    pieces = [tokenizer.decode([int(t)]) for t in targets]
    tokens = [TokenTerm(tok, float(lo), float(ln), float(r), float(r.clamp(1 - epsilon, 1 + epsilon)), float(s),
                        float(c), float(m), float(k))
              for tok, lo, ln, r, s, c, m, k in zip(pieces, logp_old, logp_new, ratio, surrogate, clipped, term, kl)]
    return PPOExample(prompt=prompt, completion=completion, reward=reward, baseline=baseline, advantage=advantage,
                      epsilon=epsilon, beta=beta, lr=lr, tokens=tokens)
