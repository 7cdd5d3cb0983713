"""Reading a model's module tree: layer stacks, the order of operations (a traced meta-device
forward pass), and the role of every module inside a layer from its class and name."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM, PretrainedConfig

from core.models.params import unpacked_numel


# ---------------------------------------------------------------- reading the module tree

NORM_CLASS = re.compile(r"norm", re.I)
ACT_CLASS = re.compile(r"(gelu|silu|swish|relu|tanh|activation|sigmoid|mish)", re.I)
ATTN_CLASS = re.compile(r"attention", re.I)
CROSS = re.compile(r"(cross|encdec|encoder_attn)", re.I)
ROTARY_CLASS = re.compile(r"rotary", re.I)

ATTN_ROLES = {
    "q": {"q_proj", "query", "q", "wq", "to_q", "q_lin"},
    "k": {"k_proj", "key", "k", "wk", "to_k", "k_lin"},
    "v": {"v_proj", "value", "v", "wv", "to_v", "v_lin"},
    "qkv": {"c_attn", "qkv_proj", "query_key_value", "wqkv", "qkv", "in_proj", "w_pack"},
    "o": {"o_proj", "out_proj", "c_proj", "o", "wo", "dense", "out_lin", "to_out", "proj"},
}
MLP_ROLES = {
    "gate": {"gate_proj", "w1", "wi_0"},
    "up": {"up_proj", "w3", "wi_1", "c_fc", "fc1", "fc_in", "wi", "dense_h_to_4h", "lin1", "intermediate.dense"},
    "down": {"down_proj", "w2", "wo", "c_proj", "fc2", "fc_out", "dense_4h_to_h", "lin2", "output.dense"},
    "gate_up": {"gate_up_proj"},
}
PARALLEL_TYPES = {"gptj", "codegen", "phi"}


def own_params(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return list(module.named_parameters(recurse=False))


def numel(p: torch.Tensor) -> int:
    """Weights a parameter stands for (4-bit parameters pack two per byte): one home, core.models.params."""
    return unpacked_numel(p)


def linear_dims(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a Linear (weight [out, in]) or a GPT-2 Conv1D (weight [in, out])."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    if hasattr(module, "nx") and hasattr(module, "nf"):
        return int(module.nx), int(module.nf)
    return None


def norm_type(module: nn.Module) -> str:
    """LayerNorm subtracts the mean and has a bias; RMSNorm only rescales (T5LayerNorm is one too)."""
    name = type(module).__name__
    if isinstance(module, nn.LayerNorm):
        return "LayerNorm"
    if "rms" in name.lower() or getattr(module, "bias", None) is None:
        return "RMSNorm"
    return "LayerNorm"


def find_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The outermost ModuleLists whose first element holds an attention module: the layer stacks."""
    stacks: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(name.startswith(s + ".") for s, _ in stacks):
            continue
        first = module[0]
        if any(ATTN_CLASS.search(type(m).__name__) or n.rsplit(".", 1)[-1] in ATTN_ROLES["qkv"] | {"q_proj", "query"}
               for n, m in first.named_modules()):
            stacks.append((name, module))
    return stacks


def call_order(model: nn.Module) -> list[str] | None:
    """Module names in the order a forward pass first calls them, or None if the forward cannot run
    without data. `model` must be private to the caller (hooks are added and removed)."""
    order: list[str] = []
    seen: set[str] = set()

    def hook(name: str):
        def _pre(_module, _args):
            if name not in seen:
                seen.add(name)
                order.append(name)
        return _pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if n]
    device = next((p.device for p in model.parameters()), torch.device("meta"))
    ids = torch.zeros((1, 4), dtype=torch.long, device=device)
    extra = {"decoder_input_ids": ids} if getattr(model.config, "is_encoder_decoder", False) else {}
    # Meta tensors have no values, so any check that reads one (.item()) fails. Without a mask some models
    # look for padding in the ids; with one, some mask shortcuts test it: try both.
    attempts = ({"input_ids": ids, **extra}, {"input_ids": ids, "attention_mask": torch.ones_like(ids), **extra})
    try:
        for kwargs in attempts:
            order.clear()
            seen.clear()
            try:
                with torch.no_grad():
                    model(**kwargs)
                return order
            except Exception:  # noqa: BLE001 - a forward that needs real data: try the next way, then give up
                continue
    finally:
        for h in handles:
            h.remove()
    return None


