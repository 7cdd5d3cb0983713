"""`python -m core <command>`: the lab's numbers from a terminal, for scripts, notebooks and benchmarks.

Each command prints JSON on stdout. Model specs: `embedded`, `tiny-gpt2`, `tiny-llama`, `tiny-qwen2`,
a Hub id or a local folder. Errors a user can fix print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], Any]]] = {}


def command(name: str, help: str, add_args: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Register `fn(args) -> JSON-able` as a subcommand."""
    def wrap(fn: Callable[[argparse.Namespace], Any]):
        COMMANDS[name] = (help, add_args, fn)
        return fn
    return wrap


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="embedded",
                   help="embedded | tiny-gpt2 | tiny-llama | tiny-qwen2 | Hub id | folder (encoder-attention: "
                        "tiny-bert | tiny-t5 | a Hub encoder or seq2seq model)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bfloat16 for a local model above ~1B parameters on the CPU, else float32")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quantization", default="none", choices=["none", "8bit", "4bit"])


def load_from_args(args: argparse.Namespace, causal: bool = True):
    """The model the arguments name; `causal` (most commands): an encoder or encoder-decoder model is refused
    with a message naming the command that shows it, instead of failing inside the command."""
    from core.models.loading import ModelLoadError, load_model, parse_spec

    lm = load_model(parse_spec(args.model, args.dtype, args.device, args.quantization),
                    progress=lambda msg: print(msg, file=sys.stderr))
    if causal and lm.kind != "causal":
        raise ModelLoadError(f"{lm.name} is an {lm.kind} model; this command needs a causal language model. "
                             "`python -m core encoder-attention` shows its attention.")
    return lm


@command("info", "print the model card as JSON", add_model_args)
def cmd_info(args: argparse.Namespace) -> Any:
    return load_from_args(args, causal=False).card()


def _params_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", help="path to a config.json (counted on the meta device, no weights)")
    g.add_argument("--reference", help="a model id from the shipped reference configs, e.g. gpt2")
    add_model_args(p)


@command("params", "count parameters from a config.json or a model", _params_args)
def cmd_params(args: argparse.Namespace) -> Any:
    from core.data import config_from_dict, reference_config
    from core.models.params import count_parameters

    if args.config:
        try:
            fields = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {args.config}: {exc}") from exc
        return count_parameters(config_from_dict(fields))
    if args.reference:
        return count_parameters(reference_config(args.reference))
    return count_parameters(load_from_args(args, causal=False).model)


# ---------------------------------------------------------------- inside the model (forward, ...)


def _architecture_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", help="path to a config.json (built on the meta device, no weights)")
    g.add_argument("--reference", help="a model id from the shipped reference configs, e.g. gpt2")
    g.add_argument("--hub", help="a Hugging Face Hub id: only its config.json is fetched")
    p.add_argument("--kv-dtype", default=None, help="element type for the KV cache: float32 | bfloat16 | float16 | "
                   "float8 | int8 | int4 (default: the model's dtype, or bfloat16 for a config)")
    add_model_args(p)


@command("architecture", "the block diagram (module graph), dimensions, family and KV cache per token",
         _architecture_args)
def cmd_architecture(args: argparse.Namespace) -> Any:
    from dataclasses import asdict

    from core.inspect.architecture import architecture_summary, config_from_json_text, kv_cache_per_token
    from core.data import reference_config, reference_configs
    from core.inspect.diagram import build_diagram, diagram_from_config, to_dot
    from core.models.loading import hub_config

    if args.config:
        try:
            text = Path(args.config).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read {args.config}: {exc}") from exc
        config = config_from_json_text(text)
        diagram, dtype = diagram_from_config(config), args.kv_dtype or "bfloat16"
    elif args.reference or args.hub:
        if args.reference and args.reference not in reference_configs():
            raise ValueError(f"no shipped reference config {args.reference!r}; choose one of "
                             f"{', '.join(reference_configs())}")
        config = reference_config(args.reference) if args.reference else hub_config(args.hub)
        diagram, dtype = diagram_from_config(config), args.kv_dtype or "bfloat16"
    else:
        lm = load_from_args(args, causal=False)
        config, diagram = lm.config, build_diagram(lm.model)
        dtype = args.kv_dtype or str(lm.model.dtype).replace("torch.", "")
    return {
        "family": asdict(diagram.family),
        "model_class": diagram.model_class,
        "dims": diagram.dims,
        "features": diagram.features,
        "kv_cache_per_token": kv_cache_per_token(config, dtype),
        "summary": architecture_summary(diagram, config, dtype),
        "order_source": diagram.order_source,
        "stacks": [asdict(s) for s in diagram.stacks],
        "blocks": [asdict(b) for b in diagram.blocks],
        "edges": [asdict(e) for e in diagram.edges],
        "dot": to_dot(diagram),
    }


