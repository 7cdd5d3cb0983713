"""The pre-training configuration: nanoGPT's key names where they exist, the lab's switches besides.

`TrainConfig.from_dict` takes a nanoGPT-style JSON object; missing keys take the defaults below (nanoGPT's
shakespeare_char settings), unknown keys are refused so that a typo does not silently train something else.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from core.train.model import GPTConfig


@dataclass
class TrainConfig:
    # model (nanoGPT names) and the lab's switches (core.train.model)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0
    bias: bool = False
    norm_position: str = "pre"
    norm: str = "layernorm"
    position: str = "learned"
    mlp: str = "gelu"
    tie_weights: bool = True
    init: str = "scaled"
    # data (core.train.data)
    dataset: str = "tinyshakespeare"
    tokenizer: str = "char"
    text: str = ""
    max_chars: int = 0
    val_fraction: float = 0.1
    chars: str = ""  # filled in at start: the char vocabulary, so a resume encodes the same way
    # optimisation: AdamW, warmup + cosine decay
    batch_size: int = 12
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    max_iters: int = 2000
    decay_lr: bool = True
    warmup_iters: int = 100
    lr_decay_iters: int = 2000
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    seed: int = 1337
    # evaluation, samples, checkpoints
    eval_interval: int = 250
    eval_iters: int = 20
    sample_interval: int = 250
    sample_tokens: int = 200
    checkpoint_interval: int = 0  # 0: at every evaluation
    max_loss: float = 1000.0  # a loss above this counts as exploded (a sane model starts near ln(vocab))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(unknown)}; known keys: {', '.join(known)}")
        out = cls()
        for name, value in values.items():
            default = getattr(out, name)
            try:
                if isinstance(default, bool):
                    value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
                elif isinstance(default, int):
                    if float(value) != int(float(value)):
                        raise ValueError
                    value = int(float(value))
                elif isinstance(default, float):
                    value = float(value)
                else:
                    value = str(value)
            except (TypeError, ValueError):
                raise ValueError(f"config key {name} expects a {type(default).__name__}, got {value!r}") from None
            setattr(out, name, value)
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout, bias=self.bias,
                         norm_position=self.norm_position, norm=self.norm, position=self.position, mlp=self.mlp,
                         tie_weights=self.tie_weights, init=self.init)

    @property
    def interval_checkpoint(self) -> int:
        return self.checkpoint_interval or self.eval_interval

    def validate(self) -> None:
        """ValueError with a message a student can act on; called before any work starts."""
        self.model_config(vocab_size=1).validate()
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"the learning rate must be a positive number, got {self.learning_rate}")
        if not (math.isfinite(self.min_lr) and 0 <= self.min_lr <= self.learning_rate):
            raise ValueError(f"min_lr must lie between 0 and the learning rate {self.learning_rate}, got {self.min_lr}")
        for name in ("batch_size", "gradient_accumulation_steps", "max_iters", "eval_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_iters", "lr_decay_iters", "eval_interval", "sample_interval", "sample_tokens",
                     "checkpoint_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} cannot be negative, got {getattr(self, name)}")
        if self.eval_interval == 0:
            raise ValueError("eval_interval must be at least 1")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("grad_clip and weight_decay cannot be negative (0 switches them off)")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"AdamW's betas must lie in [0, 1), got {self.beta1}, {self.beta2}")
        if self.block_size > 4096:
            raise ValueError(f"block_size {self.block_size} is far beyond what trains on this machine; use at most 4096")


def lr_at(config: TrainConfig, step: int) -> float:
    """nanoGPT's schedule: linear warmup over warmup_iters, cosine decay to min_lr at lr_decay_iters, then flat."""
    if not config.decay_lr:
        return config.learning_rate
    if step < config.warmup_iters:
        return config.learning_rate * (step + 1) / (config.warmup_iters + 1)
    if step > config.lr_decay_iters:
        return config.min_lr
    span = max(1, config.lr_decay_iters - config.warmup_iters)
    ratio = (step - config.warmup_iters) / span
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return config.min_lr + coeff * (config.learning_rate - config.min_lr)
