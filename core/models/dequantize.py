"""The float values behind a bitsandbytes-quantized weight, so statistics compare across precisions.

A 4-bit NF4 weight (`Params4bit`) is stored as packed uint8 codes, two per byte, plus one absmax per block
of 64 weights (its `quant_state`): w = absmax_block * NF4_code_value. An 8-bit LLM.int8() weight
(`Int8Params`) is int8 codes CB plus one float32 scale per output row SCB: w = CB * SCB_row / 127.
Both are turned back into float32 here; everything else passes through unchanged.
"""

from __future__ import annotations

import logging
import warnings

import torch


class _Once(logging.Filter):
    """Let the first record starting with `prefix` through, drop the repeats."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix, self.seen = prefix, False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        if self.seen:
            return False
        self.seen = True
        return True


# bitsandbytes says this on every 8-bit matmul of a non-fp16 input: ~3,000 lines per 8-bit forward pass on
# CPU. It logs it (logging, not warnings) in recent versions; older ones used warnings.warn.
MATMUL8BIT_NOTICE = "MatMul8bitLt: inputs will be cast"
logging.getLogger("bitsandbytes.autograd._functions").addFilter(_Once(MATMUL8BIT_NOTICE))
warnings.filterwarnings("ignore", message=MATMUL8BIT_NOTICE)


def int8_scale(model: torch.nn.Module, name: str) -> torch.Tensor | None:
    """SCB [out_features] of the 8-bit weight `name`, wherever bitsandbytes keeps it: on the weight until the
    layer's first forward pass, which moves CB and SCB to the module's `state` (Linear8bitLt.init_8bit_state)
    and leaves the weight with int8 codes and SCB = None. None for any other parameter."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    p = getattr(module, attr, None)
    if p is None or p.dtype != torch.int8:
        return None
    scb = getattr(p, "SCB", None)
    if scb is None and attr == "weight":
        scb = getattr(getattr(module, "state", None), "SCB", None)
    return scb


def quantization_of(p: torch.Tensor, scale: torch.Tensor | None = None) -> str | None:
    """'nf4' / 'fp4' for a 4-bit parameter, 'int8' for an 8-bit one (its SCB on it, or `scale` from
    int8_scale once a forward pass has moved it), None for a plain float tensor."""
    state = getattr(p, "quant_state", None)
    if state is not None:
        return str(getattr(state, "quant_type", "4bit"))
    if p.dtype == torch.int8 and (scale is not None or getattr(p, "SCB", None) is not None):
        return "int8"
    return None


@torch.no_grad()
def float_values(p: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor | None:
    """The weights of `p` as floats in their logical shape: `p` itself when it already holds floats,
    a float32 dequantized copy for a bitsandbytes 4-bit or 8-bit weight (`scale`: its SCB from int8_scale),
    None when there are no values (the meta device)."""
    if p.device.type == "meta" or p.numel() == 0:
        return None
    if p.is_floating_point() and getattr(p, "quant_state", None) is None:
        return p.detach()
    kind = quantization_of(p, scale)
    if kind is None:
        return None
    import bitsandbytes.functional as bnb_f

    if kind == "int8":
        scales = (scale if scale is not None else p.SCB).to(p.device)
        return bnb_f.int8_vectorwise_dequant(p.data, scales).float()  # CB * SCB[:, None] / 127
    return bnb_f.dequantize_4bit(p.data, p.quant_state).float()
