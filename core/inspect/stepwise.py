"""The forward pass computed by hand from the weights, one named step at a time, checked against the model.

The layouts covered (GPT-2 style, Llama style) and their module names live in `core.inspect.anatomy`;
RoPE in `core.inspect.rope`. Everything is computed in float32 for batch size 1 (batch dimension
dropped), where the model runs; every tensor returned is on the CPU.

Parity: the input of layer L is the model's own `hidden_states[L]`, so each layer is checked on its own.
In transformers 5 the last element of `hidden_states` is `last_hidden_state`, i.e. already passed
through the final norm; the raw output of the last block is the residual stream before the final norm,
which `core.inspect.lens.residual_stream` reads from a hook on the final norm's input (`parity_hooks`).
The same capture serves the logit lens.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields, replace
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from core.inspect import rope as rope_math
from core.inspect.anatomy import GPT2_TYPES, LLAMA_TYPES, Anatomy, UnsupportedModel, anatomy, base_module
from core.inspect.lens import lens_hook_modules, residual_stream
from core.inspect.rope import RopeTables, apply_rope, rotate_half
from core.models.capture import Capture
from core.models.loading import LoadedModel

__all__ = ["GPT2_TYPES", "LLAMA_TYPES", "Anatomy", "UnsupportedModel", "anatomy", "RopeTables", "apply_rope",
           "rotate_half"]

PARITY_TOLERANCE = 1e-4  # float32: max |Δ| of every check
# A bf16 / fp16 model rounds every operation to 8 / 11 significant bits while the hand computation stays in
# float32, so a 16-bit model is judged by the relative error ||hand - model|| / ||model|| of each check:
# a few units of its rounding (bf16: 2^-8 = 3.9e-3, fp16: 2^-11 = 4.9e-4), measured on tiny models and on
# the 1.5B shape (bench/scale.py) well inside these bounds.
RELATIVE_TOLERANCE = {"bfloat16": 2e-2, "float16": 4e-3}


def tolerance_for(dtype: torch.dtype | str) -> tuple[float, float | None]:
    """(max |Δ| tolerance, relative tolerance or None) for a model computing in `dtype`."""
    name = str(dtype).replace("torch.", "")
    return PARITY_TOLERANCE, RELATIVE_TOLERANCE.get(name)


def parity_hooks(lm: LoadedModel) -> tuple[str, ...]:
    """Modules to hook in `run_forward` so `parity` can read the last block's output: the final norm's input,
    the same hook the logit lens uses (one capture serves both pages)."""
    return lens_hook_modules(lm.model)


# ---------------------------------------------------------------- small pieces, written out


# Inside `shared_fp32_weights()`, each parameter's float32 copy is made once and reused: `parity` runs every
# layer twice (on the model's input and on the chained hand input), and for a bf16 model the copies cost
# as much as the matrix products themselves.
_FP32_COPIES: ContextVar[dict | None] = ContextVar("fp32_copies", default=None)


@contextmanager
def shared_fp32_weights() -> Iterator[None]:
    token = _FP32_COPIES.set({})
    try:
        yield
    finally:
        _FP32_COPIES.reset(token)


def _w(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """A parameter as float32 on the device of `x` (no copy when it already is).

    The hand computation runs where the model runs: a GPU's GEMMs sum in another order than the CPU's, and
    on the large residual activations of trained models that alone moves results by ~1e-3."""
    if t is None:
        return None
    copies = _FP32_COPIES.get()
    if copies is None:
        return t.detach().to(device=x.device, dtype=torch.float32)
    key = (id(t), x.device)
    if key not in copies:
        copies[key] = t.detach().to(device=x.device, dtype=torch.float32)
    return copies[key]


def project(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """A projection as the module stores it: GPT-2's Conv1D (W transposed) or nn.Linear."""
    return conv1d(x, module) if type(module).__name__ == "Conv1D" else linear(x, module)


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


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation written out; an unknown name falls back to transformers' own implementation."""
    if name in ACTIVATIONS:
        return ACTIVATIONS[name]
    from transformers.activations import ACT2FN

    return ACT2FN[name]


