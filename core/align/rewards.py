"""Programmatic rewards for GRPO and the PPO example: a completion's text -> a number, no model involved.

Each reward is a pure function of the text, so every figure on the page can be checked by hand. TRL calls a
reward as `fn(prompts=..., completions=..., **columns) -> list[float]`; `as_trl(reward)` adapts one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

WORD = re.compile(r"[A-Za-z']+")
POLITE = ("please", "thank", "glad", "happy", "sure", "of course", "welcome", "hope")


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def contains_word(text: str, word: str) -> float:
    """1 if the word occurs (case-insensitive, whole word), else 0: a sparse reward."""
    return float(word.lower() in words(text))


def length_target(text: str, target: int) -> float:
    """exp(-|n - target| / target): 1 at exactly `target` words and never flat 0, so a group whose lengths
    differ always has a gradient, even far from the target."""
    n = len(words(text))
    return math.exp(-abs(n - target) / max(1, target))


def no_repetition(text: str) -> float:
    """Distinct word bigrams / all bigrams (1: nothing repeats); texts under 2 words get 1."""
    w = words(text)
    grams = list(zip(w, w[1:]))
    return len(set(grams)) / len(grams) if grams else 1.0


def politeness(text: str) -> float:
    """Polite phrases found, out of the list POLITE, capped at 2 and halved: 0, 0.5 or 1."""
    low = text.lower()
    return min(2, sum(p in low for p in POLITE)) / 2


@dataclass(frozen=True)
class Reward:
    name: str  # e.g. "contains 'thank'"
    key: str  # a Python identifier (TRL logs rewards under the function's name)
    fn: Callable[[str], float]
    formula: str  # LaTeX

    def __call__(self, text: str) -> float:
        return float(self.fn(text))


REWARD_KINDS = ("length", "contains", "no_repetition", "politeness")


def make_reward(kind: str, word: str = "thank", target: int = 5) -> Reward:
    """One of REWARD_KINDS, with its parameter; ValueError for an unknown kind or a bad parameter."""
    if kind == "contains":
        word = (word or "").strip().lower()
        if not WORD.fullmatch(word):
            raise ValueError("The word must be letters only (one word), e.g. 'thank'.")
        return Reward(f"contains '{word}'", "contains_word", lambda t: contains_word(t, word),
                      rf"r = \mathbb{{1}}[\text{{'{word}'}} \in y]")
    if kind == "length":
        if not 1 <= int(target) <= 200:
            raise ValueError("The length target must be between 1 and 200 words.")
        return Reward(f"length {target} words", "length_target", lambda t: length_target(t, int(target)),
                      rf"r = \exp\left(-\frac{{|\,\#\text{{words}}(y) - {target}\,|}}{{{target}}}\right)")
    if kind == "no_repetition":
        return Reward("no repetition", "no_repetition", no_repetition,
                      r"r = \frac{\#\text{distinct word bigrams}}{\#\text{word bigrams}}")
    if kind == "politeness":
        return Reward("politeness", "politeness", politeness,
                      r"r = \tfrac{1}{2}\min\left(2,\ \#\text{polite phrases in } y\right)")
    raise ValueError(f"Unknown reward {kind!r}; choose one of {', '.join(REWARD_KINDS)}.")


def completion_text(completion) -> str:
    """TRL passes plain strings (standard format) or message lists (conversational)."""
    if isinstance(completion, list):
        return " ".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def as_trl(reward: Reward, on_call: Callable[[list, list, list[float]], None] | None = None):
    """The reward as TRL's reward function; `on_call(prompts, completions, rewards)` sees every group scored."""
    def fn(prompts, completions, **kwargs):
        texts = [completion_text(c) for c in completions]
        values = [reward(t) for t in texts]
        if on_call is not None:
            on_call(list(prompts), texts, values)
        return values

    fn.__name__ = reward.key
    return fn