def _bpe_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", help="training text (default: Tiny Shakespeare)")
    src.add_argument("--file", help="read the training text from this file")
    p.add_argument("--chars", type=int, default=100_000, help="use the first N characters of Tiny Shakespeare")
    p.add_argument("--vocab-size", type=int, default=300, help="base symbols + </w> + merges")
    p.add_argument("--base", default="chars", choices=["chars", "bytes"])
    p.add_argument("--encode", default="", help="a sentence to encode with the learned merges")


@command("bpe", "train byte-pair encoding from scratch; print merges and an encoding", _bpe_args)
def cmd_bpe(args: argparse.Namespace) -> Any:
    from core.inspect.bpe import compression, encode, train_bpe
    from core.data import tiny_shakespeare

    if args.file:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {args.file}: {exc}") from exc
    else:
        text = args.text if args.text is not None else tiny_shakespeare()[: max(0, args.chars)]
    result = train_bpe(text, args.vocab_size, args.base)
    return {
        "base": result.base, "base_size": len(result.alphabet), "vocab_size": result.vocab_size,
        "notice": result.notice, "compression": compression(result),
        "merges": [{"rank": m.rank, "pair": list(m.pair), "count": m.count, "token": m.token,
                    "runners_up": [[list(p), c] for p, c in m.runners_up]} for m in result.merges],
        "encoded": [{"token": t.token, "id": t.id, "bytes": [t.start, t.end]} for t in encode(result, args.encode)],
    }


def _embeddings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", default=" king, queen, man, woman",
                   help="comma-separated words; each is tokenized and its first token used")
    p.add_argument("--k", type=int, default=10, help="nearest neighbours per token")
    p.add_argument("--positions", type=int, default=16, help="positions for the position summaries")
    add_model_args(p)


@command("embeddings", "token vectors: nearest neighbours, 2-D PCA, position encodings", _embeddings_args)
def cmd_embeddings(args: argparse.Namespace) -> Any:
    import torch

    from core.inspect import embeddings as E

    lm = load_from_args(args)
    words = [w for w in args.tokens.split(",") if w.strip()]
    if not words:
        raise ValueError("--tokens is empty")
    norms = E.row_norms(lm)
    ids = [lm.encode(w)[0] for w in words]
    out: dict[str, Any] = {"tokens": {}, "position_kind": E.position_kind(lm)}
    for w, i in zip(words, ids):
        out["tokens"][w] = {"id": i, "norm": float(norms[i]), "neighbours": E.nearest_neighbours(lm, i, args.k, norms)}
    if len(ids) >= 2:
        coords, ratio = E.pca_2d(torch.stack([E.token_vector(lm, i) for i in ids]))
        out["pca"] = {"coords": dict(zip(words, coords.round(4).tolist())), "explained": ratio.round(4).tolist()}
    if out["position_kind"] == "rope":
        inv = E.model_inv_freq(lm)
        out["rope"] = {"theta": E.rope_theta(lm.config), "dim": E.rope_dim(lm.config),
                       "inv_freq": inv.tolist(), "wavelengths": E.wavelengths(inv).tolist()}
    elif out["position_kind"] == "learned":
        out["learned_similarity"] = E.learned_position_similarity(lm, args.positions).round(decimals=4).tolist()
    return out


def _forward_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--text", required=True, help="the text to run through the model")
    p.add_argument("--top-k", type=int, default=10, help="how many next-token candidates to list")
    p.add_argument("--position", type=int, default=-1, help="token position whose next token is predicted")
    p.add_argument("--generate", type=int, default=0, help="greedy continuation of N tokens (0: none)")
    p.add_argument("--check-parity", action="store_true",
                   help="compute every layer by hand from its weights and report the max abs difference")


@command("forward", "tokens, ids, top-k next tokens; --check-parity: hand computation vs the model",
         _forward_args)
