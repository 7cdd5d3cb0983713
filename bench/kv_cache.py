"""KV-cache speed-up: 128 greedy new tokens on the embedded model, CPU, with and without the cache.

    .venv/bin/python bench/kv_cache.py [--new-tokens 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "The history of the printing press begins in the fifteenth century, when"


def main() -> int:
    import torch

    from core.decode.comparator import prompt_ids
    from core.decode.kv_cache import cache_size, measure
    from core.units import format_bytes
    from core.models.loading import load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    ids = prompt_ids(lm, PROMPT)
    m = measure(lm, ids, args.new_tokens)
    size = cache_size(lm, ids + m.with_cache.token_ids)
    w, wo = m.with_cache, m.without_cache
    print(f"model {lm.spec.label}, prompt {len(ids)} tokens, {args.new_tokens} new tokens, torch threads "
          f"{torch.get_num_threads()}, cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    print(f"with cache:    {w.total:7.2f} s  (prefill {w.seconds[0] * 1000:.0f} ms, then {w.decode_mean * 1000:.1f} ms"
          f"/token)")
    print(f"without cache: {wo.total:7.2f} s  (first {wo.seconds[0] * 1000:.0f} ms, "
          f"last {wo.seconds[-1] * 1000:.0f} ms)")
    print(f"speed-up {m.speedup:.2f}x; same tokens: {m.same_tokens}")
    print(f"cache after {size.tokens} tokens: formula {format_bytes(size.formula_bytes)} "
          f"({size.formula_bytes:,} B), tensors {format_bytes(size.actual_bytes)} ({size.actual_bytes:,} B)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
