"""Parameter accounting, from a loaded model or from a config alone (built on the meta device).

Tied weights are one Parameter object shared by two modules; `named_parameters()` yields it once,
under the first name (the input embedding), so they are counted once and reported as tied.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import transformers
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    PretrainedConfig,
)

COMPONENTS = ("embeddings", "position_embeddings", "attention_q", "attention_k", "attention_v",
              "attention_o", "attention_other", "mlp", "norms", "lm_head", "other")

_LAYER_INDEX = re.compile(r"\.(?:layers|h|layer|block)\.(\d+)\.")


def meta_model_from_config(config: PretrainedConfig) -> nn.Module:
    """The model a config describes, with shapes but no storage: any size, no memory."""
    named = [getattr(transformers, a, None) for a in getattr(config, "architectures", None) or []]
    autos = [AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForMaskedLM, AutoModel]
    if getattr(config, "is_encoder_decoder", False):  # else a causal class builds only the decoder half
        autos.insert(0, autos.pop(1))
    with torch.device("meta"):
        for cls in [c for c in named if c is not None] + autos:
            try:
                return cls._from_config(config) if cls in named else cls.from_config(config)
            except (ValueError, TypeError, AttributeError):
                continue
    raise ValueError(f"transformers has no model class for model_type {config.model_type!r}")


def classify(name: str) -> str:
    """Which component a parameter belongs to, from its name in the module tree."""
    n = name.lower()
    if "lm_head" in n:
        return "lm_head"
    if any(k in n for k in ("wpe", "position_embeddings", "token_type_embeddings", "relative_attention_bias")):
        return "position_embeddings"
    if any(k in n for k in ("embed_tokens", "wte", "word_embeddings")) or n == "shared.weight":
        return "embeddings"
    if any(k in n for k in ("norm", "ln_", "layernorm", "layer_norm")):
        return "norms"
    if re.search(r"(attn|attention)", n):
        if re.search(r"(q_proj|\.query\.|\.q\.)", n):
            return "attention_q"
        if re.search(r"(k_proj|\.key\.|\.k\.)", n):
            return "attention_k"
        if re.search(r"(v_proj|\.value\.|\.v\.)", n):
            return "attention_v"
        if re.search(r"(o_proj|out_proj|c_proj|\.output\.dense|\.o\.|dense\.)", n):
            return "attention_o"
        if "c_attn" in n:
            return "attention_qkv"  # fused; split into thirds by the caller
        return "attention_other"
    if any(k in n for k in ("mlp", "feed_forward", "ffn", "intermediate", "densereludense", ".output.dense")):
        return "mlp"
    return "other"


def layer_of(name: str) -> int | None:
    m = _LAYER_INDEX.search("." + name)
    return int(m.group(1)) if m else None


def _tied(model: nn.Module) -> bool:
    inp = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return inp is not None and out is not None and out.weight is inp.weight


def count_parameters(model_or_config: nn.Module | PretrainedConfig) -> dict[str, Any]:
    """{"total", "tied_embeddings", "by_component", "per_layer", "n_layers"}; per_layer rows are
    {"layer", "attention", "mlp", "norms", "total"}."""
    model = (meta_model_from_config(model_or_config) if isinstance(model_or_config, PretrainedConfig)
             else model_or_config)
    by_component = dict.fromkeys(COMPONENTS, 0)
    per_layer: dict[int, dict[str, int]] = {}
    total = 0
    for name, p in model.named_parameters():  # tied parameters come once
        n = unpacked_numel(p)
        total += n
        kind = classify(name)
        if kind == "attention_qkv":
            for part in ("attention_q", "attention_k", "attention_v"):
                by_component[part] += n // 3
        else:
            by_component[kind] += n
        layer = layer_of(name)
        if layer is not None:
            row = per_layer.setdefault(layer, {"layer": layer, "attention": 0, "mlp": 0, "norms": 0, "other": 0, "total": 0})
            group = "attention" if kind.startswith("attention") else kind if kind in ("mlp", "norms") else "other"
            row[group] += n
            row["total"] += n
    return {
        "total": total,
        "tied_embeddings": _tied(model),
        "by_component": {k: v for k, v in by_component.items() if v},
        "per_layer": [per_layer[i] for i in sorted(per_layer)],
        "n_layers": len(per_layer),
    }


def unpacked_numel(p: torch.Tensor) -> int:
    """The number of weights a parameter stands for: `numel()`, except for bitsandbytes 4-bit parameters,
    which pack two weights per uint8 and keep the real shape in their `quant_state`."""
    n = p.numel()
    if not (hasattr(p, "quant_state") or p.dtype == torch.uint8):
        return n
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else n


# ---------------------------------------------------------------- tying and memory (Parameter page)


def check_tying(model: nn.Module) -> dict[str, Any]:
    """Are the input embedding and the output projection (lm_head) tied? Checked two ways:
    `same_storage` (one Parameter, or two sharing memory) and `equal_values` (torch.equal).
    Untied models can still have equal values (a checkpoint that copied them); tied ones always do."""
    inp = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names: dict[int, list[str]] = {}  # every name of every Parameter, in module order
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    if inp is None or out is None or getattr(out, "weight", None) is None:
        return {"has_output_embeddings": False, "same_storage": False, "equal_values": False,
                "input_name": None, "output_name": None, "config_says_tied": _config_tied(model)}
    a, b = inp.weight, out.weight
    same = a is b or (a.device.type != "meta" and a.data_ptr() == b.data_ptr() and a.shape == b.shape)
    usable = a.device.type != "meta" and b.device.type != "meta" and a.is_floating_point() and b.is_floating_point()
    equal = bool(usable and a.shape == b.shape and a.device == b.device and torch.equal(a, b))
    return {"has_output_embeddings": True, "same_storage": bool(same), "equal_values": equal,
            "input_name": names.get(id(a), [None])[0], "output_name": names.get(id(b), [None])[-1],
            "shape": list(a.shape), "config_says_tied": _config_tied(model)}


def _config_tied(model: nn.Module) -> bool | None:
    config = getattr(model, "config", None)
    value = getattr(config, "tie_word_embeddings", None) if config is not None else None
    return None if value is None else bool(value)


# Bytes per weight; the quantized formats also store scales, estimated below.
WEIGHT_FORMATS = ("float32", "bfloat16", "int8", "int4")


def weight_memory(model: nn.Module, kept_dtype: str = "bfloat16") -> list[dict[str, Any]]:
    """Memory of the weights in each format, per tensor (tied weights once), from the same accountant as the
    planner (core.models.memory.weight_bytes): int8 and 4-bit (bitsandbytes) quantize the linear layers only
    and keep embeddings, the LM head, norms and biases in `kept_dtype`, plus their scales."""
    from core.models.memory import weight_bytes, weight_tensors

    tensors = weight_tensors(model)
    table = []
    for fmt in WEIGHT_FORMATS:
        w = weight_bytes(tensors, fmt, kept_dtype=kept_dtype)
        table.append({"format": {"int4": "4-bit (NF4)"}.get(fmt, fmt),
                      "bytes_per_weight": round(w.storage_bytes / max(w.parameters, 1), 3),
                      "weights_bytes": w.storage_bytes, "scales_bytes": w.state_bytes, "total_bytes": w.bytes,
                      "rule": w.rule})
    return table
