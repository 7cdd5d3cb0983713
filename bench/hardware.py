"""This machine measured (matmul vs a Python loop, copy bandwidth) and the planner's reference figures.

    .venv/bin/python bench/hardware.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import LlamaConfig  # noqa: E402

from core.hardware import planner, scaling  # noqa: E402
from core.hardware.gpus import find_gpu  # noqa: E402
from core.hardware.measure import measure  # noqa: E402
from core.units import format_bytes  # noqa: E402


def main() -> None:
    print(f"cpus {os.cpu_count()} · torch threads {torch.get_num_threads()} · load average {os.getloadavg()[0]:.1f}")
    for n in (512, 1024, 2048):
        m = measure("cpu", matmul_n=n)
        print(f"cpu matmul fp32 {n}³: {m.matmul_gflops:8.1f} GFLOP/s · python loop {m.python_loop_n}³: "
              f"{m.python_loop_gflops * 1e3:.1f} MFLOP/s (×{m.speedup_vs_python:,.0f}) · copy {m.bandwidth_gbs:.1f} GB/s")
    if torch.cuda.is_available():
        m = measure("cuda", matmul_n=8192, copy_mib=1024)
        print(f"cuda {m.device_name}: matmul bf16 {m.matmul_gflops / 1e3:,.1f} TFLOP/s · copy {m.bandwidth_gbs:,.0f} GB/s")
    llama = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False,
                        architectures=["LlamaForCausalLM"])
    p = planner.plan(llama, find_gpu("H100"), "fp16", 2048, 1)
    print(f"Llama-2-7B KV cache, fp16, 2048 tokens, batch 1: {p.kv_cache_bytes:,} bytes ({format_bytes(p.kv_cache_bytes)})")
    print(f"  on H100 SXM: prefill ≤ {p.prefill_tokens_per_s:,.0f} tok/s, decode ≤ {p.decode_tokens_per_s:,.1f} tok/s")
    for rule in (scaling.twenty_tokens_rule, scaling.chinchilla_optimal, scaling.kaplan_optimal):
        a = rule(5.76e23)
        print(f"5.76e23 FLOPs, {a.rule}: N = {a.parameters:.3e}, D = {a.tokens:.3e}, loss {a.loss:.4f}")


if __name__ == "__main__":
    main()
