"""`python -m core encoder-attention`: the Encoder attention page's numbers from a terminal (JSON on stdout)."""

from __future__ import annotations

import argparse
from typing import Any

from core.cli import add_model_args, command, load_from_args


def _encoder_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--text", required=True, help="the text the encoder reads")
    p.add_argument("--target", help="encoder-decoder models: the text the decoder reads (after its start token)")
    p.add_argument("--which", choices=["encoder", "decoder", "cross"], default=None,
                   help="also print one head's matrix: encoder self-, decoder self- or cross-attention")
    p.add_argument("--layer", type=int, default=0, help="with --which: layer (0-based)")
    p.add_argument("--head", type=int, default=0,
                   help="with --which: head (0-based; -1: the mean of the layer's heads)")
    p.add_argument("--max-tokens", type=int, default=512, help="cut the text (and the target) after this many tokens")


@command("encoder-attention", "encoder / encoder-decoder attention: tokens, shapes, row-sum check, one head's matrix",
         _encoder_args)
def cmd_encoder_attention(args: argparse.Namespace) -> Any:
    from core.circuits import encoder_attention as E

    if args.max_tokens < 2:
        raise ValueError("--max-tokens must be at least 2")
    lm = load_from_args(args, causal=False)
    att = E.encoder_attention(lm, args.text, args.target, max_tokens=args.max_tokens)
    result = {"model": lm.spec.label, **E.summary(att)}
    if args.which:
        if args.which not in att.available:
            raise ValueError(f"a {att.kind} model has no {E.WHICH[args.which]}; choose {' or '.join(att.available)}")
        layers, heads = att.stack(args.which).shape[:2]
        if not 0 <= args.layer < layers or not -1 <= args.head < heads:
            raise ValueError(f"--layer must lie in 0..{layers - 1} and --head in 0..{heads - 1} (or -1: the mean)")
        matrix = E.head_matrix(att, args.which, args.layer, None if args.head < 0 else args.head)
        result["attention"] = {"which": args.which, "layer": args.layer, "head": args.head,
                               "matrix": matrix.round(decimals=6).tolist()}
    return result
