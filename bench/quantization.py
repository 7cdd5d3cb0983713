"""The quantization lab on the embedded model (or another): every variant's memory, load time, decoding speed,
perplexity of the held-out text, KL to fp32 and top-1 agreement, as a table.

    .venv/bin/python bench/quantization.py                       # embedded, all five variants
    .venv/bin/python bench/quantization.py --model tiny-gpt2 --variants fp32,nf4

Figures move with the machine's load: say what else ran when you quote them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from core.hardware.quantization import VARIANTS, held_out_text, run_lab  # noqa: E402
from core.models.loading import load_model  # noqa: E402
from core.units import format_bytes  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded")
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    lm = load_model(args.model)
    print(f"model {lm.name} · torch threads {torch.get_num_threads()} · cpus {os.cpu_count()} · "
          f"load average {os.getloadavg()[0]:.1f} · held-out text {len(held_out_text()):,} chars")
    start = time.perf_counter()
    results = run_lab(lm, [v for v in args.variants.split(",") if v], progress=lambda m: print(" ..", m))
    print(f"{'variant':18} {'memory':>11} {'load s':>7} {'tok/s':>7} {'ppl':>9} {'mean KL':>9} {'max KL':>8} {'top-1':>7}")
    for r in results:
        if r.error:
            print(f"{r.label:18} failed: {r.error}")
            continue
        print(f"{r.label:18} {format_bytes(r.memory_bytes):>11} {r.load_seconds:7.2f} {r.tokens_per_s:7.1f} "
              f"{r.perplexity:9.3f} {r.mean_kl:9.5f} {r.max_kl:8.4f} {r.top1_agreement:7.1%}")
    print(f"scored tokens {results[0].scored_tokens} · total {time.perf_counter() - start:.0f} s · "
          f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
