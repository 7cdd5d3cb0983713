"""Issue 18's figures: the planner's per-tensor weight count against the embedded model really loaded in 8-bit and
NF4 (bitsandbytes on CPU), and Mistral-7B's KV cache at 32k tokens with and without its sliding window.

    .venv/bin/python bench/planner_truth.py
"""

from __future__ import annotations

import _util  # noqa: F401  (puts the repository on sys.path)

from core.data import reference_config
from core.dtypes import as_dtype
from core.models.loading import load_model, parse_spec
from core.models.memory import config_weight_tensors, kv_cache_bytes, weight_bytes


def state_bytes(model) -> int:
    total = 0
    for module in model.modules():
        w = getattr(module, "weight", None)
        for t in (getattr(getattr(w, "quant_state", None), "absmax", None), getattr(w, "SCB", None)):
            if t is not None:
                total += t.numel() * t.element_size()
    return total


def main() -> None:
    print(f"{'embedded in':<8} {'footprint':>13} {'planner':>13} {'diff':>7} {'old count':>13} {'old diff':>8}"
          f" {'scales real':>12} {'planned':>12}")
    for quantization, storage in (("8bit", "int8"), ("4bit", "int4")):
        lm = load_model(parse_spec("embedded", quantization=quantization))
        footprint = lm.model.get_memory_footprint()
        planned = weight_bytes(config_weight_tensors(lm.config), storage, kept_dtype="float32")
        old = int(planned.parameters * as_dtype(storage).bytes)
        print(f"{quantization:<8} {footprint:>13,} {planned.storage_bytes:>13,} "
              f"{(planned.storage_bytes - footprint) / footprint:>+7.2%} {old:>13,} {(old - footprint) / footprint:>+8.1%}"
              f" {state_bytes(lm.model):>12,} {planned.state_bytes:>12,}")
    mistral = reference_config("mistralai/Mistral-7B-v0.1")
    kv = kv_cache_bytes(mistral, 32_768, 1, "bfloat16")
    uncapped = kv.per_token_bytes * 32_768
    print(f"Mistral-7B bf16 KV cache at 32,768 tokens: before {uncapped:,.0f} B ({uncapped / 2**30:.2f} GiB), "
          f"after {kv.bytes:,} B ({kv.bytes / 2**30:.3f} GiB), ratio {uncapped / kv.bytes:.2f}; {kv.rule}")


if __name__ == "__main__":
    main()
