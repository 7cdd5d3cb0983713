"""The CUDA paths, on a machine with an NVIDIA GPU: every model the picker offers, loaded on the GPU,
run through the same core functions the pages use, with the figures that matter there (parity of the
hand computation, load time, memory, weight-statistics time). Prints "skipped" without a GPU.

    .venv/bin/python bench/cuda_paths.py [--models embedded tiny-llama ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.inspect import attention as core_attn  # noqa: E402
from core.inspect import stepwise as sw  # noqa: E402
from core.models.capture import run_forward, top_k  # noqa: E402
from core.data import tiny_shakespeare  # noqa: E402
from core.inspect.lens import lens_hook_modules, logit_lens  # noqa: E402
from core.models.loading import ModelSpec, load_model  # noqa: E402
from core.inspect.weights import weight_stats  # noqa: E402

TEXT = "The capital of France is Paris, and the capital of Italy is"


def check(spec: ModelSpec, reference_top: str | None = None) -> str | None:
    torch.cuda.reset_peak_memory_stats()
    lm = load_model(spec)
    hooks = tuple(dict.fromkeys(lens_hook_modules(lm.model)
                                + (sw.parity_hooks(lm) if spec.quantization == "none" else ())))
    cap = run_forward(lm, TEXT, hook_modules=hooks)
    top = top_k(lm, cap.next_token_probs(), 1)[0]
    parts = [f"{spec.label:42s} on {lm.device}: load {lm.load_seconds:5.1f} s, weights {lm.memory_bytes() / 2**20:6.0f} MiB, "
             f"peak GPU {torch.cuda.max_memory_allocated() / 2**20:6.0f} MiB, next token {top['token']!r} "
             f"p={top['prob']:.3f}" + ("" if reference_top is None else
                                       f" ({'same as' if top['token'] == reference_top else 'differs from'} fp32)")]
    if spec.quantization == "none":
        p = sw.parity(lm, cap, chained=True)
        parts.append(f"    parity (hand vs model): worst layer {max(p.per_layer):.2e}, logits {p.logits:.2e}, "
                     f"chained logits {p.chained_logits:.2e} -> {'OK' if p.ok else 'above'} tolerance {p.tolerance:g}")
        long = run_forward(lm, tiny_shakespeare()[:4000], hook_modules=sw.parity_hooks(lm))
        p = sw.parity(lm, long)
        parts.append(f"    parity on {long.seq_len} tokens of Tiny Shakespeare: worst {p.worst:.2e} "
                     f"-> {'OK' if p.ok else 'above tolerance'}")
    lens = logit_lens(lm.model, cap)
    stats = core_attn.head_statistics(core_attn.attention_stack(cap))
    parts.append(f"    logit lens {lens.layers} layers; attention stats {tuple(stats['entropy'].shape)} (layers x heads)")
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        ws = weight_stats(lm.model, spec.key, cache_dir=Path(cache))
        cold = time.perf_counter() - start
        start = time.perf_counter()
        weight_stats(lm.model, spec.key, cache_dir=Path(cache))
        warm = time.perf_counter() - start
    parts.append(f"    weight stats: {len(ws.rows)} tensors ({len(ws.skipped)} quantized, left out), cold {cold:.2f} s, "
                 f"warm {warm:.3f} s")
    print("\n".join(parts), flush=True)
    del lm
    torch.cuda.empty_cache()
    return top["token"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="*", default=["tiny-gpt2", "tiny-llama", "tiny-qwen2", "embedded"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA GPU on this machine")
        return 0
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    failures = 0
    for source in args.models:
        variants = [ModelSpec(source, device="cuda")]
        if source == "embedded":
            variants += [ModelSpec(source, dtype="bfloat16", device="cuda"), ModelSpec(source, dtype="float16"),
                         ModelSpec(source, device="cuda", quantization="8bit"),
                         ModelSpec(source, dtype="bfloat16", device="cuda", quantization="4bit")]
        reference = None
        for spec in variants:
            try:
                top = check(spec, reference)
                reference = reference or top
            except Exception:  # noqa: BLE001 - report every path, then fail at the end
                failures += 1
                print(f"FAILED {spec.label} on {spec.device}:\n{traceback.format_exc()}", flush=True)
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
