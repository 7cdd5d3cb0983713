"""core/train/pretrain.py `estimate_step_bytes` against the real peak of one training step (the allocator's
records through torch.profiler), on small sizes of the lab's GPT."""

from __future__ import annotations

import pytest

from core.train.config import TrainConfig
from core.train.pretrain import estimate_step_bytes, measure_step_bytes

DEFAULT = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12)  # the Pre-training page's default


@pytest.mark.parametrize("extra", [{}, {"dropout": 0.1}, {"mlp": "swiglu", "norm": "rmsnorm", "position": "rope"}])
def test_activation_estimate_follows_the_measured_peak_within_25_percent(extra):
    config = TrainConfig(**DEFAULT, **extra)
    measured = measure_step_bytes(config, 65)
    estimate = estimate_step_bytes(config, 65)
    assert measured > 0
    assert estimate == pytest.approx(measured, rel=0.25), (estimate, measured)


def test_estimate_grows_with_the_batch_like_the_activations():
    small, big = TrainConfig(**DEFAULT), TrainConfig(**{**DEFAULT, "batch_size": 24})
    assert estimate_step_bytes(big, 65) == 2 * estimate_step_bytes(small, 65)
