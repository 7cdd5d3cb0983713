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


def test_a_refusal_shows_the_estimate_and_the_measured_peak(monkeypatch):
    """A batch too large for the free memory is refused before it starts; the message carries the formula's
    figure and the allocator's measured peak (two and four sequences, extrapolated to the batch), which agree within 25 %."""
    from dataclasses import replace

    import core.models.memory
    from core.train.pretrain import check_memory
    from core.units import format_bytes

    config = TrainConfig(**{**DEFAULT, "batch_size": 64})
    need = estimate_step_bytes(config, 65)
    monkeypatch.setattr(core.models.memory, "available_bytes", lambda device="cpu": need)
    with pytest.raises(ValueError) as err:
        check_memory(config, 65)
    p2, p4 = (measure_step_bytes(replace(config, batch_size=b), 65) for b in (2, 4))
    measured = p4 + 60 * (p4 - p2) // 2
    assert measured == pytest.approx(measure_step_bytes(config, 65), rel=0.05)  # the line holds
    assert f"about {format_bytes(need)} of activations (measured: {format_bytes(measured)}" in str(err.value)
    assert measured == pytest.approx(need, rel=0.25)
    monkeypatch.setattr(core.models.memory, "available_bytes", lambda device="cpu": 2 * need)
    check_memory(config, 65)  # half of the free memory holds it: no refusal
