"""`python -m core plan | measure | quantize | chinchilla | gguf`: the hardware section from a terminal."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from core.cli import add_model_args, command, load_from_args


def _plan_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", help="path to a config.json (counted on the meta device, no weights)")
    src.add_argument("--reference", help="a shipped reference config id, e.g. mistralai/Mistral-7B-v0.1")
    src.add_argument("--hub", help="a Hugging Face Hub id: only its config.json is fetched")
    p.add_argument("--gpu", default="H100", help="accelerator name from data/accelerators.csv (loose: H100, a100, l4)")
    p.add_argument("--dtype", dest="weights", default="bf16",
                   choices=["fp32", "bf16", "fp16", "int8", "4bit"], help="storage of the weights")
    p.add_argument("--seq", type=int, default=2048, help="tokens per sequence held in the KV cache")
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together")
    p.add_argument("--train-tokens", type=float, default=0, help="also plan training on this many tokens (6ND)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation for the training time")
    p.add_argument("--lora-rank", type=int, default=0, help="also the LoRA training memory at this rank (q,k,v,o)")
    p.add_argument("--train-gpus", type=int, default=0,
                   help="GPUs for the training time (default: as many as the training memory needs)")
    p.add_argument("--model", default="embedded", help="without --config/--reference/--hub: this model's config")


@command("plan", "memory and roofline speed of a model on an accelerator (weights, KV cache, fits, tokens/s)",
         _plan_args)
def cmd_plan(args: argparse.Namespace) -> Any:
    from core.data import reference_config, reference_configs
    from core.hardware import planner
    from core.hardware.gpus import find_gpu
    from core.inspect.architecture import config_from_json_text
    from core.models.loading import EMBEDDED, TINY_SOURCES, hub_config, load_model

    gpu = find_gpu(args.gpu)
    planner.check_shape(args.seq, args.batch)
    if args.config:
        try:
            config, name = config_from_json_text(Path(args.config).read_text()), args.config
        except OSError as exc:
            raise ValueError(f"cannot read {args.config}: {exc}") from exc
    elif args.reference:
        if args.reference not in reference_configs():
            raise ValueError(f"no shipped reference config {args.reference!r}; choose one of "
                             f"{', '.join(reference_configs())}")
        config, name = reference_config(args.reference), args.reference
    elif args.hub:
        config, name = hub_config(args.hub), args.hub
    elif args.model in (EMBEDDED, *TINY_SOURCES):
        config, name = load_model(args.model).config, args.model
    else:
        config, name = hub_config(args.model), args.model
    result = planner.plan(config, gpu, args.weights, args.seq, args.batch, name=name).as_dict()
    # Training is sized by its own memory (weights, gradients, Adam, activations of --seq x --batch),
    # not by the serving plan's GPU count.
    full = planner.training_memory(result["parameters"], config=config, seq=args.seq, batch=args.batch)
    result["train_full"] = vars(full)
    if args.lora_rank:
        lora = planner.lora_parameters(config, args.lora_rank)
        result["train_lora"] = vars(planner.training_memory(result["parameters"], lora, args.weights, config=config,
                                                            seq=args.seq, batch=args.batch))
    if args.train_tokens:
        if args.train_gpus < 0:
            raise ValueError(f"--train-gpus must be at least 1, got {args.train_gpus}")
        gpus = args.train_gpus or planner.training_gpus(full, gpu)
        result["train_gpus"] = gpus
        result["train_gpus_rule"] = ("given with --train-gpus" if args.train_gpus else
                                     f"full training memory {full.total_bytes:,} bytes / {result['gpu_memory_bytes']:,} "
                                     f"bytes per {gpu.name} ({result['gpu_memory_source']}), rounded up")
        result["train_flops"] = planner.training_flops(result["parameters"], args.train_tokens)
        result["train_seconds"] = planner.training_seconds(result["parameters"], args.train_tokens, gpu, args.mfu,
                                                           gpus)
    return result


def _measure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--matmul-n", type=int, default=1024)
    p.add_argument("--loop-n", type=int, default=64, help="size of the plain Python triple loop")
    p.add_argument("--copy-mib", type=int, default=256)


@command("measure", "this machine: matmul GFLOP/s vs a Python triple loop, memory bandwidth from a copy",
         _measure_args)
def cmd_measure(args: argparse.Namespace) -> Any:
    from core.hardware.measure import measure

    return measure(args.device, args.matmul_n, args.loop_n, args.copy_mib).as_dict()


def _quantize_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--variants", default="fp32,bf16,int8,nf4,fp4", help="comma-separated: fp32,bf16,int8,nf4,fp4")


@command("quantize", "the quantization lab: memory, load time, tokens/s, perplexity, KL and top-1 vs fp32",
         _quantize_args)
def cmd_quantize(args: argparse.Namespace) -> Any:
    import sys

    from core.hardware.quantization import held_out_text, run_lab

    lm = load_from_args(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    results = run_lab(lm, variants, progress=lambda m: print(m, file=sys.stderr))
    return {"model": lm.spec.label, "held_out_chars": len(held_out_text()),
            "variants": [r.as_dict() for r in results]}


def _chinchilla_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compute", type=float, default=5.76e23, help="training budget C in FLOPs (C = 6ND)")


@command("chinchilla", "compute-optimal parameters and tokens for a budget: Chinchilla fit, 20 tokens/param, Kaplan",
         _chinchilla_args)
def cmd_chinchilla(args: argparse.Namespace) -> Any:
    from core.hardware import scaling

    out = {}
    for rule in (scaling.twenty_tokens_rule, scaling.chinchilla_optimal, scaling.kaplan_optimal):
        a = rule(args.compute)
        out[rule.__name__] = {"rule": a.rule, "parameters": a.parameters, "tokens": a.tokens,
                              "tokens_per_parameter": a.tokens_per_parameter, "loss": a.loss}
    return {"compute": args.compute, **out}


@command("gguf", "every tensor of the embedded GGUF file: quantization type, shape, bytes")
def cmd_gguf(args: argparse.Namespace) -> Any:
    from dataclasses import asdict

    from core.hardware.quantization import gguf_summary, gguf_tensors

    tensors = gguf_tensors()
    return {"summary": gguf_summary(tensors), "tensors": [asdict(t) for t in tensors]}


