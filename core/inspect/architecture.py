"""What kind of transformer a config describes, read from the config alone.

HF configs alias their fields (GPT-2's `n_embd` is also `hidden_size`), so everything here
goes through `attribute_map` via plain attribute access and works for any family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PretrainedConfig

from core.dtypes import BYTES_PER_ELEMENT as _BYTES_PER_ELEMENT
from core.units import format_bytes  # noqa: F401  (re-exported: pages format the byte fields with it)


@dataclass(frozen=True)
class Family:
    name: str  # "GPT-2 style", "Llama style", ...
    kind: str  # "decoder-only" | "encoder-only" | "encoder-decoder"
    description: str


_DECODER_STYLES = {
    "gpt2": ("GPT-2 style", "learned positions, LayerNorm, GELU MLP, fused QKV (c_attn)"),
    "gpt_neo": ("GPT-2 style", "learned positions, LayerNorm, GELU MLP"),
    "gptj": ("GPT-J style", "rotary positions, parallel attention and MLP"),
    "gpt_neox": ("GPT-NeoX style", "rotary positions, parallel attention and MLP, LayerNorm"),
    "llama": ("Llama style", "RoPE, RMSNorm, SwiGLU MLP, grouped-query attention"),
    "mistral": ("Llama style", "RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, sliding window"),
    "qwen2": ("Qwen2 style", "Llama layout with biases on Q, K, V"),
    "qwen3": ("Qwen3 style", "Llama layout with RMSNorm on Q and K"),
    "gemma": ("Gemma style", "RoPE, RMSNorm, GeGLU MLP, multi-query attention"),
    "phi": ("Phi style", "partial rotary, parallel attention and MLP"),
    "opt": ("OPT style", "learned positions, LayerNorm, ReLU MLP"),
}


def detect_family(config: PretrainedConfig) -> Family:
    """Decoder-only / encoder-only / encoder-decoder, from the config fields alone."""
    model_type = getattr(config, "model_type", "") or ""
    archs = " ".join(getattr(config, "architectures", None) or [])
    if getattr(config, "is_encoder_decoder", False):
        return Family(f"{model_type.upper()} style", "encoder-decoder",
                      "an encoder reads the whole input bidirectionally; a decoder generates "
                      "left to right and attends to the encoder (cross-attention)")
    if "MaskedLM" in archs or model_type in {"bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2"}:
        return Family(f"{model_type.upper()} style", "encoder-only",
                      "bidirectional self-attention over the whole input, trained to fill in "
                      "masked tokens; it does not generate text left to right")
    name, detail = _DECODER_STYLES.get(model_type, (f"{model_type or 'unknown'} style", "causal decoder"))
    return Family(name, "decoder-only",
                  f"a stack of causal self-attention blocks that predicts the next token ({detail})")


def config_dims(config: PretrainedConfig) -> dict[str, Any]:
    """The dimensions every page talks about, with one name each whatever the family."""
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = (getattr(config, "head_dim", None) or getattr(config, "d_kv", None)  # T5 names it d_kv
                or (hidden // heads if hidden and heads else None))
    intermediate = (getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
                    or getattr(config, "d_ff", None))
    if intermediate is None and hidden and getattr(config, "model_type", "") == "gpt2":
        intermediate = 4 * hidden  # GPT-2's n_inner=None means 4 * n_embd
    context = getattr(config, "max_position_embeddings", None)
    return {
        "model_type": getattr(config, "model_type", None),
        "architecture": (getattr(config, "architectures", None) or [None])[0],
        "layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": getattr(config, "vocab_size", None),
        "context_length": context,
        "tied_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "activation": getattr(config, "hidden_act", None) or getattr(config, "activation_function", None),
    }


# ---------------------------------------------------------------- KV cache

# One home for dtypes and cache bytes: core/dtypes.py and core/models/memory.py (re-exported for the pages).
BYTES_PER_ELEMENT = _BYTES_PER_ELEMENT


def decoder_layers(config: PretrainedConfig) -> int | None:
    """Layers that keep a KV cache: the decoder's (T5 has `num_decoder_layers` besides `num_layers`)."""
    if getattr(config, "is_encoder_decoder", False):
        return getattr(config, "num_decoder_layers", None) or getattr(config, "decoder_layers", None) \
            or getattr(config, "num_hidden_layers", None)
    return getattr(config, "num_hidden_layers", None)


