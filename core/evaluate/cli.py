"""Evaluation commands: perplexity, kl, mc, by-hand (registered with core.cli's @command)."""

from __future__ import annotations

import argparse
from typing import Any

from core.cli import add_model_args, command, load_from_args


def _read_text(args: argparse.Namespace) -> str:
    if getattr(args, "file", None):
        from pathlib import Path

        try:
            return Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {args.file}: {exc}") from exc
    return args.text


def _perplexity_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to score")
    src.add_argument("--file", help="read the text from this file")
    p.add_argument("--window", type=int, default=None, help="tokens per forward pass (default: context, max 1024)")
    p.add_argument("--stride", type=int, default=None, help="tokens between window starts (default: window / 2)")
    p.add_argument("--tokens", action="store_true", help="also list every token with its NLL and context")


@command("perplexity", "sliding-window perplexity of a text (window, stride, per-token NLL)", _perplexity_args)
def cmd_perplexity(args: argparse.Namespace) -> Any:
    from core.evaluate.perplexity import perplexity

    text = _read_text(args)
    lm = load_from_args(args)
    out = perplexity(lm, text, args.window, args.stride).as_dict()
    if not args.tokens:
        out.pop("tokens")
    return {"model": lm.spec.label, **out}


def _kl_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--other", required=True, help="the model Q compared with --model (P): a spec like --model")
    p.add_argument("--other-dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="Q's dtype (default: --dtype)")
    p.add_argument("--other-quantization", default="none", choices=["none", "8bit", "4bit"])
    p.add_argument("--text", required=True, help="the text both models read")
    p.add_argument("--positions", action="store_true", help="also list the KL at every position")


@command("kl", "KL(P || Q) of two models' next-token distributions on a text, per position; top-1 agreement",
         _kl_args)
def cmd_kl(args: argparse.Namespace) -> Any:
    import sys

    from core.evaluate.divergence import kl_on_text
    from core.models.loading import load_model, parse_spec

    p = load_from_args(args)
    q_spec = parse_spec(args.other, args.other_dtype or args.dtype, args.device, args.other_quantization)
    q = load_model(q_spec, progress=lambda msg: print(msg, file=sys.stderr))
    out = kl_on_text(p, q, args.text).as_dict()
    if not args.positions:
        out.pop("per_position")
    return {"p": p.spec.label, "q": q.spec.label, **out}


def _mc_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--limit", type=int, default=None, help="score only the first N items")
    p.add_argument("--items", action="store_true", help="also list every item's scores")


@command("mc", "multiple-choice accuracy on the shipped HellaSwag-style items (summed and length-normalised)",
         _mc_args)
def cmd_mc(args: argparse.Namespace) -> Any:
    from core.evaluate.multiple_choice import load_items, score_items

    items = load_items()
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError("--limit must be at least 1")
        items = items[: args.limit]
    lm = load_from_args(args)
    out = score_items(lm, items).as_dict()
    if not args.items:
        out.pop("scores")
    return {"model": lm.spec.label, **out}


def _by_hand_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--text", required=True, help="its first three tokens are used")
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--head", type=int, default=0)


@command("by-hand", "one head's q, k, v for three tokens, softmax(qK^T/sqrt(d)) by hand vs the model's weights",
         _by_hand_args)
def cmd_by_hand(args: argparse.Namespace) -> Any:
    from core.evaluate.attention_exercises import model_attention

    lm = load_from_args(args)
    m = model_attention(lm, args.text, args.layer, args.head)
    return {"model": lm.spec.label, "tokens": m.tokens, "layer": m.layer, "head": m.head, "kv_head": m.kv_head,
            "head_dim": m.head_dim, "scaling": m.scaling, "rope": m.rope,
            "q": m.q.tolist(), "keys": m.keys.tolist(), "values": m.values.tolist(),
            "dot_products": m.raw.tolist(), "scaled_scores": m.scaled.tolist(), "weights": m.weights.tolist(),
            "model_weights": m.model_weights.tolist(), "max_weight_difference": m.max_weight_difference,
            "output": m.output.tolist()}
