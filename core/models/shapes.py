"""Random-weight models of a real model's shape: the seed's DeepSeek-R1-Distill-Qwen-1.5B or Llama-3.2-1B
built from their config.json facts (data/model_configs.json), saved as a safetensors folder that
`load_model` opens like any downloaded model. For benchmarks of size (bench/scale.py) and for tests of the
same code at a small shape; the weights are random (seed 0), so no figure about *what* a model learned
comes from here, only figures about time and memory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig

from core.models.loading import DTYPES, cache_root, embedded_tokenizer
from core.runs import atomic_folder

INIT_STD = 0.02  # the initializer_range of these configs: weights ~ N(0, 0.02), norms 1, biases 0
FILL = 1 << 24  # elements per normal_ call: bounded memory, and a generator that gives the same stream


def bench_models_root() -> Path:
    return cache_root() / "bench-models"


def random_model(config: PretrainedConfig, dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> nn.Module:
    """The model `config` describes, with seeded random weights, built straight in `dtype`.

    Parameters are made on the meta device and filled in place (transformers' own init of 1.78B
    weights takes minutes on 2 cores); buffers such as RoPE's inv_freq are computed as usual."""
    from accelerate import init_empty_weights

    config._attn_implementation = "eager"
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="eager")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for leaf, p in list(module.named_parameters(recurse=False)):
                w = torch.empty(p.shape, dtype=dtype)
                flat = w.view(-1)
                if "norm" in type(module).__name__.lower() or leaf == "bias":
                    flat.fill_(1.0 if leaf == "weight" else 0.0)
                else:
                    for i in range(0, flat.numel(), FILL):
                        flat[i:i + FILL].normal_(0.0, INIT_STD, generator=gen)
                module._parameters[leaf] = nn.Parameter(w, requires_grad=False)
    model.tie_weights()
    return model.eval()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def save_random_model(config: PretrainedConfig, folder: Path, dtype: str = "bfloat16", seed: int = 0,
                      say: Callable[[str], None] = lambda _msg: None) -> Path:
    """Build `random_model` and save it with the embedded tokenizer as a model folder, atomically (a
    folder that exists is complete). Returns `folder`; an existing one is reused as it is."""
    if (folder / "config.json").is_file():
        return folder
    say(f"building {folder.name} (random weights, seed {seed}, {dtype})")
    with atomic_folder(folder, replace=False) as tmp:  # another process may finish first: its folder is as good
        model = random_model(config, DTYPES[dtype], seed)
        model.save_pretrained(tmp)
        del model
        embedded_tokenizer().save_pretrained(tmp)
        (tmp / "lab_shape.json").write_text(json.dumps({"seed": seed, "dtype": dtype, "init_std": INIT_STD}))
    return folder


def reference_folder(model_id: str, dtype: str = "bfloat16", seed: int = 0, root: Path | None = None,
                     say: Callable[[str], None] = lambda _msg: None) -> Path:
    """A saved random model with the shape of `model_id` (a key of data/model_configs.json), built once
    and cached under `bench_models_root()`."""
    from core.data import reference_config

    root = root or bench_models_root()
    return save_random_model(reference_config(model_id), root / f"{_safe(model_id)}-{dtype}-seed{seed}",
                             dtype, seed, say)
