"""Export the lab's GPT into a stock transformers class, so a run opens on every inspection page.

Two switch settings have a stock class that computes exactly the same function:
    GPT-2 style   pre-LN, LayerNorm, learned positions, GELU MLP   -> GPT2LMHeadModel
                  (Conv1D stores W as [in, out]: our nn.Linear weights are transposed; missing biases are 0)
    Llama style   pre-LN, RMSNorm, RoPE, SwiGLU MLP                -> LlamaForCausalLM
                  (the fused c_attn is split into q_proj, k_proj, v_proj; c_gate/c_fc/c_proj become
                  gate_proj/up_proj/down_proj)
Other combinations (post-LN, RoPE with GELU, learned positions with SwiGLU, ...) have no stock class and
are not exported. The tokenizer goes along: the char vocabulary as a `tokenizers` BPE model without merges
(every character is one token), or the embedded BPE tokenizer itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import logging as hf_logging
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from core.runs import atomic_folder
from core.train.data import TextData, bpe_tokenizer
from core.train.model import GPT

GPT2_STYLE = {"norm_position": "pre", "norm": "layernorm", "position": "learned", "mlp": "gelu"}
LLAMA_STYLE = {"norm_position": "pre", "norm": "rmsnorm", "position": "rope", "mlp": "swiglu"}


def export_family(config) -> str | None:
    """'gpt2', 'llama' or None for a config (GPTConfig or TrainConfig) with these switches."""
    switches = {k: getattr(config, k) for k in GPT2_STYLE}
    if switches == GPT2_STYLE:
        return "gpt2"
    if switches == LLAMA_STYLE:
        return "llama"
    return None


def export_reason(config) -> str | None:
    """None when exportable, else why not (shown on the page)."""
    if export_family(config) is not None:
        return None
    have = ", ".join(f"{k}={getattr(config, k)}" for k in GPT2_STYLE)
    return (f"No stock transformers class computes this combination ({have}); only GPT-2 style "
            "(pre-LN, LayerNorm, learned positions, GELU) and Llama style (pre-LN, RMSNorm, RoPE, SwiGLU) runs "
            "are exported to the model picker. The checkpoints are saved all the same.")


def _special(special: dict | None) -> dict:
    """bos/eos/pad ids: the BPE tokenizer's own; none for a char vocabulary (no character ends a text)."""
    special = special or {}
    return {k: special.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}


def _zeros_if_none(b: torch.Tensor | None, n: int) -> torch.Tensor:
    return torch.zeros(n) if b is None else b.detach().clone()


def to_gpt2(model: GPT, special: dict | None = None) -> GPT2LMHeadModel:
    c = model.config
    hf_config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                           n_head=c.n_head, n_inner=c.mlp_hidden, activation_function="gelu",
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=c.norm_eps,
                           tie_word_embeddings=c.tie_weights, architectures=["GPT2LMHeadModel"],
                           **_special(special))
    hf = GPT2LMHeadModel(hf_config)
    sd: dict[str, torch.Tensor] = {"transformer.wte.weight": model.wte.weight, "transformer.wpe.weight": model.wpe.weight,
                                   "transformer.ln_f.weight": model.ln_f.weight,
                                   "transformer.ln_f.bias": _zeros_if_none(model.ln_f.bias, c.n_embd),
                                   "lm_head.weight": model.lm_head.weight}
    for i, block in enumerate(model.h):
        p = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            norm = getattr(block, ln)
            sd[p + ln + ".weight"] = norm.weight
            sd[p + ln + ".bias"] = _zeros_if_none(norm.bias, c.n_embd)
        for ours, theirs in ((block.attn.c_attn, "attn.c_attn"), (block.attn.c_proj, "attn.c_proj"),
                             (block.mlp.c_fc, "mlp.c_fc"), (block.mlp.c_proj, "mlp.c_proj")):
            sd[p + theirs + ".weight"] = ours.weight.t()  # Conv1D: y = x @ W + b with W [in, out]
            sd[p + theirs + ".bias"] = _zeros_if_none(ours.bias, ours.out_features)
    _load_exact(hf, sd)
    return hf


def to_llama(model: GPT, special: dict | None = None) -> LlamaForCausalLM:
    c = model.config
    hf_config = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.n_embd, intermediate_size=c.mlp_hidden,
                            num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_head,
                            head_dim=c.head_dim, max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps,
                            rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                            attention_bias=c.bias, mlp_bias=c.bias, tie_word_embeddings=c.tie_weights,
                            architectures=["LlamaForCausalLM"], **_special(special))
    hf = LlamaForCausalLM(hf_config)
    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": model.wte.weight, "model.norm.weight": model.ln_f.weight,
                                   "lm_head.weight": model.lm_head.weight}
    for i, block in enumerate(model.h):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = block.ln_1.weight
        sd[p + "post_attention_layernorm.weight"] = block.ln_2.weight
        names = ("q_proj", "k_proj", "v_proj")
        for name, w in zip(names, block.attn.c_attn.weight.split(c.n_embd, dim=0)):
            sd[p + f"self_attn.{name}.weight"] = w
        if c.bias:
            for name, b in zip(names, block.attn.c_attn.bias.split(c.n_embd)):
                sd[p + f"self_attn.{name}.bias"] = b
        pairs = ((block.attn.c_proj, "self_attn.o_proj"), (block.mlp.c_gate, "mlp.gate_proj"),
                 (block.mlp.c_fc, "mlp.up_proj"), (block.mlp.c_proj, "mlp.down_proj"))
        for ours, theirs in pairs:
            sd[p + theirs + ".weight"] = ours.weight
            if c.bias:
                sd[p + theirs + ".bias"] = ours.bias
    _load_exact(hf, sd)
    return hf


def _load_exact(hf: PreTrainedModel, sd: dict[str, torch.Tensor]) -> None:
    """Copy every tensor; refuse a mapping that leaves one of the stock model's weights unset."""
    target = hf.state_dict()
    missing = [k for k in target if k not in sd and not k.endswith(".attn.bias") and not k.endswith("masked_bias")]
    if missing:
        raise RuntimeError(f"export mapping misses {missing[:5]}")
    with torch.no_grad():
        for k, v in sd.items():
            target[k].copy_(v.detach().to(target[k].device, target[k].dtype))
    hf.eval()


def to_hf(model: GPT, special: dict | None = None) -> PreTrainedModel:
    family = export_family(model.config)
    if family is None:
        raise ValueError(export_reason(model.config))
    return to_gpt2(model, special) if family == "gpt2" else to_llama(model, special)


def char_tokenizer(chars: str):
    """A fast tokenizer whose tokens are the characters (a BPE model with no merges, joined back by Fuse)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], ignore_merges=True))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=10**6, clean_up_tokenization_spaces=False)


def export_run(model: GPT, data: TextData, folder: Path) -> Path:
    """Write the HF model and tokenizer into `folder` (via a temporary folder, then renamed in)."""
    tokenizer = char_tokenizer(data.chars) if data.tokenizer == "char" else bpe_tokenizer()
    special = {} if data.tokenizer == "char" else {"bos_token_id": tokenizer.bos_token_id,
                                                   "eos_token_id": tokenizer.eos_token_id,
                                                   "pad_token_id": tokenizer.pad_token_id}
    hf = to_hf(model, special)
    hf_logging.disable_progress_bar()  # "Writing model shards" bars would fill the training log
    with atomic_folder(folder) as tmp:
        hf.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder
