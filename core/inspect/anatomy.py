"""How one decoder layer of a model is wired, read from its config and module tree: the one place that
knows GPT-2's module names from Llama's, so the hand computation and the pages ask `Anatomy` instead of
branching on the family.

Two layouts are covered, which between them are most causal LMs on the Hub:
  GPT-2 style   learned positions added to the token embeddings, LayerNorm, fused QKV (Conv1D `c_attn`,
                y = x @ W + b), GELU MLP (c_fc -> gelu -> c_proj)
  Llama style   (Llama, Mistral, Qwen2 with QKV biases, Qwen3 with q/k RMSNorm) RMSNorm, separate
                q/k/v/o projections, RoPE on queries and keys, grouped-query attention, SwiGLU MLP
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from core.inspect.attention import head_groups, kv_head_of
from core.inspect.rope import rope_parameters
from core.models.loading import LoadedModel

GPT2_TYPES = ("gpt2",)
LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3")


class UnsupportedModel(ValueError):
    """A model whose layer layout the hand computation does not know; the message is meant for the user."""


@dataclass(frozen=True)
class Names:
    """Module names inside one decoder block (relative to the block) and in the base model."""

    attention: str  # "attn" | "self_attn"
    attn_norm: str  # "ln_1" | "input_layernorm"
    mlp_norm: str  # "ln_2" | "post_attention_layernorm"
    qkv: tuple[str, ...]  # ("c_attn",) fused, or ("q_proj", "k_proj", "v_proj")
    out_proj: str  # "c_proj" | "o_proj"
    mlp_in: tuple[str, ...]  # ("c_fc",) or ("gate_proj", "up_proj")
    mlp_out: str  # "c_proj" | "down_proj"
    positions: str | None  # the learned position table in the base model ("wpe"), None with RoPE


_NAMES = {
    "gpt2": Names("attn", "ln_1", "ln_2", ("c_attn",), "c_proj", ("c_fc",), "c_proj", "wpe"),
    "llama": Names("self_attn", "input_layernorm", "post_attention_layernorm", ("q_proj", "k_proj", "v_proj"),
                   "o_proj", ("gate_proj", "up_proj"), "down_proj", None),
}


@dataclass(frozen=True)
class Anatomy:
    """How one decoder layer of this model is wired, read from its config and module tree."""

    style: str  # "gpt2" | "llama"
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    norm_kind: str  # "LayerNorm" | "RMSNorm"
    activation: str  # config name: "gelu_new", "silu", ...
    positions: str  # "learned" | "RoPE"
    layer_names: tuple[str, ...]  # module names of the decoder layers
    final_norm_name: str
    base_name: str = "model"  # base_model_prefix: "transformer" | "model"

    @property
    def names(self) -> Names:
        return _NAMES[self.style]

    @property
    def fused_qkv(self) -> bool:
        return len(self.names.qkv) == 1

    @property
    def gated_mlp(self) -> bool:
        return len(self.names.mlp_in) == 2

    @property
    def gqa(self) -> bool:
        return self.n_kv_heads < self.n_heads

    @property
    def mlp_kind(self) -> str:
        if not self.gated_mlp:
            return "GELU MLP"
        return "SwiGLU" if self.activation in ("silu", "swish") else f"gated MLP ({self.activation})"

    @property
    def kv_groups(self) -> list[list[int]]:
        """For each KV head, the query heads that share it (repeat_kv: query head h reads KV head h // n_rep)."""
        return head_groups(self.n_heads, self.n_kv_heads)

    def kv_head_of(self, head: int) -> int:
        return kv_head_of(head, self.n_heads, self.n_kv_heads)

    def module(self, lm: LoadedModel, layer: int, name: str) -> nn.Module:
        """A module of decoder layer `layer` by its relative name, e.g. a.module(lm, 3, a.names.mlp_norm)."""
        return lm.model.get_submodule(f"{self.layer_names[layer]}.{name}")


def base_module(lm: LoadedModel) -> nn.Module:
    return getattr(lm.model, lm.model.base_model_prefix)


def anatomy(lm: LoadedModel) -> Anatomy:
    """Read the layout, or raise UnsupportedModel saying why the hand computation cannot follow it."""
    cfg = lm.config
    model_type = getattr(cfg, "model_type", "") or "unknown"
    if lm.spec.quantization != "none":
        raise UnsupportedModel("The hand computation needs plain floating-point weights; reload the model "
                               "without 8-bit/4-bit quantization to follow it step by step.")
    if any(p.device.type == "meta" for p in lm.model.parameters()):
        raise UnsupportedModel("Part of this model is offloaded (weights on the meta device); the hand "
                               "computation needs every weight in memory.")
    prefix = lm.model.base_model_prefix
    base = base_module(lm)
    if model_type in GPT2_TYPES:
        style, layers_attr, final = "gpt2", "h", "ln_f"
    elif model_type in LLAMA_TYPES:
        style, layers_attr, final = "llama", "layers", "norm"
    else:
        raise UnsupportedModel(
            f"The step-by-step hand computation covers GPT-2 style and Llama style models (Llama, Mistral, "
            f"Qwen2, Qwen3); `{model_type}` is not one of them. The tokens and next-token probabilities "
            "below still come from the model itself.")
    if style == "llama" and rope_parameters(cfg).get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedModel("This model rotates only part of each head (partial RoPE), which the hand "
                               "computation does not follow.")
    n_layers = len(getattr(base, layers_attr))
    heads = cfg.num_attention_heads
    hidden = cfg.hidden_size
    if style == "gpt2":
        kv_heads, head_dim = heads, hidden // heads
        intermediate = getattr(cfg, "n_inner", None) or 4 * hidden
        norm_kind, act, positions = "LayerNorm", cfg.activation_function, "learned"
    else:
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or hidden // heads
        intermediate = cfg.intermediate_size
        norm_kind, act, positions = "RMSNorm", cfg.hidden_act, "RoPE"
    return Anatomy(style, n_layers, hidden, intermediate, heads, kv_heads, head_dim, cfg.vocab_size,
                   norm_kind, act, positions,
                   tuple(f"{prefix}.{layers_attr}.{i}" for i in range(n_layers)), f"{prefix}.{final}", prefix)