def cmd_forward(args: argparse.Namespace) -> Any:
    from core.inspect import stepwise
    from core.models.capture import greedy_continuation, run_forward, top_k

    if args.top_k < 1:
        raise ValueError("--top-k must be at least 1")
    if not 0 <= args.generate <= 1000:
        raise ValueError("--generate must be between 0 and 1000")
    lm = load_from_args(args)
    hooks = stepwise.parity_hooks(lm) if args.check_parity else ()
    cap = run_forward(lm, args.text, hook_modules=hooks)
    if not -cap.seq_len <= args.position < cap.seq_len:
        raise ValueError(f"--position {args.position} is outside the {cap.seq_len} tokens")
    result: dict[str, Any] = {
        "model": lm.spec.label,
        "tokens": cap.tokens,
        "ids": cap.ids,
        "truncation": cap.truncation_notice,
        "position": args.position % cap.seq_len,
        "top_k": top_k(lm, cap.next_token_probs(args.position), args.top_k),
    }
    if args.generate:
        new = greedy_continuation(lm, cap.ids, args.generate)
        result["continuation"] = {"ids": new, "text": lm.decode(new)}
    if args.check_parity:
        result["parity"] = stepwise.parity(lm, cap, chained=True).as_dict()
    return result


# ---------------------------------------------------------------- attention and weights (weights, attention, lens)


def _weights_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--layer", type=int, help="only this layer (0-based)")
    p.add_argument("--matrix", help="only this module, e.g. self_attn.q_proj or mlp.c_fc")
    p.add_argument("--all-parameters", action="store_true", help="also biases and norm weights of each layer")
    p.add_argument("--histograms", action="store_true", help="add the shared-bin histograms")
    p.add_argument("--spectrum", action="store_true",
                   help="singular values and effective rank (needs --layer and --matrix)")
    p.add_argument("--threshold", type=float, default=1e-3, help="|w| below this counts as near zero")
    p.add_argument("--no-cache", action="store_true", help="recompute instead of reading the disk cache")
    p.add_argument("--json", action="store_true", help="print JSON (the default; kept for scripts that ask)")


@command("weights", "per-layer, per-matrix weight statistics (Frobenius, mean, std, kurtosis, ...)", _weights_args)
def cmd_weights(args: argparse.Namespace) -> Any:
    import math

    from core.inspect.matrix import spectrum
    from core.inspect.weights import matrix, report, weight_stats

    if not (math.isfinite(args.threshold) and args.threshold > 0):
        raise ValueError(f"--threshold must be a positive number, got {args.threshold}")
    if args.spectrum and (args.layer is None or args.matrix is None):
        raise ValueError("--spectrum needs one matrix: give --layer and --matrix")
    lm = load_from_args(args)
    stats = weight_stats(lm.model, None if args.no_cache else lm.spec.key, threshold=args.threshold)
    result = {"model": lm.spec.label, **report(stats, args.layer, args.matrix, args.all_parameters,
                                               args.histograms)}
    if args.spectrum:
        name = next((r["name"] for r in stats.rows if r["layer"] == args.layer
                     and args.matrix in (r["module"], r["kind"]) and len(r["shape"]) == 2), None)
        if name is None:
            raise ValueError(f"--spectrum needs a 2-D weight matrix; {args.matrix} in layer {args.layer} is not one")
        spec = spectrum(matrix(lm.model, name))  # dequantized first, as on the page
        result["spectrum"] = {"parameter": name, "method": spec.method,
                              "effective_rank": spec.effective_rank, "stable_rank": spec.stable_rank,
                              "singular_values": spec.singular_values.tolist()}
    return result


def _attention_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--text", required=True, help="the text to run through the model")
    p.add_argument("--layer", type=int, default=0, help="layer (0-based; negative counts from the end)")
    p.add_argument("--head", type=int, default=0, help="query head (0-based)")
    p.add_argument("--max-tokens", type=int, default=256, help="cut the text after this many tokens")
    p.add_argument("--json", action="store_true", help="print JSON (the default; kept for scripts that ask)")


