"""What kind of transformer a config describes, read from the config alone.

HF configs alias their fields (GPT-2's `n_embd` is also `hidden_size`), so everything here
goes through `attribute_map` via plain attribute access and works for any family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PretrainedConfig


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
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if hidden and heads else None)
    intermediate = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
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
