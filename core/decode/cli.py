"""`python -m core generate | compare | kv-cache`: decoding from a terminal (JSON on stdout)."""

from __future__ import annotations

import argparse
import math
from typing import Any

from core.cli import add_model_args, command, load_from_args


def _generate_args(p: argparse.ArgumentParser) -> None:
    from core.decode.strategies import NAMES

    add_model_args(p)
    p.add_argument("--text", required=True, help="the prompt")
    p.add_argument("--strategy", default="greedy", choices=NAMES)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (same seed, same text)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--min-p", type=float)
    p.add_argument("--typical", type=float, help="typical sampling mass (0, 1)")
    p.add_argument("--num-beams", type=int)
    p.add_argument("--repetition-penalty", type=float)


@command("generate", "continue a prompt with one decoding strategy; per-step chosen-token probabilities",
         _generate_args)
def cmd_generate(args: argparse.Namespace) -> Any:
    from core.decode import strategies as S
    from core.decode.comparator import compare

    strategy = S.make(args.strategy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                      min_p=args.min_p, typical=args.typical, num_beams=args.num_beams,
                      repetition_penalty=args.repetition_penalty)
    if args.strategy != "beam" and args.num_beams is not None:
        raise ValueError("--num-beams applies to --strategy beam only")
    strategy.check()
    lm = load_from_args(args)
    result = compare(lm, args.text, [strategy], args.max_new_tokens, args.seed)
    out = result.outputs[0]
    steps = [{"token": t, "id": i, "p_model": round(p, 6),
              "p_sampled": round(s.picked_p_filtered, 6) if s else None}
             for t, i, p, s in zip(lm.token_strings(out.token_ids), out.token_ids,
                                   [math.exp(lp) for lp in out.logprobs],
                                   out.steps or [None] * out.length)]
    return {"model": lm.spec.label, "strategy": strategy.name, "settings": strategy.describe(),
            "seed": args.seed, "prompt_tokens": len(result.prompt_ids), "text": lm.decode(out.token_ids),
            "token_ids": out.token_ids, "logprob": round(out.logprob, 6), "perplexity": round(out.perplexity, 4),
            "steps": steps, "notice": result.notice, "seconds": round(result.seconds, 4)}


def _compare_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--text", required=True, help="the prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=1, help="draws per sampling strategy (for distinct-n)")


@command("compare", "the default comparison (greedy, beam 3, temperature, top-k, top-p, min-p) as one batch",
         _compare_args)
def cmd_compare(args: argparse.Namespace) -> Any:
    from core.decode import strategies as S
    from core.decode.comparator import compare, distinct_n

    strategies = S.default_comparison(args.samples)
    for s in strategies:
        s.check()
    lm = load_from_args(args)
    result = compare(lm, args.text, strategies, args.max_new_tokens, args.seed)
    entries = []
    for s in strategies:
        outs = result.of(s.name)
        for o in outs:
            entries.append({"name": s.name, "sample": o.sample, "settings": s.describe(),
                            "text": lm.decode(o.token_ids), "token_ids": o.token_ids,
                            "logprob": round(o.logprob, 6), "perplexity": round(o.perplexity, 4),
                            "length": o.length,
                            "distinct_1": round(distinct_n([x.token_ids for x in outs], 1), 4),
                            "distinct_2": round(distinct_n([x.token_ids for x in outs], 2), 4)})
    return {"model": lm.spec.label, "seed": args.seed, "prompt_tokens": len(result.prompt_ids),
            "rows": result.rows, "forward_passes": result.forwards, "seconds": round(result.seconds, 4),
            "notice": result.notice, "strategies": entries}


def _kv_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--text", required=True, help="the prompt")
    p.add_argument("--new-tokens", type=int, default=32)


@command("kv-cache", "greedy decode timed with and without the KV cache; cache bytes by formula and in memory",
         _kv_args)
def cmd_kv_cache(args: argparse.Namespace) -> Any:
    from core.decode.comparator import prompt_ids
    from core.decode.kv_cache import cache_size, measure

    lm = load_from_args(args)
    ids = prompt_ids(lm, args.text)
    m = measure(lm, ids, args.new_tokens)
    size = cache_size(lm, ids + m.with_cache.token_ids)
    timing = lambda t: {"total_s": round(t.total, 4), "first_s": round(t.seconds[0], 5),  # noqa: E731
                        "decode_mean_s": round(t.decode_mean, 5), "per_token_s": [round(x, 5) for x in t.seconds]}
    return {"model": lm.spec.label, "prompt_tokens": m.prompt_tokens, "new_tokens": args.new_tokens,
            "speedup": round(m.speedup, 3), "same_tokens": m.same_tokens,
            "with_cache": timing(m.with_cache), "without_cache": timing(m.without_cache),
            "cache": {"tokens": size.tokens, "dtype": size.dtype, "formula_bytes": size.formula_bytes,
                      "actual_bytes": size.actual_bytes, "per_token_formula": size.formula,
                      "layer_k_shape": list(size.layer_shapes[0]), "note": size.note}}
