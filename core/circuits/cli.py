"""`python -m core dla | ablate | patch | heads`: the Circuits pages' numbers from a terminal (JSON on stdout)."""

from __future__ import annotations

import argparse
from typing import Any

from core.cli import add_model_args, command, load_from_args


def _dla_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--text", required=True, help="the text to run through the model")
    p.add_argument("--position", type=int, default=-1, help="position whose next-token logit is explained (-1: last)")
    p.add_argument("--target", help="token text (first token used) or id (default: the model's top-1)")
    p.add_argument("--contrast", help="a second token: every figure becomes logit[target] - logit[contrast]")


@command("dla", "direct logit attribution: each head's, MLP's and the embedding's share of one logit", _dla_args)
def cmd_dla(args: argparse.Namespace) -> Any:
    from core.circuits.dla import direct_logit_attribution

    a = direct_logit_attribution(load_from_args(args), args.text, args.position, args.target, args.contrast)
    return {"target_id": a.target_id, "logit": a.logit, "components": a.components, "sum": a.total}


def _ablate_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--text", required=True, help="the text to run through the model")
    p.add_argument("--heads", default="", help="heads to switch off, LAYER.HEAD comma-separated (from 0)")
    p.add_argument("--mlps", default="", help="MLPs to switch off, layers comma-separated")
    p.add_argument("--attn-layers", default="", help="whole attention layers to switch off")
    p.add_argument("--mode", choices=["zero", "mean"], default="zero")
    p.add_argument("--top-k", type=int, default=5)


@command("ablate", "switch heads / MLPs off (zero or mean) and compare the next-token prediction", _ablate_args)
def cmd_ablate(args: argparse.Namespace) -> Any:
    from core.circuits.ablation import Ablation, ablate
    from core.circuits.components import parse_heads, parse_layers

    ab = Ablation(tuple(parse_heads(args.heads)), tuple(parse_layers(args.attn_layers)),
                  tuple(parse_layers(args.mlps)), args.mode)
    if ab.empty:
        raise ValueError("nothing to ablate: give --heads, --mlps or --attn-layers")
    return ablate(load_from_args(args), args.text, ab, k=max(1, args.top_k)).as_dict()


def _patch_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--clean", required=True, help="the clean prompt")
    p.add_argument("--corrupt", required=True, help="the corrupted prompt (same number of tokens)")
    p.add_argument("--target", required=True, help="the clean answer (token text or id)")
    p.add_argument("--contrast", required=True, help="the corrupted answer (token text or id)")
    p.add_argument("--what", choices=["resid", "heads", "mlp"], default="heads")
    p.add_argument("--batch-size", type=int, default=32, help="patched runs per forward pass")


@command("patch", "activation patching: restored fraction of the logit difference per layer x position/head",
         _patch_args)
def cmd_patch(args: argparse.Namespace) -> Any:
    from core.circuits.patching import activation_patching

    return activation_patching(load_from_args(args), args.clean, args.corrupt, args.target, args.contrast,
                               args.what, batch_size=max(1, args.batch_size)).as_dict()


def _heads_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--role", choices=["induction", "previous", "duplicate"], default="induction")
    p.add_argument("--length", type=int, default=25, help="random tokens per copy (the sequence repeats them once)")
    p.add_argument("--seed", type=int, default=0)


@command("heads", "head roles: induction, previous-token or duplicate-token score of every head", _heads_args)
def cmd_heads(args: argparse.Namespace) -> Any:
    from core.circuits.head_roles import head_roles

    r = head_roles(load_from_args(args), args.role, args.length, args.seed)
    return {"role": r.role, "scores": r.scores.tolist()}
