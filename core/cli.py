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
    p.add_argument("--model", default="embedded", help="embedded | tiny-gpt2 | tiny-llama | tiny-qwen2 | Hub id | folder")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quantization", default="none", choices=["none", "8bit", "4bit"])


def load_from_args(args: argparse.Namespace):
    from core.models import load_model, parse_spec

    return load_model(parse_spec(args.model, args.dtype, args.device, args.quantization),
                      progress=lambda msg: print(msg, file=sys.stderr))


@command("info", "print the model card as JSON", add_model_args)
def cmd_info(args: argparse.Namespace) -> Any:
    return load_from_args(args).card()


def _params_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", help="path to a config.json (counted on the meta device, no weights)")
    g.add_argument("--reference", help="a model id from the shipped reference configs, e.g. gpt2")
    add_model_args(p)


@command("params", "count parameters from a config.json or a model", _params_args)
def cmd_params(args: argparse.Namespace) -> Any:
    from core.data import config_from_dict, reference_config
    from core.params import count_parameters

    if args.config:
        try:
            fields = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {args.config}: {exc}") from exc
        return count_parameters(config_from_dict(fields))
    if args.reference:
        return count_parameters(reference_config(args.reference))
    return count_parameters(load_from_args(args).model)


# ---------------------------------------------------------------- inside the model (forward, ...)


# ---------------------------------------------------------------- attention and weights (weights, attention, lens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, _fn) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    from core.capture import InputError
    from core.models import ModelLoadError

    try:
        result = COMMANDS[args.command][2](args)
    except (ModelLoadError, InputError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, indent=2, default=str)
    print()
    return 0