def meta_twin(config: PretrainedConfig) -> nn.Module:
    """A weightless copy built from a copy of the config (building a model writes to its config)."""
    from core.models.params import meta_model_from_config

    twin_config = copy.deepcopy(config)
    # Eager attention, as the lab runs real models; sdpa's mask shortcuts read values that meta tensors lack.
    twin_config._attn_implementation = "eager"
    if getattr(twin_config, "is_encoder_decoder", False) and not getattr(twin_config, "architectures", None):
        # A bare encoder-decoder config (pasted without `architectures`) is the whole seq2seq model, not
        # the decoder alone that AutoModelForCausalLM would build.
        try:
            with torch.device("meta"):
                return AutoModelForSeq2SeqLM.from_config(twin_config).eval()
        except (ValueError, TypeError, AttributeError):
            pass
    return meta_model_from_config(twin_config).eval()


# ---------------------------------------------------------------- roles inside a layer


@dataclass
class Leaf:
    rel: str  # name inside the layer, "self_attn.q_proj"
    module: nn.Module
    unit: tuple[str, ...]  # ("norm", rel) | ("attn", group) | ("mlp",)
    role: str  # q, k, v, qkv, o, extra | gate, up, down, gate_up, moe, other | norm
    order: float = 0.0


def _attention_group(rel: str, layer: nn.Module) -> str | None:
    """The outermost module under the layer whose class says Attention (BertAttention, T5LayerSelfAttention)."""
    parts = rel.split(".")
    for i in range(1, len(parts) + 1):
        path = ".".join(parts[:i])
        if ATTN_CLASS.search(type(layer.get_submodule(path)).__name__):
            return path
    for i in range(1, len(parts)):
        if re.search(r"(attn|attention)", parts[i - 1], re.I):
            return ".".join(parts[:i])
    return None


def _role(rel: str, names: dict[str, set[str]]) -> str | None:
    last = rel.rsplit(".", 1)[-1].lower()
    last2 = ".".join(rel.lower().split(".")[-2:])
    for role, options in names.items():
        if last2 in options:
            return role
    for role, options in names.items():
        if last in options:
            return role
    return None


def _classify(rel: str, module: nn.Module, layer: nn.Module) -> Leaf:
    group = _attention_group(rel, layer)
    last = rel.rsplit(".", 1)[-1].lower()
    if NORM_CLASS.search(type(module).__name__) or isinstance(module, nn.LayerNorm):
        if group is not None and last in {"q_norm", "k_norm", "q_layernorm", "k_layernorm"}:
            return Leaf(rel, module, ("attn", group), "extra")
        return Leaf(rel, module, ("norm", rel), "norm")
    if group is not None:
        return Leaf(rel, module, ("attn", group), _role(rel, ATTN_ROLES) or "extra")
    if "expert" in rel.lower() or "router" in rel.lower():
        return Leaf(rel, module, ("mlp",), "moe")
    return Leaf(rel, module, ("mlp",), _role(rel, MLP_ROLES) or "other")


def layer_leaves(layer: nn.Module) -> list[Leaf]:
    return [_classify(n, m, layer) for n, m in layer.named_modules() if n and own_params(m)]


def fallback_order(leaves: list[Leaf]) -> None:
    """Without a trace: registration order, with pre-norms moved before the sublayer their name names."""
    first_attn = next((i for i, lf in enumerate(leaves) if lf.unit[0] == "attn"), 0)
    first_mlp = next((i for i, lf in enumerate(leaves) if lf.unit[0] == "mlp"), len(leaves))
    for i, lf in enumerate(leaves):
        lf.order = float(i)
        name = lf.rel.lower()
        if lf.role == "norm":
            if re.search(r"(input_layernorm|ln_1|ln1|attention_norm|attn_norm|pre_attn)", name):
                lf.order = first_attn - 0.5
            elif re.search(r"(post_attention_layernorm|ln_2|ln2|ffn_norm|pre_feedforward|pre_mlp)", name):
                lf.order = first_mlp - 0.5


def norm_label(name: str, kind: str) -> str:
    return name if name == kind else f"{name}\n{kind}"


def common_prefix(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common) or names[0]


def out_features(shape_row: tuple[str, tuple[int, ...]]) -> int:
    """A Linear weight is [out, in]; a Conv1D weight is [in, out] (its name ends c_attn / c_proj ...)."""
    name, shape = shape_row
    return shape[1] if "c_" in name.rsplit(".", 2)[-2] else shape[0]


def act_name(raw: str) -> str:
    r = raw.lower()
    if "silu" in r or "swish" in r:
        return "SiLU"
    if "gelu" in r:
        return "GELU (tanh)" if ("new" in r or "tanh" in r or "fast" in r or "pytorch" in r) else "GELU"
    if "relu" in r:
        return "ReLU"
    return raw or "activation"
