"""Activation memory of one training micro-batch of the lab's GPT: the estimate beside the measured peak.

    .venv/bin/python bench/activation_memory.py

The peak comes from the allocator's records (torch.profiler, profile_memory) of one forward + backward
on CPU; the estimate is `core.train.pretrain.estimate_step_bytes`, which the Pre-training page uses to
refuse runs that cannot fit.
"""

from __future__ import annotations

import time

import _util  # noqa: F401  (puts the repository on sys.path)

from core.train.config import TrainConfig
from core.train.pretrain import estimate_step_bytes, measure_step_bytes

VOCAB = 65  # Tiny Shakespeare, characters
SIZES = [dict(n_layer=2, n_head=2, n_embd=64, block_size=32, batch_size=4),
         dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12),  # the page's default
         dict(n_layer=6, n_head=6, n_embd=192, block_size=128, batch_size=16)]


def main() -> None:
    print(f"{'size':<34} {'dropout':>7} {'measured':>12} {'estimate':>12} {'est/meas':>9} {'s':>5}")
    for size in SIZES:
        for dropout in (0.0, 0.1):
            config = TrainConfig(**size, dropout=dropout)
            start = time.perf_counter()
            measured = measure_step_bytes(config, VOCAB)
            estimate = estimate_step_bytes(config, VOCAB)
            name = "L{n_layer} h{n_head} C{n_embd} T{block_size} B{batch_size}".format(**size)
            print(f"{name:<34} {dropout:>7} {measured:>12,} {estimate:>12,} {estimate / measured:>9.2f} "
                  f"{time.perf_counter() - start:>5.1f}")


if __name__ == "__main__":
    main()
