"""`python -m core train`: pre-train the lab's GPT from a nanoGPT-style JSON config (also under torchrun)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from core.cli import command


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="JSON config with nanoGPT key names (n_layer, n_head, n_embd, block_size, "
                   "batch_size, learning_rate, max_iters, ...) plus tokenizer and dataset; missing keys take "
                   "defaults. With --resume, the run's own config.json is used when omitted")
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.csv, samples, model/")
    p.add_argument("--max-iters", type=int, help="override max_iters (e.g. to extend a resumed run)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--no-export", action="store_true", help="do not write the Hugging Face export model/")


def _read_config(args: argparse.Namespace):
    from core.train.config import TrainConfig
    from core.train.pretrain import read_run_config

    if args.config:
        try:
            values = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {args.config}: {exc}") from exc
        if not isinstance(values, dict):
            raise ValueError(f"{args.config} must hold a JSON object of config keys")
        config = TrainConfig.from_dict(values)
        if args.resume:  # keep the vocabulary the run started with
            config.chars = read_run_config(Path(args.out)).chars
    elif args.resume:
        config = read_run_config(Path(args.out))
    else:
        raise ValueError("give --config CONFIG.json (or --resume to continue a run folder)")
    if args.max_iters is not None:
        config.max_iters = args.max_iters
    return config


@command("train", "pre-train the lab's small GPT (works under torchrun / accelerate launch)", _train_args)
def cmd_train(args: argparse.Namespace) -> Any:
    from core.jobs import JobError
    from core.train.pretrain import NullJob, train

    config = _read_config(args)
    # Under torchrun every process runs this; only the main one (RANK 0) reports, or the outputs interleave.
    main = os.environ.get("RANK", "0") == "0"
    progress = (lambda m: print(m, file=sys.stderr, flush=True)) if main else None
    try:
        result = train(config, Path(args.out), NullJob(progress=progress), resume=args.resume,
                       export=not args.no_export)
    except JobError as exc:
        raise ValueError(str(exc)) from exc
    return result if main else None

