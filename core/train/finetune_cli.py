"""`python -m core finetune`: supervised fine-tuning (LoRA, full or frozen lower layers) from a terminal.

The run goes through the same job machinery as the page (a worker thread reporting each step); the loss
of every step is printed on stderr, the result as JSON on stdout. Ctrl-C stops it cleanly: a checkpoint,
the after-answers and the export are still written, and `--resume` continues from there.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from core.cli import add_model_args, command, load_from_args
from core.train.finetune import LORA_TARGETS, MODES, FinetuneConfig


def _args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--mode", default="lora", choices=MODES)
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps (default 30; with --resume: the stored total)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3 for LoRA, 5e-5 otherwise)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-len", type=int, default=256, help="tokens per example (prompt + response), longer ones cut")
    p.add_argument("--freeze-layers", type=int, default=0, help="freeze mode: blocks frozen from the input")
    p.add_argument("--train-embeddings", action="store_true", help="freeze mode: let the embeddings train")
    p.add_argument("--r", type=int, default=8, help="LoRA rank")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (the update is scaled by alpha / r)")
    p.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout")
    p.add_argument("--targets", default="q,v", choices=list(LORA_TARGETS), help="LoRA target modules")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=5, help="held-out loss every N steps")
    p.add_argument("--max-new-tokens", type=int, default=32, help="length of the before/after answers")
    p.add_argument("--data", default=None,
                   help="a JSONL file of {prompt, response, split} (default: data/instructions.jsonl)")
    p.add_argument("--prompt", action="append", default=[], help="an extra prompt to answer before and after")
    p.add_argument("--out", default=None, help="run folder (default: a new folder under the runs root)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no per-step lines on stderr")


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    lr = args.lr if args.lr is not None else (1e-3 if args.mode == "lora" else 5e-5)
    steps = 30 if args.steps is None else args.steps
    return FinetuneConfig(mode=args.mode, learning_rate=lr, steps=steps, batch_size=args.batch_size,
                          max_len=args.max_len, freeze_layers=args.freeze_layers,
                          freeze_embeddings=not args.train_embeddings, lora_r=args.r, lora_alpha=args.alpha,
                          lora_dropout=args.dropout, lora_targets=args.targets, seed=args.seed,
                          checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
                          max_new_tokens=args.max_new_tokens)


def resumed_config(run_dir: Path, steps: int | None) -> FinetuneConfig:
    """The stored configuration of a run, with a new total of steps when given."""
    from core.train.finetune_store import read_config

    stored = read_config(run_dir)
    if stored is None:
        raise ValueError(f"{run_dir} is not a fine-tuning run (no config.json of kind finetune).")
    known = {f.name for f in fields(FinetuneConfig)}
    cfg = FinetuneConfig(**{k: v for k, v in stored["finetune"].items() if k in known})
    return replace(cfg, steps=steps) if steps is not None else cfg


@command("finetune", "supervised fine-tuning (LoRA, full, frozen lower layers) on the shipped instruction set",
         _args)
def cmd_finetune(args: argparse.Namespace) -> Any:
    from core.jobs import JobRegistry
    from core.train import finetune_data as fd
    from core.train.finetune import finetune, validate
    from core.train.finetune_store import default_run_name, run_dir_for

    if args.resume:
        if not args.out:
            raise ValueError("--resume needs --out RUN_DIR (the run to continue).")
        cfg = resumed_config(Path(args.out), args.steps)
    else:
        cfg = config_from_args(args)
    examples = fd.load_instructions(args.data)
    fd.split_examples(examples)  # an empty set fails here, before the model loads
    lm = load_from_args(args)
    validate(cfg, lm.config)
    out = Path(args.out) if args.out else run_dir_for(default_run_name(lm.spec.source, cfg.mode))
    if not args.resume and (out / "config.json").exists():
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out.")

    registry = JobRegistry(max_running=1)
    job = registry.start("finetune", "cli", lambda job: finetune(job, lm, cfg, out, examples, tuple(args.prompt),
                                                                 resume=args.resume),
                         title=f"fine-tuning ({cfg.mode})", total_steps=cfg.steps)
    _follow(job, quiet=args.quiet)
    snap = job.wait()
    if snap.status == "failed":
        raise ValueError(snap.message)
    result = asdict(snap.result)
    result["status"] = snap.status
    result["share"] = result["trainable"] / result["total"] if result["total"] else 0.0
    return result


def _follow(job, quiet: bool) -> None:
    """Print new metric rows until the job ends; Ctrl-C asks for a clean stop (checkpoint + export)."""
    shown = 0
    while True:
        try:
            snap = job.snapshot()
            for row in snap.metrics[shown:]:
                if not quiet and row.get("loss") is not None:
                    val = f" val {row['val_loss']:.4f}" if row.get("val_loss") is not None else ""
                    print(f"step {row['step']:>5}  loss {row['loss']:.4f}{val}  "
                          f"{row['s_per_step']:.2f} s/step", file=sys.stderr)
            shown = len(snap.metrics)
            if not snap.active:
                return
            time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping: writing a checkpoint and the export…", file=sys.stderr)
            job.stop()
