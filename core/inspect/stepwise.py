"""The forward pass computed by hand from the weights, one named step at a time, checked against the model.

Two layouts are covered, which between them are most causal LMs on the Hub:
  GPT-2 style   learned positions added to the token embeddings, LayerNorm, fused QKV (Conv1D `c_attn`,
                y = x @ W + b), GELU MLP (c_fc -> gelu -> c_proj)
  Llama style   (Llama, Mistral, Qwen2 with QKV biases, Qwen3 with q/k RMSNorm) RMSNorm, separate
                q/k/v/o projections, RoPE on queries and keys, grouped-query attention, SwiGLU MLP
Everything is computed on the CPU in float32 for batch size 1 (batch dimension dropped).

Parity: the input of layer L is the model's own `hidden_states[L]`, so each layer is checked on its own.
In transformers 5 the last element of `hidden_states` is `last_hidden_state`, i.e. already passed
through the final norm; the raw output of the last block is therefore read from a forward hook
(`parity_hooks`) and the final norm is checked separately against `hidden_states[-1]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Callable, Sequence

import torch
from torch import nn

from core.models.capture import Capture
from core.models.loading import LoadedModel

GPT2_TYPES = ("gpt2",)
LLAMA_TYPES = ("llama", "mistral", "qwen2", "qwen3")
PARITY_TOLERANCE = 1e-4  # float32


class UnsupportedModel(ValueError):
    """A model whose layer layout the hand computation does not know; the message is meant for the user."""


# ---------------------------------------------------------------- what the model is made of


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

    @property
    def mlp_kind(self) -> str:
        if self.style == "gpt2":
            return "GELU MLP"
        return "SwiGLU" if self.activation in ("silu", "swish") else f"gated MLP ({self.activation})"

    @property
    def kv_groups(self) -> list[list[int]]:
        """For each KV head, the query heads that share it (repeat_kv: query head h reads KV head h // n_rep)."""
        n_rep = self.n_heads // self.n_kv_heads
        return [list(range(g * n_rep, (g + 1) * n_rep)) for g in range(self.n_kv_heads)]


def _base(lm: LoadedModel) -> nn.Module:
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
    base = _base(lm)
    if model_type in GPT2_TYPES:
        style, layers_attr, final = "gpt2", "h", "ln_f"
    elif model_type in LLAMA_TYPES:
        style, layers_attr, final = "llama", "layers", "norm"
    else:
        raise UnsupportedModel(
            f"The step-by-step hand computation covers GPT-2 style and Llama style models (Llama, Mistral, "
            f"Qwen2, Qwen3); `{model_type}` is not one of them. The tokens and next-token probabilities "
            "below still come from the model itself.")
    if style == "llama" and (getattr(cfg, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0) != 1.0:
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
                   tuple(f"{prefix}.{layers_attr}.{i}" for i in range(n_layers)), f"{prefix}.{final}")


def parity_hooks(lm: LoadedModel) -> tuple[str, ...]:
    """Modules to hook in `run_forward` so `parity` can read the last block's output before the final norm."""
    return (anatomy(lm).layer_names[-1],)


# ---------------------------------------------------------------- small pieces, written out


def _w(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """A parameter as float32 on the device of `x` (no copy when it already is).

    The hand computation runs where the model runs: a GPU's GEMMs sum in another order than the CPU's, and
    on the large residual activations of trained models that alone moves results by ~1e-3."""
    return None if t is None else t.detach().to(device=x.device, dtype=torch.float32)


def linear(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """nn.Linear: x W^T + b.  x [seq, in] -> [seq, out]."""
    return nn.functional.linear(x, _w(module.weight, x), _w(module.bias, x))


def conv1d(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """GPT-2's Conv1D is a linear layer with the weight stored transposed: x W + b.  [seq, in] -> [seq, out]."""
    return torch.addmm(_w(module.bias, x), x, _w(module.weight, x))


def rms_norm(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * w, in float32 like HF.  [seq, hidden] -> [seq, hidden]."""
    eps = norm_eps(module)
    variance = x.pow(2).mean(-1, keepdim=True)
    return _w(module.weight, x) * (x * torch.rsqrt(variance + eps))


def layer_norm(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * w + b.  [seq, hidden] -> [seq, hidden]."""
    return nn.functional.layer_norm(x, x.shape[-1:], _w(module.weight, x), _w(module.bias, x), module.eps)


def norm(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    return layer_norm(x, module) if isinstance(module, nn.LayerNorm) else rms_norm(x, module)


def norm_eps(module: nn.Module) -> float:
    return float(getattr(module, "variance_epsilon", None) or getattr(module, "eps", 1e-6))


def block_norm_eps(block: nn.Module, a: "Anatomy") -> float:
    return norm_eps(block.ln_1 if a.style == "gpt2" else block.input_layernorm)


def norm_statistics(x: torch.Tensor, kind: str, eps: float) -> dict[str, torch.Tensor]:
    """Per token ([seq]) what the norm divides by: rms = sqrt(mean(x^2) + eps) for RMSNorm;
    mean and std = sqrt(var + eps) for LayerNorm."""
    if kind == "RMSNorm":
        return {"rms": torch.sqrt(x.pow(2).mean(-1) + eps)}
    return {"mean": x.mean(-1), "std": torch.sqrt(x.var(-1, unbiased=False) + eps)}


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), written as HF writes it."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


# SiLU is x * sigmoid(x) and GELU is x * Phi(x); torch's fused kernels are used for them because the model
# uses them too: a one-ulp difference in the activation becomes ~1e-4 after down_proj on the large
# activations of trained models, which would hide real mistakes behind rounding noise.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": nn.functional.silu,
    "swish": nn.functional.silu,
    "gelu_new": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_pytorch_tanh": lambda x: nn.functional.gelu(x, approximate="tanh"),
    "gelu": nn.functional.gelu,
    "relu": torch.relu,
}


_SILU = r"\mathrm{SiLU}(z) = z\,\sigma(z) = \frac{z}{1 + e^{-z}}"
_GELU_TANH = r"\mathrm{GELU}(z) \approx \tfrac12 z\,\big(1 + \tanh(\sqrt{2/\pi}\,(z + 0.044715 z^3))\big)"
# (symbol, definition) for the formulas on the step-by-step page.
ACTIVATION_FORMULAS: dict[str, tuple[str, str]] = {
    "silu": (r"\mathrm{SiLU}", _SILU),
    "swish": (r"\mathrm{SiLU}", _SILU),
    "gelu_new": (r"\mathrm{GELU}", _GELU_TANH),
    "gelu_fast": (r"\mathrm{GELU}", _GELU_TANH),
    "gelu_pytorch_tanh": (r"\mathrm{GELU}", _GELU_TANH),
    "gelu": (r"\mathrm{GELU}", r"\mathrm{GELU}(z) = z\,\Phi(z) = \tfrac12 z\,\big(1 + \mathrm{erf}(z/\sqrt2)\big)"),
    "relu": (r"\mathrm{ReLU}", r"\mathrm{ReLU}(z) = \max(0, z)"),
}


def activation_formula(name: str) -> tuple[str, str]:
    """(symbol, LaTeX definition) of a config's activation; unknown names are shown by name."""
    return ACTIVATION_FORMULAS.get(name, (rf"\mathrm{{{name}}}".replace("_", r"\_"),
                                          rf"\text{{{name} (transformers' implementation)}}".replace("_", r"\_")))


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation written out; an unknown name falls back to transformers' own implementation."""
    if name in ACTIVATIONS:
        return ACTIVATIONS[name]
    from transformers.activations import ACT2FN

    return ACT2FN[name]


@dataclass
class RopeTables:
    """Rotary position tables for positions 0..seq-1 (d = head_dim).

    inv_freq  [d/2]       rotation speed of each pair of dims: 1 / theta^(2i/d)
    angles    [seq, d]    t * inv_freq_i, each angle used for the two halves of the head (HF's rotate_half layout)
    cos, sin  [seq, d]    cos/sin of the angles (times the attention scaling of scaled RoPE variants)
    """

    rope_type: str
    theta: float | None
    inv_freq: torch.Tensor
    angles: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor


def rope_tables(lm: LoadedModel, seq_len: int, device: torch.device | str = "cpu") -> RopeTables:
    """RoPE computed from the config (default type); scaled variants (llama3, yarn, ...) reshape inv_freq,
    so for those the model's own inv_freq and attention scaling are read from its rotary_emb module.
    Angles, cos and sin are computed on `device`, as the model does (cos on a GPU may differ by an ulp);
    inv_freq stays on the CPU."""
    a = anatomy(lm)
    params = getattr(lm.config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    theta = params.get("rope_theta", getattr(lm.config, "rope_theta", 10000.0))
    scaling = 1.0
    if rope_type == "default":
        inv_freq = 1.0 / (theta ** (torch.arange(0, a.head_dim, 2, dtype=torch.float) / a.head_dim))
    else:
        rotary = _base(lm).rotary_emb
        inv_freq = rotary.inv_freq.detach().float().cpu()
        scaling = float(rotary.attention_scaling)
    positions = torch.arange(seq_len, dtype=torch.float, device=device)
    freqs = positions[:, None] * inv_freq.to(device)[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    return RopeTables(rope_type, theta, inv_freq, angles, angles.cos() * scaling, angles.sin() * scaling)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+d/2}) by the angle of its position.  [heads, seq, d] -> [heads, seq, d]."""
    return x * cos[None] + rotate_half(x) * sin[None]


def causal_mask(seq_len: int, sliding_window: int | None = None) -> torch.Tensor:
    """[seq, seq] additive mask: 0 where query i may read key j (j <= i, and j > i - window), -inf elsewhere."""
    i = torch.arange(seq_len)[:, None]
    j = torch.arange(seq_len)[None, :]
    allowed = j <= i
    if sliding_window:
        allowed &= j > i - sliding_window
    return torch.zeros(seq_len, seq_len).masked_fill(~allowed, float("-inf"))


def _sliding_window(lm: LoadedModel, layer: int) -> int | None:
    cfg = lm.config
    window = getattr(cfg, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None:
        return window if layer_types[layer] == "sliding_attention" else None
    return window


# ---------------------------------------------------------------- embeddings


@dataclass
class EmbeddingSteps:
    """Token ids to the input of layer 0.

    token_embeddings     [seq, hidden]  rows of the embedding matrix W_E picked by the ids
    position_embeddings  [seq, hidden]  rows of W_P (GPT-2's learned positions); None with RoPE
    hidden_states        [seq, hidden]  what enters layer 0
    """

    token_embeddings: torch.Tensor
    position_embeddings: torch.Tensor | None
    hidden_states: torch.Tensor


def _rows(weight: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """Rows of an embedding table, looked up where it lives, as CPU float32 [len(ids), hidden]."""
    return weight.detach()[torch.tensor(list(ids), dtype=torch.long, device=weight.device)].float().cpu()


def embeddings_by_hand(lm: LoadedModel, ids: list[int]) -> EmbeddingSteps:
    a = anatomy(lm)
    token = _rows(lm.model.get_input_embeddings().weight, ids)
    position = None
    hidden = token
    if a.style == "gpt2":
        position = _rows(_base(lm).wpe.weight, range(len(ids)))
        hidden = token + position
    return EmbeddingSteps(token, position, hidden)


# ---------------------------------------------------------------- one decoder layer


@dataclass
class LayerSteps:
    """Every intermediate tensor of one decoder layer, computed by hand (seq = tokens, d = head_dim).

    layer_input          [seq, hidden]           hidden_states[L], the residual stream entering the layer
    attn_norm            [seq, hidden]           input_layernorm / ln_1 of it
    q_proj, k_proj, v_proj  [seq, heads*d], [seq, kv_heads*d], [seq, kv_heads*d]
    query_states         [heads, seq, d]         split into heads (after q_norm for Qwen3), before RoPE
    key_states, value_states  [kv_heads, seq, d]
    rope                 RopeTables              angles, cos, sin [seq, d] (None for learned positions)
    query_rope, key_rope [heads|kv_heads, seq, d]  after RoPE (same as before for learned positions)
    key_repeated, value_repeated  [heads, seq, d]  repeat_kv: each KV head serves its query-head group
    scores               [heads, seq, seq]       Q K^T * scaling, before the mask
    mask                 [seq, seq]              0 / -inf causal (and sliding-window) mask
    attn_weights         [heads, seq, seq]       softmax(scores + mask) over keys
    context              [heads, seq, d]         attn_weights @ V
    context_merged       [seq, heads*d]          heads concatenated
    attn_output          [seq, hidden]           o_proj / c_proj of the context
    hidden_after_attn    [seq, hidden]           layer_input + attn_output (first residual)
    mlp_norm             [seq, hidden]           post_attention_layernorm / ln_2
    mlp_gate             [seq, inter]            gate_proj (SwiGLU) or c_fc (GPT-2)
    mlp_up               [seq, inter]            up_proj (None for GPT-2)
    mlp_act              [seq, inter]            act(gate)
    mlp_hidden           [seq, inter]            act(gate) * up (SwiGLU) or act(c_fc) (GPT-2)
    mlp_output           [seq, hidden]           down_proj / c_proj
    layer_output         [seq, hidden]           hidden_after_attn + mlp_output (second residual)
    """

    layer: int
    scaling: float
    sliding_window: int | None
    layer_input: torch.Tensor
    attn_norm: torch.Tensor
    q_proj: torch.Tensor
    k_proj: torch.Tensor
    v_proj: torch.Tensor
    query_states: torch.Tensor
    key_states: torch.Tensor
    value_states: torch.Tensor
    rope: RopeTables | None
    query_rope: torch.Tensor
    key_rope: torch.Tensor
    key_repeated: torch.Tensor
    value_repeated: torch.Tensor
    scores: torch.Tensor
    mask: torch.Tensor
    attn_weights: torch.Tensor
    context: torch.Tensor
    context_merged: torch.Tensor
    attn_output: torch.Tensor
    hidden_after_attn: torch.Tensor
    mlp_norm: torch.Tensor
    mlp_gate: torch.Tensor
    mlp_up: torch.Tensor | None
    mlp_act: torch.Tensor
    mlp_hidden: torch.Tensor
    mlp_output: torch.Tensor
    layer_output: torch.Tensor
    # norm statistics per token ([seq]) and Qwen3's tensors before q_norm/k_norm
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return self.layer_input.shape[0]


def _heads(x: torch.Tensor, d: int) -> torch.Tensor:
    """[seq, n*d] -> [n, seq, d]."""
    return x.view(x.shape[0], -1, d).transpose(0, 1)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[kv_heads, seq, d] -> [kv_heads * n_rep, seq, d]; query head h reads KV head h // n_rep."""
    return x.repeat_interleave(n_rep, dim=0) if n_rep > 1 else x


def _attention(a: Anatomy, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float,
               mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    n_rep = a.n_heads // a.n_kv_heads
    k_rep, v_rep = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    scores = torch.matmul(q, k_rep.transpose(1, 2)) * scaling
    weights = torch.softmax(scores + mask[None], dim=-1)
    context = torch.matmul(weights, v_rep)
    merged = context.transpose(0, 1).reshape(q.shape[1], -1)
    return k_rep, v_rep, scores, weights, context, merged


@torch.inference_mode()
def layer_by_hand(lm: LoadedModel, layer: int, layer_input: torch.Tensor) -> LayerSteps:
    """Run decoder layer `layer` from its weights on `layer_input` [seq, hidden], on the layer's device;
    every tensor returned is float32 on the CPU."""
    a = anatomy(lm)
    if not 0 <= layer < a.n_layers:
        raise ValueError(f"layer {layer} does not exist; this model has layers 0 to {a.n_layers - 1}.")
    block = lm.model.get_submodule(a.layer_names[layer])
    x = layer_input.detach().to(device=_device(block), dtype=torch.float32)
    seq = x.shape[0]
    d = a.head_dim
    mask = causal_mask(seq, _sliding_window(lm, layer)).to(x.device)
    extras: dict[str, torch.Tensor] = {}
    if a.style == "gpt2":
        attn, mlp = block.attn, block.mlp
        h = norm(x, block.ln_1)
        qkv = conv1d(h, attn.c_attn)
        q_lin, k_lin, v_lin = qkv.split(a.hidden_size, dim=-1)
        q, k, v = _heads(q_lin, d), _heads(k_lin, d), _heads(v_lin, d)
        rope = None
        q_rope, k_rope = q, k
        cfg = lm.config
        scaling = d ** -0.5 if getattr(cfg, "scale_attn_weights", True) else 1.0
        if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
            scaling /= float(layer + 1)
    else:
        attn, mlp = block.self_attn, block.mlp
        h = norm(x, block.input_layernorm)
        q_lin, k_lin, v_lin = linear(h, attn.q_proj), linear(h, attn.k_proj), linear(h, attn.v_proj)
        q, k, v = _heads(q_lin, d), _heads(k_lin, d), _heads(v_lin, d)
        if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head's dims before RoPE
            extras["query_before_q_norm"], extras["key_before_k_norm"] = q, k
            q, k = rms_norm(q, attn.q_norm), rms_norm(k, attn.k_norm)
        rope = rope_tables(lm, seq, x.device)
        q_rope, k_rope = apply_rope(q, rope.cos, rope.sin), apply_rope(k, rope.cos, rope.sin)
        scaling = d ** -0.5
    k_rep, v_rep, scores, weights, context, merged = _attention(a, q_rope, k_rope, v, scaling, mask)
    if a.style == "gpt2":
        attn_out = conv1d(merged, attn.c_proj)
        resid = x + attn_out
        h2 = norm(resid, block.ln_2)
        gate = conv1d(h2, mlp.c_fc)
        up = None
        act = activation(a.activation)(gate)
        hidden = act
        mlp_out = conv1d(hidden, mlp.c_proj)
    else:
        attn_out = linear(merged, attn.o_proj)
        resid = x + attn_out
        h2 = norm(resid, block.post_attention_layernorm)
        gate, up = linear(h2, mlp.gate_proj), linear(h2, mlp.up_proj)
        act = activation(a.activation)(gate)
        hidden = act * up
        mlp_out = linear(hidden, mlp.down_proj)
    out = resid + mlp_out
    eps = block_norm_eps(block, a)
    extras.update({f"attn_norm_{k}": v for k, v in norm_statistics(x, a.norm_kind, eps).items()})
    extras.update({f"mlp_norm_{k}": v for k, v in norm_statistics(resid, a.norm_kind, eps).items()})
    return _on_cpu(LayerSteps(layer, scaling, _sliding_window(lm, layer), x, h, q_lin, k_lin, v_lin, q, k, v,
                              rope, q_rope, k_rope, k_rep, v_rep, scores, mask, weights, context, merged,
                              attn_out, resid, h2, gate, up, act, hidden, mlp_out, out, extras))


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _on_cpu(steps: LayerSteps) -> LayerSteps:
    """Move every tensor of `steps` to the CPU, where pages and tests read them."""
    for f in fields(steps):
        value = getattr(steps, f.name)
        if isinstance(value, torch.Tensor):
            setattr(steps, f.name, value.cpu())
    steps.extras = {k: v.cpu() for k, v in steps.extras.items()}
    if steps.rope is not None:
        steps.rope = replace(steps.rope, angles=steps.rope.angles.cpu(), cos=steps.rope.cos.cpu(),
                             sin=steps.rope.sin.cpu())
    return steps


# ---------------------------------------------------------------- final norm and logits


@dataclass
class FinalSteps:
    """After the last layer.

    final_norm  [seq, hidden]  ln_f / norm of the last block's output
    logits      [seq, vocab]   final_norm @ W_U^T (+ b); W_U is W_E when embeddings are tied
    """

    final_norm: torch.Tensor
    logits: torch.Tensor

    @property
    def probs(self) -> torch.Tensor:
        """[seq, vocab] softmax over the vocabulary: the next-token distribution at each position."""
        return torch.softmax(self.logits, dim=-1)


@torch.inference_mode()
def final_by_hand(lm: LoadedModel, last_output: torch.Tensor) -> FinalSteps:
    """last_output [seq, hidden] (the last block's output) -> final norm -> lm_head logits."""
    a = anatomy(lm)
    head = lm.model.get_output_embeddings()
    h = norm(last_output.detach().to(device=_device(head), dtype=torch.float32),
             lm.model.get_submodule(a.final_norm_name))
    return FinalSteps(h.cpu(), linear(h, head).cpu())


# ---------------------------------------------------------------- parity with the model


def layer_targets(lm: LoadedModel, capture: Capture) -> list[torch.Tensor]:
    """The model's own output of every layer, [seq, hidden] each.

    hidden_states[L + 1] for all but the last layer; the last one from the forward hook on the last
    block, because hidden_states[-1] already has the final norm applied (see the module docstring).
    """
    a = anatomy(lm)
    outs = capture.hidden_states[1:a.n_layers]
    last = capture.module_outputs.get(a.layer_names[-1])
    if last is None:
        raise ValueError("the capture lacks the last block's output: run it with "
                         "hook_modules=stepwise.parity_hooks(lm)")
    return [*outs, last]


@torch.inference_mode()
def forward_by_hand(lm: LoadedModel, ids: list[int]) -> FinalSteps:
    """The whole stack from token ids alone: embeddings -> every layer, each fed the previous hand output
    -> final norm -> logits [seq, vocab]. Rounding differences accumulate here, unlike in `parity`."""
    hidden = embeddings_by_hand(lm, ids).hidden_states
    for layer in range(anatomy(lm).n_layers):
        hidden = layer_by_hand(lm, layer, hidden).layer_output
    return final_by_hand(lm, hidden)


def residual_norms(lm: LoadedModel, capture: Capture) -> torch.Tensor:
    """[layers + 1, seq] L2 norm of each token's residual stream: [0] = embeddings, [L + 1] = after layer L
    (before the final norm)."""
    stream = [capture.hidden_states[0], *layer_targets(lm, capture)]
    return torch.stack([h.norm(dim=-1) for h in stream])


@dataclass
class Parity:
    """Max abs differences between the hand computation and the model (float32).

    embeddings       hand embeddings vs hidden_states[0]
    per_layer        [layers]  hand layer L on hidden_states[L] vs the model's output of layer L
    attn_weights     [layers]  hand softmax weights vs the model's returned attentions
    final_norm       hand final norm of the last block's output vs hidden_states[-1]
    logits           hand lm_head on that vs the model's logits
    chained_logits   the whole stack by hand from the ids (forward_by_hand) vs the model's logits
    """

    embeddings: float
    per_layer: list[float]
    attn_weights: list[float]
    final_norm: float
    logits: float
    chained_logits: float | None = None
    tolerance: float = PARITY_TOLERANCE

    @property
    def worst(self) -> float:
        """The largest difference over the checks the tolerance is about (embeddings, layers, final norm)."""
        return max([self.embeddings, *self.per_layer, self.final_norm])

    @property
    def ok(self) -> bool:
        return self.worst <= self.tolerance

    def as_dict(self) -> dict:
        return {"tolerance": self.tolerance, "ok": self.ok, "worst": self.worst, "embeddings": self.embeddings,
                "per_layer": self.per_layer, "attn_weights": self.attn_weights, "final_norm": self.final_norm,
                "logits": self.logits, "chained_logits": self.chained_logits}


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


@torch.inference_mode()
def parity(lm: LoadedModel, capture: Capture, chained: bool = False) -> Parity:
    """Check every step against the model; `capture` must come from
    run_forward(..., hook_modules=parity_hooks(lm)). `chained` also runs `forward_by_hand` (one more
    full forward pass)."""
    targets = layer_targets(lm, capture)
    emb = embeddings_by_hand(lm, capture.ids)
    per_layer, attn = [], []
    for layer, target in enumerate(targets):
        steps = layer_by_hand(lm, layer, capture.hidden_states[layer])
        per_layer.append(_diff(steps.layer_output, target))
        if layer < len(capture.attentions):
            attn.append(_diff(steps.attn_weights, capture.attentions[layer]))
    final = final_by_hand(lm, targets[-1])
    return Parity(
        embeddings=_diff(emb.hidden_states, capture.hidden_states[0]),
        per_layer=per_layer,
        attn_weights=attn,
        final_norm=_diff(final.final_norm, capture.hidden_states[-1]),
        logits=_diff(final.logits, capture.logits),
        chained_logits=_diff(forward_by_hand(lm, capture.ids).logits, capture.logits) if chained else None,
    )
