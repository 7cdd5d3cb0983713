"""The logit lens (nostalgebraist 2020): what the model would predict if it stopped after layer l.

The residual stream after each layer (`residual_stream`: the one capture of it, shared with the
step-by-step forward pass) goes through the model's own final norm and LM head:
    lens_l = lm_head(final_norm(h_l))     l = 0 (embeddings) .. L (after the last layer)
so at l = L it is exactly the model's logits.

Transformers 5 replaces the last entry of `output_hidden_states` with `last_hidden_state`, which
has the final norm already applied (see `capture_outputs(tie_last_hidden_states=True)` in
transformers/utils/output_capturing.py, used by LlamaModel and GPT2Model). Normalising it again
would be wrong, so the raw residual after the last layer is read from a hook on the final norm's
input instead: run the forward pass with `hook_modules=lens_hook_modules(model)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.models.capture import Capture

# Where common families keep their final norm; anything else goes through the generic search below.
FINAL_NORM_NAMES = (
    "model.norm",  # Llama, Mistral, Qwen2/3, Gemma, SmolLM
    "transformer.ln_f",  # GPT-2, GPT-J, GPT-Neo, BLOOM, CodeGen
    "gpt_neox.final_layer_norm",  # GPT-NeoX, Pythia
    "model.final_layernorm",  # Phi
    "model.decoder.final_layer_norm",  # OPT
    "transformer.norm_f",  # MPT
    "backbone.norm_f",  # Mamba
    "model.language_model.norm",  # multimodal wrappers
)


def final_norm_name(model: nn.Module) -> str | None:
    """Dotted name of the norm applied after the last block, or None for a model without one."""
    modules = dict(model.named_modules())
    for name in FINAL_NORM_NAMES:
        if isinstance(modules.get(name), nn.Module):
            return name
    # Generic: the last direct child of the base model that is a norm (blocks live in a ModuleList).
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    if not isinstance(base, nn.Module):
        return None
    norms = [n for n, m in base.named_children() if "norm" in type(m).__name__.lower()]
    return f"{prefix}.{norms[-1]}" if norms else None


def lens_hook_modules(model: nn.Module) -> tuple[str, ...]:
    """What `run_forward(..., hook_modules=...)` must record for `logit_lens` to be exact at the last layer."""
    name = final_norm_name(model)
    return (name,) if name else ()


def residual_stream(model: nn.Module, capture: Capture) -> list[torch.Tensor]:
    """(layers + 1) x [seq, hidden]: the residual stream before the final norm, [0] = embeddings."""
    name = final_norm_name(model)
    hidden = list(capture.hidden_states)
    if name is None:
        return hidden  # no final norm: the last hidden state is already raw
    if name not in capture.module_inputs:
        raise ValueError(f"the capture has no input of {name!r}: run the forward pass with "
                         "hook_modules=lens_hook_modules(model)")
    return hidden[:-1] + [capture.module_inputs[name]]


def _finish_logits(config, logits: torch.Tensor) -> torch.Tensor:
    """The few families that scale or cap logits after the LM head (Gemma 2, Granite, Cohere)."""
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    if getattr(config, "logits_scaling", None):
        logits = logits / config.logits_scaling
    if getattr(config, "logit_scale", None) and getattr(config, "model_type", "") == "cohere":
        logits = logits * config.logit_scale
    return logits


@torch.inference_mode()
def lens_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """[seq, vocab] float32 logits of one residual-stream slice [seq, hidden], via final norm + LM head."""
    name = final_norm_name(model)
    lm_head = model.get_output_embeddings()
    weight = lm_head.weight
    x = hidden.to(device=weight.device, dtype=weight.dtype if weight.is_floating_point() else hidden.dtype)
    if name is not None:
        norm = model.get_submodule(name)
        x = norm(x.to(next(norm.parameters(), weight).device))
    logits = lm_head(x.to(weight.device))
    return _finish_logits(model.config, logits).float().cpu()


@dataclass
class LogitLens:
    positions: torch.Tensor  # [n] the positions read (all by default)
    top_ids: torch.Tensor  # [layers + 1, n, k] most likely tokens at each layer and position
    top_probs: torch.Tensor  # [layers + 1, n, k]
    target_ids: torch.Tensor  # [n] the token tracked at each position (-1 = none)
    target_ranks: torch.Tensor  # [layers + 1, n] rank of the target, 1 = top (0 where no target)
    target_probs: torch.Tensor  # [layers + 1, n] its probability (nan where no target)
    final_norm: str | None  # the module applied before the LM head, or None
    parity: float = float("nan")  # max |lens at the last layer - the model's logits| over the positions read

    @property
    def layers(self) -> int:
        return self.top_ids.shape[0] - 1

    def first_top_layer(self, index: int = 0) -> int | None:
        """The first layer from which the tracked token at `index` (into `positions`) stays the top
        prediction through the last layer; None when it is not the top prediction at the end."""
        ranks = self.target_ranks[:, index]
        if int(self.target_ids[index]) < 0 or int(ranks[-1]) != 1:
            return None
        layer = self.layers
        while layer > 0 and int(ranks[layer - 1]) == 1:
            layer -= 1
        return layer


def logit_lens(model: nn.Module, capture: Capture, targets: list[int] | None = None, k: int = 3,
               positions: list[int] | None = None) -> LogitLens:
    """Top-k tokens and the rank of a target token at every layer, for `positions` (default: all).

    `targets` [seq] defaults to the model's final prediction at each position (argmax of its logits),
    so the last layer has rank 1 everywhere; -1 entries are not tracked. Each layer costs a full
    [n, hidden] x [hidden, vocab] product, so pages ask only for the positions they draw.
    """
    stream = residual_stream(model, capture)
    seq = capture.seq_len
    target = torch.tensor(targets if targets is not None else capture.logits.argmax(-1).tolist())
    if target.shape != (seq,):
        raise ValueError(f"targets must have one id per position ({seq}), got {tuple(target.shape)}")
    pos = torch.arange(seq) if positions is None else torch.tensor(positions, dtype=torch.long)
    if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= seq):
        raise ValueError(f"positions must lie in 0..{seq - 1}")
    target = target[pos]
    tracked = target >= 0
    safe = target.clamp(min=0)
    n = pos.numel()
    top_ids, top_probs, ranks, probs = [], [], [], []
    for hidden in stream:
        logits = lens_logits(model, hidden[pos])  # one layer at a time: (layers+1) x seq x vocab can be GBs
        p = torch.softmax(logits, -1)
        values, indices = torch.topk(p, min(k, p.shape[-1]), dim=-1)
        top_ids.append(indices)
        top_probs.append(values)
        chosen = logits.gather(-1, safe[:, None])
        rank = (logits > chosen).sum(-1) + 1
        ranks.append(torch.where(tracked, rank, torch.zeros_like(rank)))
        probs.append(torch.where(tracked, p.gather(-1, safe[:, None])[:, 0], torch.full((n,), float("nan"))))
    parity = float((logits - capture.logits[pos].float()).abs().max()) if n else 0.0  # the last layer's
    return LogitLens(pos, torch.stack(top_ids), torch.stack(top_probs), target, torch.stack(ranks),
                     torch.stack(probs), final_norm_name(model), parity)


def next_token_targets(capture: Capture) -> list[int]:
    """[seq] the token that actually follows each position in the text (-1 at the last position)."""
    return capture.ids[1:] + [-1]


def final_layer_difference(model: nn.Module, capture: Capture, positions: list[int] | None = None) -> float:
    """max |lens at the last layer - the model's logits| over `positions`: 0 when the lens is exact."""
    pos = torch.arange(capture.seq_len) if positions is None else torch.tensor(positions, dtype=torch.long)
    last = lens_logits(model, residual_stream(model, capture)[-1][pos])
    return float((last - capture.logits[pos].float()).abs().max())