def kv_cache_per_token(config: PretrainedConfig, dtype: str = "bfloat16") -> dict[str, Any]:
    """Bytes of K and V one more token adds to the cache during generation (below any sliding window):
    2 (K and V) × layers × kv_heads × head_dim × bytes per element. `bytes` is None for encoder-only models
    and configs without the dimensions. A dict view of `core.models.memory.kv_cache_bytes` for one token."""
    from core.models.memory import kv_cache_bytes

    kv = kv_cache_bytes(config, 1, 1, dtype)
    per = kv.per_token_bytes or None
    result: dict[str, Any] = {"dtype": kv.dtype, "bytes_per_element": kv.bytes_per_element, "layers": kv.layers,
                              "kv_heads": kv.kv_heads, "head_dim": kv.head_dim,
                              "bytes": (int(per) if float(per).is_integer() else per) if per else None,
                              "formula": "", "note": kv.note, "rule": kv.rule}
    if per:
        caching = sum(1 for t in kv.layer_tokens if t)
        result["formula"] = (f"2 (K and V) × {caching} layers × {kv.kv_heads} KV heads × {kv.head_dim} head_dim × "
                             f"{kv.bytes_per_element:g} bytes ({kv.dtype}) = {per:,.0f} bytes")
        if kv.window:
            result["note"] = "; ".join(x for x in (kv.note, f"with a sliding window of {kv.window:,} tokens the "
                                                   f"cache stops growing at {kv.window - 1:,} tokens on "
                                                   f"{kv.window_layers} of {kv.layers} layers") if x)
    return result


def cache_window(config: PretrainedConfig) -> int | None:
    """Tokens after which a sliding-window model's cache stops growing (None: it grows with the context)."""
    from core.models.memory import kv_cache_bytes

    kv = kv_cache_bytes(config, 1, 1)
    return kv.window if kv.window_layers and not kv.full_layers else None


# ---------------------------------------------------------------- configs typed or pasted by a user

_POSITIVE_INT_FIELDS = ("hidden_size", "n_embd", "d_model", "num_hidden_layers", "n_layer", "num_layers",
                        "num_decoder_layers", "num_attention_heads", "n_head", "num_heads", "num_key_value_heads",
                        "intermediate_size", "n_inner", "d_ff", "d_kv", "vocab_size", "head_dim",
                        "max_position_embeddings", "n_positions")
MAX_LAYERS = 512  # the largest public models have ~130; more is a typo, and building 10^6 modules takes minutes
# Like MAX_LAYERS: far above every public model (vocabularies ~262k, hidden sizes ~25k), far below a typo.
PLAUSIBLE_MAX = {"vocab_size": (4_000_000, "vocabulary"), "hidden_size": (131_072, "hidden size"),
                 "intermediate_size": (1_048_576, "MLP size"), "heads": (4_096, "number of attention heads"),
                 "context_length": (100_000_000, "context length")}
MAX_CONFIG_CHARS = 1_000_000


def config_from_json_text(text: str) -> PretrainedConfig:
    """A config from pasted or uploaded config.json text; every problem is a ValueError meant for the user."""
    import json

    from core.data import config_from_dict

    if not text or not text.strip():
        raise ValueError("The config is empty: paste the contents of a config.json (a JSON object with a "
                         "`model_type` field) or upload the file.")
    if len(text) > MAX_CONFIG_CHARS:
        raise ValueError(f"This is {len(text):,} characters; a config.json is a few thousand. Is it the right file?")
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"This is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") from exc
    if not isinstance(fields, dict):
        raise ValueError(f"config.json must hold a JSON object ({{...}}), not a {type(fields).__name__}.")
    validate_fields(fields)
    try:
        config = config_from_dict(fields)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - config classes validate their fields with their own error types
        detail = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ValueError(f"This is not a valid `{fields['model_type']}` config: "
                         f"{detail[-1] if detail else type(exc).__name__}") from exc
    validate_config(config)
    return config


def validate_fields(fields: dict[str, Any]) -> None:
    for key in _POSITIVE_INT_FIELDS:
        value = fields.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"`{key}` must be a positive whole number (got {value!r}).")


def validate_config(config: PretrainedConfig) -> None:
    """Refuse, with the reason, dimensions no model can have."""
    dims = config_dims(config)
    layers, heads, kv, hidden = dims["layers"], dims["heads"], dims["kv_heads"], dims["hidden_size"]
    for name, value in (("layers", layers), ("hidden size", hidden), ("attention heads", heads)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"The config gives no usable number of {name} (got {value!r}).")
    if layers > MAX_LAYERS:
        raise ValueError(f"{layers:,} layers is more than any real model ({MAX_LAYERS} at most here); check the layer count.")
    for key, (limit, what) in PLAUSIBLE_MAX.items():
        value = dims.get(key)
        if isinstance(value, int) and value > limit:
            raise ValueError(f"A {what} of {value:,} is more than any real model ({limit:,} at most here); "
                             f"check `{key}`.")
    if kv and heads % kv:
        raise ValueError(f"{heads} attention heads cannot be shared evenly by {kv} key/value heads "
                         "(the number of heads must be a multiple of the number of KV heads).")
    if not getattr(config, "head_dim", None) and not getattr(config, "d_kv", None) and hidden % heads:
        raise ValueError(f"A hidden size of {hidden} cannot be split into {heads} heads of equal size.")