@command("attention", "tokens and one head's attention matrix, with that head's statistics", _attention_args)
def cmd_attention(args: argparse.Namespace) -> Any:
    from core.inspect import attention as A
    from core.models.capture import run_forward

    if args.max_tokens < 1:
        raise ValueError("--max-tokens must be at least 1")
    lm = load_from_args(args)
    cap = run_forward(lm, args.text, max_tokens=args.max_tokens, hidden_states=False)
    attn = A.attention_stack(cap)  # [layers, heads, seq, seq]
    layers, heads = attn.shape[:2]
    if not -layers <= args.layer < layers:
        raise ValueError(f"--layer {args.layer} is outside 0..{layers - 1}")
    if not 0 <= args.head < heads:
        raise ValueError(f"--head {args.head} is outside 0..{heads - 1}")
    layer = args.layer % layers
    groups = A.kv_groups(lm.config)
    result: dict[str, Any] = {
        "model": lm.spec.label, "tokens": cap.tokens, "ids": cap.ids, "truncation": cap.truncation_notice,
        "layer": layer, "head": args.head, "kv_head": A.kv_head_of(args.head, heads, len(groups)),
        "kv_group": groups[A.kv_head_of(args.head, heads, len(groups))], "causal": A.is_causal(attn),
        "attention": attn[layer, args.head].round(decimals=6).tolist(),
    }
    if cap.seq_len >= 2:
        stats = A.head_statistics(attn[layer:layer + 1, args.head:args.head + 1])
        result["statistics"] = {k: float(v[0, 0]) for k, v in stats.items()}
        result["statistics_units"] = {"entropy": "nats", "distance": "tokens", "others": "mean weight"}
    return result


def _lens_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--text", required=True, help="the text to run through the model")
    p.add_argument("--positions", help="comma-separated positions (default: all; negative counts from the end)")
    p.add_argument("--track", choices=["final", "next"], default="final",
                   help="rank of the model's final prediction (final) or of the next token of the text (next)")
    p.add_argument("--max-tokens", type=int, default=256, help="cut the text after this many tokens")
    p.add_argument("--json", action="store_true", help="print JSON (the default; kept for scripts that ask)")


@command("lens", "logit lens: top token, its probability and the tracked token's rank after every layer",
         _lens_args)
def cmd_lens(args: argparse.Namespace) -> Any:
    from core.inspect import lens as L
    from core.models.capture import run_forward

    if args.max_tokens < 1:
        raise ValueError("--max-tokens must be at least 1")
    lm = load_from_args(args)
    cap = run_forward(lm, args.text, max_tokens=args.max_tokens, attentions=False,
                      hook_modules=L.lens_hook_modules(lm.model))
    positions = None
    if args.positions:
        try:
            raw = [int(x) for x in args.positions.split(",") if x.strip()]
        except ValueError as exc:
            raise ValueError(f"--positions must be comma-separated integers, got {args.positions!r}") from exc
        if any(not -cap.seq_len <= p < cap.seq_len for p in raw):
            raise ValueError(f"--positions must lie in 0..{cap.seq_len - 1}")
        positions = [p % cap.seq_len for p in raw]
    targets = L.next_token_targets(cap) if args.track == "next" else None
    lens = L.logit_lens(lm.model, cap, targets, k=1, positions=positions)
    pos = lens.positions.tolist()
    decode = lambda ids: lm.token_strings([int(i) for i in ids])  # noqa: E731
    return {
        "model": lm.spec.label, "tokens": cap.tokens, "truncation": cap.truncation_notice,
        "final_norm": lens.final_norm, "positions": pos, "track": args.track,
        "tracked_tokens": [t if i >= 0 else None for t, i in zip(decode(lens.target_ids.clamp(min=0)),
                                                                   lens.target_ids.tolist())],
        "last_layer_max_abs_diff_vs_logits": L.final_layer_difference(lm.model, cap, pos),
        "layers": [{"layer": layer,
                    "top_tokens": decode(lens.top_ids[layer, :, 0]),
                    "top_probs": [round(float(x), 6) for x in lens.top_probs[layer, :, 0]],
                    "tracked_rank": lens.target_ranks[layer].tolist()}
                   for layer in range(lens.layers + 1)],
    }


# Each section of the lab registers its own commands with @command in its `cli` module.
SECTION_CLIS = ("core.train.cli", "core.train.finetune_cli", "core.align.cli", "core.decode.cli",
                "core.hardware.cli", "core.evaluate.cli", "core.circuits.cli", "core.circuits.encoder_cli")


def _register_sections() -> None:
    import importlib

    for name in SECTION_CLIS:
        importlib.import_module(name)


def main(argv: list[str] | None = None) -> int:
    _register_sections()
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, _fn) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    from core.models.capture import InputError
    from core.models.loading import ModelLoadError

    try:
        result = COMMANDS[args.command][2](args)
    except (ModelLoadError, InputError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result is not None:  # None: a command with nothing to say here (a non-main torchrun process)
        json.dump(result, sys.stdout, indent=2, default=str)
        print()
    return 0
