"""What each alignment run holds at its peak, declared before it starts so the server can admit it.

Every run trains a private fp32 copy of the model (the shared one is only read); per copy:

    weights 4 B/param · gradients 4 B · AdamW's two moments 8 B     (what trains)
    reward model  one copy of the backbone; only the head (and `train_layers` blocks) trains
    DPO           the policy (trained) + a frozen reference copy
    GRPO          the policy (trained); the reference is the policy with its adapter off (TRL), so no copy
    PPO step      the policy (one SGD step: weights + gradients) + a frozen copy for the old log-probabilities

plus the activations of one batch: ~2·34·s·h bytes per token and layer in fp32 (Korthikanti et al. 2022) and
the logits with their gradient (3·4·V bytes per token).
"""

from __future__ import annotations

from typing import Any


def _shape(config: Any) -> tuple[int, int, int]:
    return (int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 0),
            int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 0),
            int(getattr(config, "vocab_size", 0) or 0))


def activation_bytes(config: Any, tokens: int) -> int:
    hidden, layers, vocab = _shape(config)
    return int(tokens * (2 * 34 * hidden * layers + 3 * 4 * vocab))


def peak_bytes(kind: str, n_params: int, config: Any, tokens: int = 8 * 256) -> int:
    """Declared peak of an alignment job of `kind` (reward | dpo | grpo | ppo) on a model of `n_params`."""
    fp32 = 4 * n_params
    trains = 16 * n_params  # weights, gradients, two AdamW moments
    copies = {"reward": fp32, "dpo": trains + fp32, "grpo": trains, "ppo": fp32 + 2 * fp32}
    if kind not in copies:
        raise ValueError(f"unknown alignment job {kind!r}")
    return copies[kind] + activation_bytes(config, tokens)
