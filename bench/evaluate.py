"""Evaluation figures: sliding-window perplexity vs stride, KL of bf16 against fp32, multiple-choice accuracy,
each with its wall time. Figures, not pass/fail.

    .venv/bin/python bench/evaluate.py                       # the embedded model
    .venv/bin/python bench/evaluate.py --model tiny-llama --tokens 256
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data import tiny_shakespeare  # noqa: E402
from core.evaluate.divergence import kl_on_text  # noqa: E402
from core.evaluate.multiple_choice import score_items  # noqa: E402
from core.evaluate.perplexity import perplexity_of_ids  # noqa: E402
from core.models.loading import ModelSpec, load_model  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--tokens", type=int, default=1024, help="Tiny Shakespeare tokens to score")
    ap.add_argument("--window", type=int, default=256)
    args = ap.parse_args()
    lm = load_model(ModelSpec(args.model))
    ids = lm.encode(tiny_shakespeare()[: args.tokens * 8])[: args.tokens]
    print(f"model {lm.name}; {len(ids)} tokens of Tiny Shakespeare; window {args.window}")
    for stride in (args.window, args.window // 2, args.window // 4):
        r, s = timed(lambda: perplexity_of_ids(lm, ids, args.window, stride))
        print(f"  stride {stride:4d}: ppl {r.ppl:8.2f}  scored {r.scored_tokens}  passes {len(r.windows):3d}  {s:6.2f} s")
    bf16 = load_model(ModelSpec(args.model, dtype="bfloat16"))
    text = lm.decode(ids[:256])
    k, s = timed(lambda: kl_on_text(lm, bf16, text))
    print(f"KL(fp32 || bf16) on {len(k.ids)} tokens: mean {k.mean:.3e} nats, max {k.max:.3e}, "
          f"top-1 agreement {100 * k.top1_agreement:.1f}%  {s:.2f} s")
    mc, s = timed(lambda: score_items(lm))
    print(f"multiple choice ({len(mc.scores)} items): summed {100 * mc.accuracy_summed:.1f}%, per token "
          f"{100 * mc.accuracy_normalised:.1f}%, chance {100 * mc.chance:.0f}%  {s:.1f} s")


if __name__ == "__main__":
    main()
