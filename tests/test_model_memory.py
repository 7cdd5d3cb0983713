"""core/models/memory.py against real objects: bitsandbytes' 8-bit and NF4 models loaded on CPU
(their own `get_memory_footprint()` and quantization state), and the one dtype type."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from core.dtypes import as_dtype
from core.models.memory import config_weight_tensors, estimate_weight_bytes, weight_bytes, weight_tensors


def test_every_spelling_of_a_dtype_is_one_dtype():
    assert as_dtype("bf16") is as_dtype("bfloat16") is as_dtype(torch.bfloat16)
    assert as_dtype("4bit") is as_dtype("int4") is as_dtype("nf4") and as_dtype("4bit").bytes == 0.5
    assert as_dtype("8bit") is as_dtype("int8") and as_dtype("int8").weight_only
    with pytest.raises(ValueError, match="unknown dtype"):
        as_dtype("float3")


def _quant_state_bytes(model: torch.nn.Module) -> int:
    """What bitsandbytes keeps beside the weights: 8-bit row scales (SCB), 4-bit absmax per block."""
    total = 0
    for module in model.modules():
        w = getattr(module, "weight", None)
        qs = getattr(w, "quant_state", None)
        if qs is not None:
            total += qs.absmax.numel() * qs.absmax.element_size()
        scb = getattr(w, "SCB", None)
        if scb is not None:
            total += scb.numel() * scb.element_size()
    return total


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
@pytest.mark.parametrize("quantization, storage", [("8bit", "int8"), ("4bit", "int4")])
def test_planner_count_matches_a_really_quantized_model(quantization, storage):
    from core.models.loading import load_model, parse_spec

    lm = load_model(parse_spec("embedded", quantization=quantization))
    footprint = lm.model.get_memory_footprint()  # the tensors as stored (parameters and buffers)
    state = _quant_state_bytes(lm.model)
    planned = weight_bytes(config_weight_tensors(lm.config), storage, kept_dtype="float32")
    assert planned.storage_bytes == pytest.approx(footprint, rel=0.03)
    assert planned.state_bytes == pytest.approx(state, rel=0.03) and state > 0
    assert estimate_weight_bytes(lm.config, "float32", quantization) == planned.bytes
    # the walk of the loaded model itself finds the same linear layers as the meta-device one
    assert weight_tensors(lm.model) == config_weight_tensors(lm.config)
    # and 1 or 0.5 byte for every parameter, today's count, misses by more than 3 %
    naive = planned.parameters * as_dtype(storage).bytes
    assert abs(naive - footprint) / footprint > 0.03