def rope_tables(lm: LoadedModel, seq_len: int, device: torch.device | str = "cpu") -> RopeTables:
    """core.inspect.rope.rope_tables for this model (its own rotary module for scaled variants)."""
    return rope_math.rope_tables(lm.config, seq_len, device, getattr(base_module(lm), "rotary_emb", None))


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
    if a.names.positions is not None:
        position = _rows(base_module(lm).get_submodule(a.names.positions).weight, range(len(ids)))
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
    n = a.names
    attn, mlp = block.get_submodule(n.attention), block.mlp
    h = norm(x, block.get_submodule(n.attn_norm))
    if a.fused_qkv:  # GPT-2: one Conv1D makes Q, K and V
        q_lin, k_lin, v_lin = conv1d(h, attn.get_submodule(n.qkv[0])).split(a.hidden_size, dim=-1)
    else:
        q_lin, k_lin, v_lin = (project(h, attn.get_submodule(name)) for name in n.qkv)
    q, k, v = _heads(q_lin, d), _heads(k_lin, d), _heads(v_lin, d)
    if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head's dims before RoPE
        extras["query_before_q_norm"], extras["key_before_k_norm"] = q, k
        q, k = rms_norm(q, attn.q_norm), rms_norm(k, attn.k_norm)
    if a.positions == "RoPE":
        rope = rope_tables(lm, seq, x.device)
        q_rope, k_rope = apply_rope(q, rope.cos, rope.sin), apply_rope(k, rope.cos, rope.sin)
    else:  # learned positions were added to the embeddings
        rope, q_rope, k_rope = None, q, k
    scaling = _scaling(lm, a, layer)
    k_rep, v_rep, scores, weights, context, merged = _attention(a, q_rope, k_rope, v, scaling, mask)
    attn_out = project(merged, attn.get_submodule(n.out_proj))
    resid = x + attn_out
    mlp_norm = block.get_submodule(n.mlp_norm)
    h2 = norm(resid, mlp_norm)
    gate = project(h2, mlp.get_submodule(n.mlp_in[0]))
    up = project(h2, mlp.get_submodule(n.mlp_in[1])) if a.gated_mlp else None
    act = activation(a.activation)(gate)
    hidden = act * up if up is not None else act
    mlp_out = project(hidden, mlp.get_submodule(n.mlp_out))
    out = resid + mlp_out
    attn_eps = norm_eps(block.get_submodule(n.attn_norm))
    extras.update({f"attn_norm_{k}": v for k, v in norm_statistics(x, a.norm_kind, attn_eps).items()})
    extras.update({f"mlp_norm_{k}": v for k, v in norm_statistics(resid, a.norm_kind, norm_eps(mlp_norm)).items()})
    return _on_cpu(LayerSteps(layer, scaling, _sliding_window(lm, layer), x, h, q_lin, k_lin, v_lin, q, k, v,
                              rope, q_rope, k_rope, k_rep, v_rep, scores, mask, weights, context, merged,
                              attn_out, resid, h2, gate, up, act, hidden, mlp_out, out, extras))