# ---------------------------------------------------------------- one architecture in numbers, and two side by side


def architecture_summary(diagram: Any, config: PretrainedConfig, kv_dtype: str = "bfloat16",
                         weights_dtype: str | None = None) -> dict[str, Any]:
    """Every dimension of one architecture, keyed by a readable field name (values are raw numbers,
    strings or booleans; `format_value` writes them for a table). Parameters come from the diagram,
    whose boxes hold every parameter once (tied weights counted once)."""
    dims, f = diagram.dims, diagram.features
    from core.models.memory import kv_cache_bytes

    kv = kv_cache_per_token(config, kv_dtype)
    weights_dtype = weights_dtype or kv_dtype
    embed = sum(b.params for b in diagram.blocks if b.kind in ("embedding", "positions", "segments"))
    per_layer = {s.id: sum(b.params_per_layer for b in diagram.blocks if b.stack == s.id) for s in diagram.stacks}
    head = sum(b.params for b in diagram.blocks if b.kind == "lm_head")
    heads, kv_heads = f.get("heads"), f.get("kv_heads")
    attention = ("MHA (multi-head)" if heads == kv_heads else "MQA (one KV head)" if kv_heads == 1
                 else "GQA (grouped-query)") if heads and kv_heads else "—"
    layers: Any = dims["layers"]
    if diagram.family.kind == "encoder-decoder" and len(diagram.stacks) == 2:
        layers = f"{diagram.stacks[0].n_layers} encoder + {diagram.stacks[1].n_layers} decoder"
    context = dims["context_length"]
    total = diagram.total_params
    return {
        "Family": diagram.family.name,
        "Kind": diagram.family.kind,
        "Model class": diagram.model_class,
        "model_type": dims["model_type"],
        "Layers": layers,
        "Hidden size d": dims["hidden_size"],
        "MLP width": dims["intermediate_size"],
        "Attention heads": heads,
        "KV heads": kv_heads,
        "Head size d_h": f.get("head_dim"),
        "Query heads per KV head": f.get("gqa_group"),
        "Attention": attention,
        "Q, K, V projections": f.get("attention_projections"),
        "Bias on Q, K, V": f.get("qkv_bias"),
        "Positions": f.get("positions"),
        "Norm": f.get("norm"),
        "Norm placement": f.get("norm_placement"),
        "MLP": f.get("mlp"),
        "Attention and MLP in parallel": f.get("parallel_attention_mlp"),
        "Vocabulary": dims["vocab_size"],
        "Context length": context,
        "Tied LM head": f.get("tied_lm_head"),
        "Parameters": total,
        "Embedding parameters": embed,
        "Parameters per layer": " + ".join(f"{v:,}" for v in per_layer.values()) if len(per_layer) > 1
        else next(iter(per_layer.values()), None),
        "Output head parameters": head,
        "Non-embedding parameters": total - embed,
        f"Weights in {weights_dtype}": int(total * BYTES_PER_ELEMENT.get(weights_dtype, 4.0)),
        f"KV cache per token ({kv_dtype})": kv["bytes"],
        f"KV cache at full context ({kv_dtype})": (kv_cache_bytes(config, context, 1, kv_dtype).bytes
                                                   if kv["bytes"] and context else None),
    }


_BYTE_FIELDS = ("Weights in", "KV cache")


def format_value(field: str, value: Any) -> str:
    """One cell of the comparison table."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and field.startswith(_BYTE_FIELDS):
        return f"{value:,.0f} B ({format_bytes(value)})"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def comparison_rows(a: dict[str, Any], b: dict[str, Any], name_a: str = "A", name_b: str = "B") -> list[dict[str, str]]:
    """Two summaries side by side: one row per field, with B / A where both are numbers."""
    rows = []
    for field in list(dict.fromkeys([*a, *b])):
        va, vb = a.get(field), b.get(field)
        ratio = ""
        if (isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not isinstance(va, bool)
                and not isinstance(vb, bool) and va):
            ratio = f"× {vb / va:,.2f}"
        rows.append({"": field, name_a: format_value(field, va), name_b: format_value(field, vb), "B / A": ratio})
    return rows
