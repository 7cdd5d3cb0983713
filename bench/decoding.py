"""Decoding comparator speed on the embedded model, CPU, 32 new tokens. Targets:
- the default comparison (greedy, beam 3, temperature, top-k, top-p, min-p: 8 rows in one batch) costs at
  most 3x the wall time of one `model.generate` greedy run;
- greedy alone through the comparator (every step's top-20 kept) is within 10% of generate's tokens/s.

Each figure is the median of REPEATS interleaved runs after a warm-up, as wall time and as this process's
CPU time (on a machine shared with other work, CPU time with --threads 1 is the steadier figure).

    .venv/bin/python bench/decoding.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "The old lighthouse keeper climbed the spiral stairs every evening to"
NEW = 32


def main() -> int:
    import torch

    from core.decode import strategies as S
    from core.decode.comparator import compare, prompt_ids
    from core.models.loading import load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--sequential", action="store_true", help="also time the strategies one after another")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    ids = prompt_ids(lm, PROMPT)
    inp = torch.tensor([ids])

    def generate(**kw) -> tuple[float, float, int]:
        start, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            out = lm.model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), max_new_tokens=NEW,
                                    pad_token_id=lm.tokenizer.pad_token_id, **kw)
        return time.perf_counter() - start, time.process_time() - cpu, out.shape[1] - len(ids)

    def comparator(strategies) -> tuple[float, float, int]:
        start, cpu = time.perf_counter(), time.process_time()
        result = compare(lm, PROMPT, strategies, NEW, seed=0)
        return time.perf_counter() - start, time.process_time() - cpu, result.outputs[0].length

    default = S.default_comparison()
    generate(do_sample=False)
    comparator(default)  # warm-up
    gen, greedy, full = [], [], []
    for _ in range(args.repeats):
        gen.append(generate(do_sample=False))
        greedy.append(comparator([S.make("greedy")]))
        full.append(comparator(default))
    print(f"model {lm.spec.label}, prompt {len(ids)} tokens, {NEW} new tokens, torch threads "
          f"{torch.get_num_threads()}, cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, "
          f"median of {args.repeats}")
    for clock, col in (("wall", 0), ("cpu", 1)):
        g_s, c_s, f_s = (statistics.median(r[col] for r in runs) for runs in (gen, greedy, full))
        g_tps = statistics.median(r[2] / r[col] for r in gen)
        c_tps = statistics.median(r[2] / r[col] for r in greedy)
        print(f"[{clock}] model.generate greedy:          {g_s * 1000:8.0f} ms  {g_tps:6.1f} tokens/s")
        print(f"[{clock}] comparator greedy (steps kept): {c_s * 1000:8.0f} ms  {c_tps:6.1f} tokens/s  "
              f"-> {c_tps / g_tps:.2f}x generate's tokens/s (target >= 0.90)")
        print(f"[{clock}] comparator default, {sum(s.rows for s in default)} rows:   {f_s * 1000:8.0f} ms  "
              f"-> {f_s / g_s:.2f}x one greedy generate (target <= 3)")
    if args.sequential:
        seq = [generate(do_sample=False, num_beams=3) if s.kind == "beam" else
               generate(do_sample=s.kind == "sample", temperature=s.filters.temperature or 1.0,
                        top_k=s.filters.top_k or 0, top_p=s.filters.top_p or 1.0, min_p=s.filters.min_p)
               for s in default]
        g_wall = statistics.median(r[0] for r in gen)
        print(f"the same 6 strategies one after another with generate: {sum(r[0] for r in seq) * 1000:.0f} ms "
              f"wall -> {sum(r[0] for r in seq) / g_wall:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