def _scaling(lm: LoadedModel, a: Anatomy, layer: int) -> float:
    """The factor on Q K^T: 1/sqrt(d_head), or GPT-2's config switches."""
    scaling = a.head_dim ** -0.5
    if a.style == "gpt2":
        cfg = lm.config
        scaling = scaling if getattr(cfg, "scale_attn_weights", True) else 1.0
        if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
            scaling /= float(layer + 1)
    return scaling


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
    """The model's own output of every layer, [seq, hidden] each: the residual stream after each block,
    before the final norm (`core.inspect.lens.residual_stream`, fed by the final norm's input hook)."""
    if lens_hook_modules(lm.model)[0] not in capture.module_inputs:
        raise ValueError("the capture lacks the last block's output: run it with "
                         "hook_modules=stepwise.parity_hooks(lm)")
    return residual_stream(lm.model, capture)[1:anatomy(lm).n_layers + 1]


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
    """Differences between the hand computation (float32) and the model.

    embeddings       max |Δ| of hand embeddings vs hidden_states[0]
    per_layer        [layers]  max |Δ| of hand layer L on hidden_states[L] vs the model's output of layer L
    attn_weights     [layers]  max |Δ| of hand softmax weights vs the model's returned attentions
    final_norm       max |Δ| of the hand final norm of the last block's output vs hidden_states[-1]
    logits           max |Δ| of the hand lm_head on that vs the model's logits
    chained_logits   the whole stack by hand from the ids (forward_by_hand) vs the model's logits
    relative         check name -> ||hand - model|| / ||model|| (Frobenius): the size of the gap next to
                     the size of the values, which is what judges a bf16/fp16 model's rounding
    where            check name -> the token position holding that check's max |Δ|
    """

    embeddings: float
    per_layer: list[float]
    attn_weights: list[float]
    final_norm: float
    logits: float
    chained_logits: float | None = None
    tolerance: float = PARITY_TOLERANCE
    relative: dict[str, float] = field(default_factory=dict)
    relative_tolerance: float | None = None  # set for a bf16 / fp16 model: then `ok` judges `relative`
    where: dict[str, int] = field(default_factory=dict)

    @property
    def checks(self) -> dict[str, float]:
        """max |Δ| by check name, in the order of the forward pass (the checks `worst` is about)."""
        return {"embeddings": self.embeddings, **{f"layer {i}": d for i, d in enumerate(self.per_layer)},
                "final norm": self.final_norm}

    @property
    def worst(self) -> float:
        """The largest difference over the checks the tolerance is about (embeddings, layers, final norm)."""
        return max(self.checks.values())

    @property
    def worst_check(self) -> str:
        """The name of the check with the largest max |Δ| (the first one on a tie)."""
        checks = self.checks
        return max(checks, key=checks.get)

    @property
    def worst_relative(self) -> tuple[str, float]:
        """(check name, relative error) of the check with the largest relative error."""
        if not self.relative:
            return self.worst_check, float("nan")
        name = max(self.relative, key=self.relative.get)
        return name, self.relative[name]

    @property
    def ok(self) -> bool:
        if self.relative_tolerance is not None:
            return self.worst_relative[1] <= self.relative_tolerance
        return self.worst <= self.tolerance

    def as_dict(self) -> dict:
        return {"tolerance": self.tolerance, "relative_tolerance": self.relative_tolerance, "ok": self.ok,
                "worst": self.worst, "embeddings": self.embeddings,
                "per_layer": self.per_layer, "attn_weights": self.attn_weights, "final_norm": self.final_norm,
                "logits": self.logits, "chained_logits": self.chained_logits, "worst_check": self.worst_check,
                "relative": self.relative, "where": self.where}


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def _compare(name: str, hand: torch.Tensor, model: torch.Tensor, rel: dict[str, float], where: dict[str, int]) -> float:
    """max |hand - model| of [seq, hidden] tensors; records the relative error and the worst position."""
    gap = hand.float() - model.float()
    if not gap.numel():
        return 0.0
    rel[name] = float(gap.norm() / model.float().norm().clamp_min(1e-30))
    where[name] = int(gap.abs().amax(-1).argmax())
    return float(gap.abs().max())


@torch.inference_mode()
def parity(lm: LoadedModel, capture: Capture, chained: bool = False) -> Parity:
    """Check every step against the model; `capture` must come from
    run_forward(..., hook_modules=parity_hooks(lm)). `chained` also runs `forward_by_hand` (one more
    full forward pass)."""
    targets = layer_targets(lm, capture)
    emb = embeddings_by_hand(lm, capture.ids)
    rel: dict[str, float] = {}
    where: dict[str, int] = {}
    per_layer, attn = [], []
    hand = emb.hidden_states  # the chained run: forward_by_hand, layer by layer beside the checks
    for layer, target in enumerate(targets):
        with shared_fp32_weights():  # one float32 copy of the layer's weights for both runs
            steps = layer_by_hand(lm, layer, capture.hidden_states[layer])
            if chained:
                hand = layer_by_hand(lm, layer, hand).layer_output
        per_layer.append(_compare(f"layer {layer}", steps.layer_output, target, rel, where))
        if layer < len(capture.attentions):
            attn.append(_diff(steps.attn_weights, capture.attentions[layer]))
    with shared_fp32_weights():
        final = final_by_hand(lm, targets[-1])
        chained_logits = _diff(final_by_hand(lm, hand).logits, capture.logits) if chained else None
    return Parity(
        embeddings=_compare("embeddings", emb.hidden_states, capture.hidden_states[0], rel, where),
        per_layer=per_layer,
        attn_weights=attn,
        final_norm=_compare("final norm", final.final_norm, capture.hidden_states[-1], rel, where),
        logits=_diff(final.logits, capture.logits),
        chained_logits=chained_logits,
        relative=rel,
        where=where,
        relative_tolerance=tolerance_for(lm.model.dtype)[1],
    )
