"""The block diagram of a transformer, read from its real module tree (never drawn by hand).

`build_diagram(model)` walks `model.named_modules()`: layer stacks are the ModuleLists whose layers
hold an attention module; inside layer 0 every module that owns parameters gets a role from its class
(LayerNorm vs RMSNorm, Linear vs Conv1D) and its name (q_proj / c_attn / gate_proj / c_fc ...).
The order of operations comes from a forward pass of a weightless twin on the meta device, traced
with forward-pre-hooks, because registration order lies (Llama registers its norms after the MLP).
`to_dot` renders the result for Graphviz.
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, replace
from typing import Any, Iterable

import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM, PretrainedConfig

from core.inspect.architecture import Family, config_dims, detect_family
from core.inspect.rope import rope_theta

# ---------------------------------------------------------------- data model


@dataclass(frozen=True)
class Block:
    """One box of the diagram. Blocks inside a layer stack describe layer 0 and repeat `repeats` times."""

    id: str  # Graphviz node id
    label: str  # what the box says
    kind: str  # embedding, positions, rope, norm, q, k, v, qkv, attention, o, residual, gate, up, act, down, mlp, ...
    title: str  # a readable name for the selector: "layer × 30 · self_attn.q_proj"
    modules: tuple[str, ...] = ()  # module names (layer 0 for stacked blocks)
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (parameter name, shape), layer 0
    params_per_layer: int = 0  # new parameters in one instance; weights tied to an earlier block count 0
    params: int = 0  # new parameters over all layers
    repeats: int = 1
    stack: str | None = None  # id of the layer stack this block repeats in
    group: str | None = None  # sub-cluster inside the stack ("attention", "mlp")
    io: str = ""  # activation shapes, "[seq, 576] → [seq, 1536]"
    formula: str = ""  # LaTeX
    explanation: str = ""
    tied_to: str | None = None  # id of the block whose weights this one reuses


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    label: str = ""
    style: str = "solid"


@dataclass(frozen=True)
class Stack:
    id: str
    label: str
    path: str  # the ModuleList, e.g. "model.layers"
    n_layers: int
    parallel: bool = False  # attention and MLP read the same input and are summed (GPT-J, NeoX)


@dataclass(frozen=True)
class Diagram:
    model_class: str
    family: Family
    dims: dict[str, Any]
    blocks: tuple[Block, ...]
    edges: tuple[Edge, ...]
    stacks: tuple[Stack, ...]
    features: dict[str, Any]  # positions, norm, mlp, attention, tied_lm_head, ... as read from the modules
    order_source: str  # how the order of operations was found
    notes: tuple[str, ...] = ()

    def block(self, block_id: str) -> Block:
        return next(b for b in self.blocks if b.id == block_id)

    def blocks_of(self, kind: str) -> list[Block]:
        return [b for b in self.blocks if b.kind == kind]

    @property
    def total_params(self) -> int:
        return sum(b.params for b in self.blocks)


# ---------------------------------------------------------------- reading the module tree

_NORM_CLASS = re.compile(r"norm", re.I)
_ACT_CLASS = re.compile(r"(gelu|silu|swish|relu|tanh|activation|sigmoid|mish)", re.I)
_ATTN_CLASS = re.compile(r"attention", re.I)
_CROSS = re.compile(r"(cross|encdec|encoder_attn)", re.I)
_ROTARY_CLASS = re.compile(r"rotary", re.I)

_ATTN_ROLES = {
    "q": {"q_proj", "query", "q", "wq", "to_q", "q_lin"},
    "k": {"k_proj", "key", "k", "wk", "to_k", "k_lin"},
    "v": {"v_proj", "value", "v", "wv", "to_v", "v_lin"},
    "qkv": {"c_attn", "qkv_proj", "query_key_value", "wqkv", "qkv", "in_proj", "w_pack"},
    "o": {"o_proj", "out_proj", "c_proj", "o", "wo", "dense", "out_lin", "to_out", "proj"},
}
_MLP_ROLES = {
    "gate": {"gate_proj", "w1", "wi_0"},
    "up": {"up_proj", "w3", "wi_1", "c_fc", "fc1", "fc_in", "wi", "dense_h_to_4h", "lin1", "intermediate.dense"},
    "down": {"down_proj", "w2", "wo", "c_proj", "fc2", "fc_out", "dense_4h_to_h", "lin2", "output.dense"},
    "gate_up": {"gate_up_proj"},
}
_PARALLEL_TYPES = {"gptj", "codegen", "phi"}


def _own_params(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return list(module.named_parameters(recurse=False))


def _numel(p: torch.Tensor) -> int:
    from core.models.params import _unpacked_numel  # 4-bit weights pack two values per byte

    n = p.numel()
    return _unpacked_numel(p, n) if hasattr(p, "quant_state") or p.dtype == torch.uint8 else n


def _linear_dims(module: nn.Module) -> tuple[int, int] | None:
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
        if any(_ATTN_CLASS.search(type(m).__name__) or n.rsplit(".", 1)[-1] in _ATTN_ROLES["qkv"] | {"q_proj", "query"}
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
class _Leaf:
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
        if _ATTN_CLASS.search(type(layer.get_submodule(path)).__name__):
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


def _classify(rel: str, module: nn.Module, layer: nn.Module) -> _Leaf:
    group = _attention_group(rel, layer)
    last = rel.rsplit(".", 1)[-1].lower()
    if _NORM_CLASS.search(type(module).__name__) or isinstance(module, nn.LayerNorm):
        if group is not None and last in {"q_norm", "k_norm", "q_layernorm", "k_layernorm"}:
            return _Leaf(rel, module, ("attn", group), "extra")
        return _Leaf(rel, module, ("norm", rel), "norm")
    if group is not None:
        return _Leaf(rel, module, ("attn", group), _role(rel, _ATTN_ROLES) or "extra")
    if "expert" in rel.lower() or "router" in rel.lower():
        return _Leaf(rel, module, ("mlp",), "moe")
    return _Leaf(rel, module, ("mlp",), _role(rel, _MLP_ROLES) or "other")


def _layer_leaves(layer: nn.Module) -> list[_Leaf]:
    return [_classify(n, m, layer) for n, m in layer.named_modules() if n and _own_params(m)]


def _fallback_order(leaves: list[_Leaf]) -> None:
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


# ---------------------------------------------------------------- building


_KIND_COLORS = {
    "input": "#eeeeee", "output": "#eeeeee", "embedding": "#d6e9f8", "positions": "#d6e9f8",
    "segments": "#d6e9f8", "rope": "#fde2c8", "norm": "#fff3b0", "final_norm": "#fff3b0",
    "q": "#e3d7f5", "k": "#e3d7f5", "v": "#e3d7f5", "qkv": "#e3d7f5", "attention": "#cdb8ee", "o": "#e3d7f5",
    "residual": "#ffffff", "sum": "#ffffff", "gate": "#d3f0d3", "up": "#d3f0d3", "act": "#b9e6b9",
    "down": "#d3f0d3", "mlp": "#d3f0d3", "lm_head": "#f8d4d4", "other": "#eeeeee",
}


class _Builder:
    def __init__(self, model: nn.Module, config: PretrainedConfig, order: list[str] | None):
        self.model = model
        self.config = config
        self.dims = config_dims(config)
        self.family = detect_family(config)
        self.order = {n: i for i, n in enumerate(order)} if order else None
        self.blocks: list[Block] = []
        self.edges: list[Edge] = []
        self.stacks: list[Stack] = []
        self.owner: dict[int, str] = {}  # id(Parameter) -> block id that counted it first
        self.notes: list[str] = []
        self.features: dict[str, Any] = {}
        self.rope = self._find_rope()
        self._n = 0

    # -- helpers

    def _new_id(self) -> str:
        self._n += 1
        return f"n{self._n}"

    def _count(self, modules: Iterable[nn.Module], block_id: str) -> tuple[int, str | None]:
        """New parameters of `modules` (claimed for block_id) and the block that owned any reused ones."""
        new, tied = 0, None
        for m in modules:
            for _, p in _own_params(m):
                owner = self.owner.get(id(p))
                if owner is None:
                    self.owner[id(p)] = block_id
                    new += _numel(p)
                elif owner != block_id:
                    tied = owner
        return new, tied

    def add(self, kind: str, label: str, title: str, names: Iterable[str] = (), *, stack: Stack | None = None,
            prefix: str = "", group: str | None = None, io: str = "", formula: str = "", explanation: str = "") -> str:
        block_id = self._new_id()
        names = tuple(names)
        mods = [self.model.get_submodule(prefix + n) for n in names]
        shapes = tuple((f"{prefix}{n}.{pn}", tuple(p.shape)) for n, m in zip(names, mods) for pn, p in _own_params(m))
        new, tied = self._count(mods, block_id)
        self.blocks.append(Block(
            id=block_id, label=label, kind=kind, title=title, modules=tuple(prefix + n for n in names),
            shapes=shapes, params_per_layer=new, params=new, repeats=stack.n_layers if stack else 1,
            stack=stack.id if stack else None, group=group, io=io, formula=formula, explanation=explanation,
            tied_to=tied))
        if tied and not new:
            self.edge(tied, block_id, "same weights", "dashed")
        return block_id

    def edge(self, src: str | None, dst: str | None, label: str = "", style: str = "solid") -> None:
        if src and dst:
            self.edges.append(Edge(src, dst, label, style))

    def _pos(self, name: str, default: float) -> float:
        if self.order is None:
            return default
        return float(self.order.get(name, default + 1e6))

    def _find_rope(self) -> str | None:
        for name, m in self.model.named_modules():
            if _ROTARY_CLASS.search(type(m).__name__):
                return name
        return None

    # -- top level

    def build(self) -> None:
        stacks = find_stacks(self.model)
        stack_paths = [s for s, _ in stacks]
        items: list[tuple[float, str, Any]] = []
        registration = list(self.model.named_modules())
        for i, (name, m) in enumerate(registration):
            if not name or not _own_params(m) or any(name.startswith(s + ".") for s in stack_paths):
                continue
            if self._alias(name, m, registration):
                continue
            items.append((self._pos(name, i), "leaf", (name, m)))
        for i, (name, m) in enumerate(registration):
            if name in stack_paths:
                items.append((self._pos(f"{name}.0", i), "stack", (name, m)))
        items.sort(key=lambda t: t[0])

        stream: str | None = None
        encoder_out: str | None = None
        passed_stack = False
        embeds: list[tuple[str, nn.Module]] = []
        head: list[str] = []
        last_stack_index = max((i for i, it in enumerate(items) if it[1] == "stack"), default=-1)
        for index, (_, what, payload) in enumerate(items):
            if what == "leaf" and index > last_stack_index and last_stack_index >= 0 and (
                    head or not _NORM_CLASS.search(type(payload[1]).__name__)):
                head.append(payload[0])
                continue
            if what == "leaf" and isinstance(payload[1], nn.Embedding):
                if passed_stack and self._embedding_kind(payload[0]) == "embedding":
                    encoder_out, stream, passed_stack = stream, None, False
                embeds.append(payload)
                continue
            if embeds:
                stream = self._embeddings(embeds, decoder=encoder_out is not None)
                embeds = []
            if what == "stack":
                entry, exit_ = self._stack(payload[0], payload[1], encoder_out)
                self.edge(stream, entry)
                stream, passed_stack = exit_, True
            elif _NORM_CLASS.search(type(payload[1]).__name__):
                stream = self._top_norm(payload[0], payload[1], stream, passed_stack)
            elif self._unclaimed(payload[1]):
                block = self.add("other", payload[0], payload[0], [payload[0]],
                                 explanation="a module with parameters that has no standard role here")
                self.edge(stream, block)
                stream = block
        if embeds:
            stream = self._embeddings(embeds, decoder=encoder_out is not None)
        self._head(head, stream)
        self._features()

    def _alias(self, name: str, module: nn.Module, registration: list[tuple[str, nn.Module]]) -> bool:
        """A module the forward never calls whose weights another, called module uses (T5's `shared`)."""
        if self.order is None or name in self.order:
            return False
        mine = {id(p) for _, p in _own_params(module)}
        used = {id(p) for n, m in registration if n in self.order and m is not module for _, p in _own_params(m)}
        return mine <= used

    def _unclaimed(self, module: nn.Module) -> bool:
        return any(id(p) not in self.owner for _, p in _own_params(module))

    def _embedding_kind(self, name: str) -> str:
        last = name.lower()
        if "token_type" in last or "segment" in last:
            return "segments"
        if re.search(r"(wpe|pos)", last.rsplit(".", 1)[-1]):
            return "positions"
        return "embedding"

    def _embeddings(self, embeds: list[tuple[str, nn.Module]], decoder: bool) -> str:
        d = self.dims
        inp = self.add("input", "decoder input ids\n[seq]" if decoder else "token ids\n[seq]",
                       "decoder input ids" if decoder else "input: token ids",
                       explanation="the text, already split into token ids by the tokenizer"
                       + (" (for the decoder: the output so far, shifted right)" if decoder else ""))
        parts: list[str] = []
        for name, m in embeds:
            kind = self._embedding_kind(name)
            rows, width = tuple(m.weight.shape)
            if kind == "embedding":
                block = self.add("embedding", f"{name.rsplit('.', 1)[-1]}\nEmbedding {rows:,} × {width}",
                                 f"token embedding · {name}", [name], io=f"[seq] → [seq, {width}]",
                                 formula=r"h^{(0)}_t = E[x_t],\quad E \in \mathbb{R}^{V \times d}",
                                 explanation=f"looks up one learned row of {width} numbers per token id "
                                             f"({rows:,} rows, one per vocabulary entry)")
                self.edge(inp, block)
            elif kind == "positions":
                block = self.add("positions", f"{name.rsplit('.', 1)[-1]}\nlearned positions {rows:,} × {width}",
                                 f"learned positions · {name}", [name], io=f"[seq] → [seq, {width}]",
                                 formula=r"h^{(0)}_t = E[x_t] + P[t],\quad P \in \mathbb{R}^{T_{max} \times d}",
                                 explanation=f"one learned vector per position 0…{rows - 1}: the model cannot "
                                             f"read past {rows:,} tokens")
                pos = self.add("input", "positions\n0, 1, …, seq−1", "input: positions",
                               explanation="the index of each token in the sequence")
                self.edge(pos, block)
            else:
                block = self.add("segments", f"{name.rsplit('.', 1)[-1]}\nsegment embedding {rows} × {width}",
                                 f"segment embedding · {name}", [name], io=f"[seq] → [seq, {width}]",
                                 formula=r"h^{(0)}_t \mathrel{+}= S[s_t]",
                                 explanation="which sentence (A or B) each token belongs to, added to the token vector")
                self.edge(inp, block, "segment ids")
            parts.append(block)
        if len(parts) == 1:
            return parts[0]
        total = self.add("sum", "+", "sum of embeddings", io=f"[seq, {d['hidden_size']}]",
                         formula=r"h^{(0)} = E[x] + P[t] (+ S[s])",
                         explanation="the token, position (and segment) vectors are added element-wise")
        for p in parts:
            self.edge(p, total)
        return total

    def _top_norm(self, name: str, m: nn.Module, stream: str | None, passed_stack: bool) -> str:
        kind = norm_type(m)
        where = "final" if passed_stack else "embedding"
        block = self.add("final_norm" if passed_stack else "norm", _norm_label(name.rsplit(".", 1)[-1], kind),
                         f"{where} norm · {name}", [name], io=f"[seq, {self.dims['hidden_size']}] → same",
                         formula=_NORM_FORMULA[kind],
                         explanation=("normalises the last hidden state before the output head"
                                      if passed_stack else "normalises the summed embeddings before layer 0"))
        self.edge(stream, block)
        return block

    def _head(self, names: list[str], stream: str | None) -> None:
        if not names:
            return
        vocab = self.dims["vocab_size"]
        mods = [self.model.get_submodule(n) for n in names]
        dims = _linear_dims(mods[-1]) or _linear_dims(mods[0])
        tied_before = {id(p): self.owner.get(id(p)) for m in mods for _, p in _own_params(m)}
        is_tied = any(tied_before.values())
        label = names[0] if len(names) == 1 else _common_prefix(names) + " (head)"
        tied_label = ""
        if is_tied:
            owner = next(o for o in tied_before.values() if o)
            tied_label = "\ntied to " + next(b for b in self.blocks if b.id == owner).modules[0].rsplit(".", 1)[-1]
        block = self.add("lm_head", f"{label}\n{(str(dims[0]) + ' → ' + format(dims[1], ',')) if dims else ''}{tied_label}",
                         f"output head · {', '.join(names)}", names,
                         io=f"[seq, {self.dims['hidden_size']}] → [seq, {vocab:,}]" if vocab else "",
                         formula=(r"\text{logits} = h\,E^{\top}\quad(\text{the embedding matrix, reused})" if is_tied
                                  else r"\text{logits} = h\,W_U,\quad W_U \in \mathbb{R}^{d \times V}"),
                         explanation=("one score per vocabulary entry; " + (
                             "it reuses the token embedding matrix (same Parameter object), so it adds no parameters"
                             if is_tied else "its own matrix, separate from the input embedding")))
        self.edge(stream, block)
        out = self.add("output", f"logits\n[seq, {vocab:,}]" if vocab else "logits", "output: logits",
                       explanation="softmax over the last row gives the next-token probabilities"
                       if self.family.kind != "encoder-only" else "softmax at each masked position gives the filled-in token")
        self.edge(block, out)

    # -- one stack of layers

    def _stack(self, path: str, layers: nn.ModuleList, encoder_out: str | None) -> tuple[str, str]:
        n = len(layers)
        role = "encoder" if "encoder" in path.lower() or self.family.kind == "encoder-only" else "decoder"
        parallel = bool(getattr(self.config, "use_parallel_residual", False) or getattr(self.config, "parallel_attn", False)
                        or self.dims["model_type"] in _PARALLEL_TYPES)
        stack = Stack(id=f"cluster_{len(self.stacks)}", label=f"× {n} {role} layers  ({path}.0 … {path}.{n - 1})",
                      path=path, n_layers=n, parallel=parallel)
        self.stacks.append(stack)
        layer, prefix = layers[0], f"{path}.0."
        leaves = _layer_leaves(layer)
        if self.order is not None:
            for i, lf in enumerate(leaves):
                lf.order = self._pos(prefix + lf.rel, i)
        else:
            _fallback_order(leaves)
        leaves.sort(key=lambda lf: lf.order)
        units: list[tuple[str, ...]] = []
        for lf in leaves:
            if not units or units[-1] != lf.unit:
                units.append(lf.unit)

        keyed: dict[tuple[str, ...], str] = {}  # (unit..., role) -> block id, to count layers 1..n-1
        x = layer_in = self.add("residual", "layer input\n(residual stream)", f"{role} layer input", stack=stack,
                                io=f"[seq, {self.dims['hidden_size']}]",
                                explanation="the hidden state entering each layer; every sublayer adds its output to it")
        plan = self._plan(units, leaves)
        outs: list[str] = []
        shared_norm: str | None = None
        for unit, pre, post in plan:
            pre_ids = [self._layer_norm_block(lf, "pre", stack, prefix, role, keyed) for lf in pre]
            h = x
            for p in pre_ids:
                self.edge(h, p)
                h = p
            if parallel and not pre_ids and shared_norm:
                h = shared_norm  # GPT-J: the MLP reads the same normed input as attention
            shared_norm = pre_ids[-1] if pre_ids else shared_norm
            sub = [lf for lf in leaves if lf.unit == unit]
            out = (self._attention(unit, sub, layer, stack, prefix, h, encoder_out, keyed) if unit[0] == "attn"
                   else self._mlp(sub, layer, stack, prefix, h, keyed))
            if parallel:
                outs.append(out)
                continue
            for lf, placement in post:
                if placement == "sandwich":
                    nb = self._layer_norm_block(lf, placement, stack, prefix, role, keyed)
                    self.edge(out, nb)
                    out = nb
            add = self._residual(stack)
            self.edge(out, add)
            self.edge(x, add, "residual", "dashed")
            x = add
            for lf, placement in post:
                if placement == "post":
                    nb = self._layer_norm_block(lf, placement, stack, prefix, role, keyed)
                    self.edge(x, nb)
                    x = nb
        if parallel and outs:
            add = self._residual(stack, parallel=True)
            for o in outs:
                self.edge(o, add)
            self.edge(x, add, "residual", "dashed")
            x = add
        self._count_other_layers(layers, path, keyed, stack)
        return layer_in, x

    def _plan(self, units: list[tuple[str, ...]], leaves: list[_Leaf]) -> list[tuple[tuple[str, ...], list[_Leaf], list[tuple[_Leaf, str]]]]:
        """[(sublayer unit, norms before it, [(norm after it, 'post' | 'sandwich')])] in order."""
        plan: list[tuple[tuple[str, ...], list[_Leaf], list[tuple[_Leaf, str]]]] = []
        pending: list[_Leaf] = []
        for i, unit in enumerate(units):
            if unit[0] != "norm":
                plan.append((unit, pending, []))
                pending = []
                continue
            lf = next(lf for lf in leaves if lf.unit == unit)
            placement = self._norm_placement(i, units, leaves)
            if placement == "pre" or not plan:
                pending.append(lf)
            else:
                plan[-1][2].append((lf, placement))
        if pending and plan:  # norms after the last sublayer that were not recognised as post norms
            plan[-1][2].extend((lf, "post") for lf in pending)
        return plan

    def _norm_placement(self, i: int, units: list[tuple[str, ...]], leaves: list[_Leaf]) -> str:
        """'pre' (norm → sublayer → +x), 'post' (sublayer → +x → norm, BERT) or 'sandwich'
        (sublayer → norm → +x, Gemma 2), from where the norm sits between the sublayers."""
        prev = units[i - 1] if i > 0 else None
        nxt = units[i + 1] if i + 1 < len(units) else None
        if prev is None or prev[0] == "norm":
            return "pre"
        if units[0][0] != "norm":  # the layer starts with a sublayer on the raw input: post-norm (BERT, BART)
            return "post"
        nested = self._nested(units[i], prev, leaves)
        if nxt is not None and nxt[0] != "norm":
            return "post" if nested else "pre"
        return "post" if nested else "sandwich"

    @staticmethod
    def _nested(norm_unit: tuple[str, ...], sub_unit: tuple[str, ...], leaves: list[_Leaf]) -> bool:
        """BERT's attention.output.LayerNorm sits next to attention.output.dense: part of that sublayer."""
        parent = norm_unit[1].rpartition(".")[0]
        return bool(parent) and any(lf.unit == sub_unit and lf.rel.startswith(parent + ".") for lf in leaves)

    def _layer_norm_block(self, lf: _Leaf, placement: str, stack: Stack, prefix: str, role: str,
                          keyed: dict[tuple[str, ...], str]) -> str:
        kind = norm_type(lf.module)
        bid = self.add("norm", _norm_label(lf.rel, kind), f"{role} layer × {stack.n_layers} · {lf.rel} ({kind}, {placement}-norm)",
                       [lf.rel], stack=stack, prefix=prefix, io=f"[seq, {self.dims['hidden_size']}] → same",
                       formula=_NORM_FORMULA[kind], explanation=_NORM_TEXT[placement].format(kind=kind))
        keyed[(*lf.unit, lf.role)] = bid
        self.features.setdefault("norm_placement", set()).add(placement)
        return bid

    def _residual(self, stack: Stack, parallel: bool = False) -> str:
        return self.add("residual", "+", f"layer × {stack.n_layers} · residual add", stack=stack,
                        io=f"[seq, {self.dims['hidden_size']}]",
                        formula=(r"x \leftarrow x + \mathrm{Attn}(\mathrm{norm}(x)) + \mathrm{MLP}(\mathrm{norm}(x))"
                                 if parallel else r"x \leftarrow x + F(x)"),
                        explanation="the residual connection: the sublayer's output is added to its input, so "
                                    "information (and gradients) flow straight through the whole stack")

    # -- attention

    def _heads(self, roles: dict[str, _Leaf]) -> tuple[int | None, int | None, int | None]:
        """Query heads, KV heads and head size, read from the projection shapes where possible."""
        d = self.dims
        head_dim = d["head_dim"]
        heads, kv = d["heads"], d["kv_heads"]
        if head_dim and "q" in roles and "k" in roles:
            q_dims, k_dims = _linear_dims(roles["q"].module), _linear_dims(roles["k"].module)
            if q_dims and k_dims and q_dims[1] % head_dim == 0 and k_dims[1] % head_dim == 0:
                heads, kv = q_dims[1] // head_dim, k_dims[1] // head_dim
        return heads, kv, head_dim

    def _rope_block(self) -> str | None:
        if self.rope is None:
            return None
        if "rope_block" not in self.features:
            theta = rope_theta(self.config)
            partial = getattr(self.config, "partial_rotary_factor", None)
            extra = f", on {partial:.0%} of each head" if partial and partial < 1 else ""
            self.features["rope_block"] = self.add(
                "rope", f"{self.rope}\nRoPE" + (f"  θ = {theta:,.0f}" if theta else ""),
                f"rotary position embedding · {self.rope}", [self.rope],
                io=f"positions → cos, sin [seq, {self.dims['head_dim']}]",
                formula=(r"\begin{pmatrix}q'_{2i}\\ q'_{2i+1}\end{pmatrix} = \begin{pmatrix}\cos t\theta_i & -\sin t\theta_i"
                         r"\\ \sin t\theta_i & \cos t\theta_i\end{pmatrix}\begin{pmatrix}q_{2i}\\ q_{2i+1}\end{pmatrix},"
                         r"\quad \theta_i = \theta^{-2i/d_h}"),
                explanation="rotates each pair of Q and K coordinates by an angle proportional to the position, so "
                            f"q·k depends on the distance between tokens; no parameters{extra}")
        return self.features["rope_block"]

    def _attention(self, unit: tuple[str, ...], leaves: list[_Leaf], layer: nn.Module, stack: Stack, prefix: str,
                   h: str, encoder_out: str | None, keyed: dict[tuple[str, ...], str]) -> str:
        group = unit[1]
        cross = bool(_CROSS.search(group) or _CROSS.search(type(layer.get_submodule(group)).__name__))
        roles: dict[str, _Leaf] = {}
        for lf in leaves:
            roles.setdefault(lf.role, lf)
        extras = [lf for lf in leaves if lf.role == "extra"]
        heads, kv, head_dim = self._heads(roles)
        hidden = self.dims["hidden_size"]
        name = "cross-attention" if cross else "self-attention"
        cluster = f"{name} ({group})"
        n = stack.n_layers
        kv_src = encoder_out if cross and encoder_out else h

        def proj(role: str, symbol: str, text: str) -> str:
            lf = roles[role]
            dims = _linear_dims(lf.module)
            bias = getattr(lf.module, "bias", None) is not None
            kind_name = type(lf.module).__name__
            label = f"{lf.rel.rsplit('.', 1)[-1]}\n{kind_name} {dims[0]} → {dims[1]}" if dims else lf.rel
            bid = self.add(role, label, f"layer × {n} · {lf.rel}", [lf.rel], stack=stack, prefix=prefix, group=cluster,
                           io=f"[seq, {dims[0]}] → [seq, {dims[1]}]" if dims else "",
                           formula=_PROJ_FORMULA[role].format(b=f" + b_{{{symbol}}}" if bias else ""),
                           explanation=text)
            keyed[(*unit, role)] = bid
            return bid

        core_label = "softmax(Q·Kᵀ/√d_h)·V"
        if self.family.kind == "decoder-only" or (self.family.kind == "encoder-decoder" and not cross and "decoder" in stack.label):
            core_label = "causal " + core_label
        split = ""
        if heads and kv:
            split = f"{heads} heads · {kv} KV heads"
            if kv == 1 and heads > 1:
                split += " (MQA)"
            elif kv < heads:
                split += f"\nGQA: {heads // kv} query heads per KV head"
        if "q" in roles and "k" in roles and "v" in roles:
            kv_note = (f" ({kv} KV heads × {head_dim}: smaller than Q, the point of GQA)"
                       if kv and heads and kv < heads else "")
            q = proj("q", "Q", f"the queries: what each token is looking for, {heads} heads × {head_dim} numbers")
            k = proj("k", "K", f"the keys: what each token offers to be found by{kv_note}"
                     + ("; computed from the encoder output" if cross else ""))
            v = proj("v", "V", "the values: what each token passes on when it is attended to"
                     + ("; computed from the encoder output" if cross else ""))
            self.edge(h, q)
            self.edge(kv_src, k, "encoder output" if cross else "")
            self.edge(kv_src, v, "encoder output" if cross else "")
            feeds = [(q, "Q"), (k, "K"), (v, "V")]
        elif "qkv" in roles:
            lf = roles["qkv"]
            dims = _linear_dims(lf.module)
            qkv = self.add("qkv", f"{lf.rel.rsplit('.', 1)[-1]} (fused Q, K, V)\n{type(lf.module).__name__} "
                                  f"{dims[0]} → {dims[1]}" if dims else lf.rel,
                           f"layer × {n} · {lf.rel} (fused Q, K, V)", [lf.rel], stack=stack, prefix=prefix,
                           group=cluster, io=f"[seq, {dims[0]}] → [seq, {dims[1]}] = 3 × [seq, {dims[1] // 3}]" if dims else "",
                           formula=r"[\,Q\;K\;V\,] = x\,W_{QKV} + b,\quad W_{QKV} \in \mathbb{R}^{d \times 3d}",
                           explanation="one matrix computes queries, keys and values at once; the output is split "
                                       "in three (same maths as three separate projections)")
            keyed[(*unit, "qkv")] = qkv
            self.edge(h, qkv)
            feeds = [(qkv, "split → Q, K, V")]
        else:  # names we do not recognise: one honest box with every parameter of the sublayer
            bid = self.add("attention", f"{group}\n{type(layer.get_submodule(group)).__name__}",
                           f"layer × {n} · {group}", [lf.rel for lf in leaves], stack=stack, prefix=prefix,
                           group=cluster, io=f"[seq, {hidden}] → [seq, {hidden}]", formula=_ATTN_FORMULA,
                           explanation=f"{name}; its projections have names this page does not know")
            for lf in leaves:
                keyed[(*unit, lf.role)] = bid
            self.edge(h, bid)
            return bid
        extra_names = [lf.rel for lf in extras]
        rel_bias = any("relative_attention_bias" in r for r in extra_names)
        core = self.add(
            "attention", f"{core_label}\n{split}".strip(), f"layer × {n} · {group} ({name} scores and mixing)",
            extra_names or [], stack=stack, prefix=prefix, group=cluster,
            io=(f"Q [seq, {heads}, {head_dim}], K, V [seq, {kv}, {head_dim}] → [seq, {(heads or 0) * (head_dim or 0)}]"
                if heads and kv and head_dim else ""),
            formula=_ATTN_FORMULA + (r"\ (+\,\text{relative position bias})" if rel_bias else ""),
            explanation=(f"each of the {heads} heads scores every {'earlier ' if 'causal' in core_label else ''}token "
                         f"against the current one, softmaxes the scores and mixes the values"
                         + (f"; query head i reads KV head ⌊i / {heads // kv}⌋" if heads and kv and 1 < heads // kv else "")
                         + ("; extra parameters: " + ", ".join(extra_names) if extra_names else "")))
        for lf in extras:
            keyed[(*unit, "extra")] = core
        for src, label in feeds:
            self.edge(src, core, label)
        if not cross and self.rope is not None:
            self.edge(self._rope_block(), core, "rotate Q, K", "dashed")
        if "o" not in roles:
            return core
        o = proj("o", "O", f"mixes the {heads} heads' outputs back into the {hidden}-wide residual stream")
        self.edge(core, o, f"concat heads [seq, {(heads or 0) * (head_dim or 0)}]" if heads and head_dim else "")
        return o

    # -- MLP

    def _activation(self, layer: nn.Module, leaves: list[_Leaf]) -> tuple[str | None, str]:
        """The activation module inside the MLP (by class), or the config's activation name."""
        parents = {lf.rel.rpartition(".")[0] for lf in leaves}
        for name, m in layer.named_modules():
            if name and not _own_params(m) and _ACT_CLASS.search(type(m).__name__) and name.rpartition(".")[0] in parents:
                return name, _act_name(type(m).__name__)
        return None, _act_name(str(self.dims.get("activation") or ""))

    def _mlp(self, leaves: list[_Leaf], layer: nn.Module, stack: Stack, prefix: str, h: str,
             keyed: dict[tuple[str, ...], str]) -> str:
        roles: dict[str, _Leaf] = {}
        for lf in leaves:
            roles.setdefault(lf.role, lf)
        n = stack.n_layers
        act_module, act = self._activation(layer, leaves)
        cluster = "MLP"
        hidden = self.dims["hidden_size"]
        gated = {"gate", "up", "down"} <= set(roles) or {"gate_up", "down"} <= set(roles)
        plain = {"up", "down"} <= set(roles) and "gate" not in roles and "gate_up" not in roles
        if "moe" in roles or not (gated or plain) or set(roles) - {"gate", "up", "down", "gate_up"}:
            parent = _common_prefix([lf.rel for lf in leaves]) if len(leaves) > 1 else leaves[0].rel.rpartition(".")[0]
            owner = type(layer.get_submodule(parent)).__name__ if parent else ""
            title = "mixture of experts" if "moe" in roles else f"{parent} ({owner})" if parent else "MLP"
            bid = self.add("mlp", f"{title}\n{len(leaves)} parameter modules", f"layer × {n} · {title}",
                           [lf.rel for lf in leaves], stack=stack, prefix=prefix, group=cluster,
                           io=f"[seq, {hidden}] → [seq, {hidden}]",
                           formula=r"\mathrm{MLP}(x) = \sum_{e \in \text{top-}k(x)} g_e(x)\,\mathrm{FFN}_e(x)"
                           if "moe" in roles else r"\mathrm{MLP}(x) = W_2\,\sigma(W_1 x)",
                           explanation="a router sends each token to a few expert MLPs and mixes their outputs"
                           if "moe" in roles else "the position-wise feed-forward network")
            for lf in leaves:
                keyed[("mlp", lf.role)] = bid
            self.edge(h, bid)
            return bid
        glu = {"SiLU": "SwiGLU", "GELU": "GeGLU", "GELU (tanh)": "GeGLU"}.get(act, f"gated {act}")
        self.features["mlp"] = f"{glu} (gate, up, down)" if gated else f"{act} MLP (up, down)"

        def proj(role: str, text: str, formula: str) -> str:
            lf = roles[role]
            dims = _linear_dims(lf.module)
            bid = self.add(role, f"{lf.rel.rsplit('.', 1)[-1]}\n{type(lf.module).__name__} {dims[0]} → {dims[1]}"
                           if dims else lf.rel, f"layer × {n} · {lf.rel}", [lf.rel], stack=stack, prefix=prefix,
                           group=cluster, io=f"[seq, {dims[0]}] → [seq, {dims[1]}]" if dims else "",
                           formula=formula, explanation=text)
            keyed[("mlp", role)] = bid
            return bid

        inter = self.dims["intermediate_size"]
        if gated:
            if "gate_up" in roles:
                gu = proj("gate_up", "gate and up projections in one matrix, split in two",
                          r"[\,g\;u\,] = x\,W_{gate|up}")
                self.edge(h, gu)
                inputs = [(gu, "gate, up")]
            else:
                gate = proj("gate", f"the gate: {act} of it decides, per unit, how much of `up` passes",
                            r"g = x\,W_{gate}")
                up = proj("up", f"the value path, widened to {inter} units", r"u = x\,W_{up}")
                self.edge(h, gate)
                self.edge(h, up)
                inputs = [(gate, "g"), (up, "u")]
            act_id = self.add("act", f"{act}(g) ⊙ u", f"layer × {n} · {glu} gating", [act_module] if act_module else [],
                              stack=stack, prefix=prefix, group=cluster, io=f"2 × [seq, {inter}] → [seq, {inter}]",
                              formula=rf"a = \mathrm{{{act.split()[0]}}}(g) \odot u" + (
                                  r",\quad \mathrm{SiLU}(z) = z\,\sigma(z)" if act == "SiLU" else ""),
                              explanation=f"{glu}: the activated gate multiplies the up projection element-wise")
            for src, label in inputs:
                self.edge(src, act_id, label)
            down = proj("down", f"back from {inter} to the {hidden}-wide residual stream", r"y = a\,W_{down}")
            self.edge(act_id, down)
            return down
        up = proj("up", f"widens each token vector from {hidden} to {inter}",
                  r"u = x\,W_{1} + b_1" if getattr(roles["up"].module, "bias", None) is not None else r"u = x\,W_1")
        act_id = self.add("act", act, f"layer × {n} · {act} activation", [act_module] if act_module else [],
                          stack=stack, prefix=prefix, group=cluster, io=f"[seq, {inter}] → same",
                          formula=_ACT_FORMULA.get(act, rf"a = \mathrm{{{act}}}(u)"),
                          explanation="the non-linearity, applied to every unit independently")
        down = proj("down", f"projects the {inter} units back to the {hidden}-wide residual stream",
                    r"y = a\,W_2 + b_2" if getattr(roles["down"].module, "bias", None) is not None else r"y = a\,W_2")
        self.edge(h, up)
        self.edge(up, act_id)
        self.edge(act_id, down)
        return down

    # -- layers 1..n-1 and the summary

    def _count_other_layers(self, layers: nn.ModuleList, path: str, keyed: dict[tuple[str, ...], str], stack: Stack) -> None:
        """Layers after 0 repeat layer 0's boxes; their parameters are added to the matching box."""
        by_id = {b.id: i for i, b in enumerate(self.blocks)}
        extra: dict[str, int] = {}
        for layer in list(layers)[1:]:
            for lf in _layer_leaves(layer):
                key = (*lf.unit, lf.role) if lf.unit[0] != "mlp" else ("mlp", lf.role)
                target = keyed.get(key) or next((v for k, v in keyed.items() if k[:len(lf.unit)] == lf.unit), None)
                if target is None:
                    target = keyed.setdefault(("other",), self.add(
                        "other", "other layer parameters", f"layer × {stack.n_layers} · parameters not in layer 0",
                        stack=stack, explanation="parameters that some layers have and layer 0 does not"))
                    by_id[target] = len(self.blocks) - 1
                new, _ = self._count([lf.module], target)
                extra[target] = extra.get(target, 0) + new
        for bid, n in extra.items():
            i = by_id[bid]
            self.blocks[i] = replace(self.blocks[i], params=self.blocks[i].params + n)

    def _features(self) -> None:
        f = self.features
        kinds = {b.kind for b in self.blocks}
        positions = []
        if "positions" in kinds:
            positions.append("learned absolute")
        if self.rope is not None:
            theta = rope_theta(self.config)
            positions.append("rotary (RoPE" + (f", θ = {theta:,.0f})" if theta else ")"))
        if any("relative_attention_bias" in m for b in self.blocks for m in b.modules):
            positions.append("relative position bias")
        if getattr(self.config, "alibi", False) or self.dims["model_type"] in {"bloom", "mpt"}:
            positions.append("ALiBi")
        f["positions"] = ", ".join(positions) or "none found in the module tree"
        f["norm"] = ", ".join(sorted({b.label.split("\n")[-1] for b in self.blocks if b.kind in ("norm", "final_norm")})) or "none"
        f["norm_placement"] = ", ".join(f"{p}-norm" for p in sorted(f.get("norm_placement", set()))) or "—"
        f["attention_projections"] = ("fused QKV" if "qkv" in kinds else "separate Q, K, V" if "q" in kinds else "—")
        q_blocks = [b for b in self.blocks if b.kind in ("q", "qkv")]
        f["qkv_bias"] = any(name.endswith(".bias") for b in q_blocks for name, _ in b.shapes)
        f.setdefault("mlp", "—")
        heads_q = next((b for b in self.blocks if b.kind == "q"), None)
        heads_k = next((b for b in self.blocks if b.kind == "k"), None)
        hd = self.dims["head_dim"]
        f["heads"], f["kv_heads"] = self.dims["heads"], self.dims["kv_heads"]
        if heads_q and heads_k and hd and heads_q.shapes and heads_k.shapes:
            q_out = _out_features(heads_q.shapes[0])
            k_out = _out_features(heads_k.shapes[0])
            if q_out % hd == 0 and k_out % hd == 0:
                f["heads"], f["kv_heads"] = q_out // hd, k_out // hd
        f["head_dim"] = hd
        f["gqa_group"] = (f["heads"] // f["kv_heads"]) if f["heads"] and f["kv_heads"] else None
        head = next((b for b in self.blocks if b.kind == "lm_head"), None)
        f["tied_lm_head"] = bool(head and head.tied_to)
        f["parallel_attention_mlp"] = any(s.parallel for s in self.stacks)
        f.pop("rope_block", None)


def _norm_label(name: str, kind: str) -> str:
    return name if name == kind else f"{name}\n{kind}"


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common) or names[0]


def _out_features(shape_row: tuple[str, tuple[int, ...]]) -> int:
    """A Linear weight is [out, in]; a Conv1D weight is [in, out] (its name ends c_attn / c_proj ...)."""
    name, shape = shape_row
    return shape[1] if "c_" in name.rsplit(".", 2)[-2] else shape[0]


def _act_name(raw: str) -> str:
    r = raw.lower()
    if "silu" in r or "swish" in r:
        return "SiLU"
    if "gelu" in r:
        return "GELU (tanh)" if ("new" in r or "tanh" in r or "fast" in r or "pytorch" in r) else "GELU"
    if "relu" in r:
        return "ReLU"
    return raw or "activation"


_NORM_FORMULA = {
    "LayerNorm": r"y = \frac{x - \mu}{\sqrt{\sigma^2 + \varepsilon}} \odot \gamma + \beta",
    "RMSNorm": r"y = \frac{x}{\sqrt{\tfrac{1}{d}\sum_i x_i^2 + \varepsilon}} \odot \gamma",
}
_NORM_TEXT = {
    "pre": "{kind} before the sublayer (pre-norm): the sublayer sees a normalised copy, the residual stream is left untouched",
    "post": "{kind} after the residual add (post-norm, as in the original Transformer and BERT)",
    "sandwich": "{kind} on the sublayer's output before it is added to the residual stream",
}
_PROJ_FORMULA = {
    "q": r"Q = x\,W_Q{b},\quad W_Q \in \mathbb{{R}}^{{d \times h\,d_h}}",
    "k": r"K = x\,W_K{b},\quad W_K \in \mathbb{{R}}^{{d \times h_{{kv}}\,d_h}}",
    "v": r"V = x\,W_V{b},\quad W_V \in \mathbb{{R}}^{{d \times h_{{kv}}\,d_h}}",
    "o": r"y = [\,\mathrm{{head}}_1;\dots;\mathrm{{head}}_h\,]\,W_O{b}",
}
_ATTN_FORMULA = r"\mathrm{head}_i = \mathrm{softmax}\!\left(\frac{Q_i K_{g(i)}^{\top}}{\sqrt{d_h}} + M\right) V_{g(i)}"
_ACT_FORMULA = {
    "GELU": r"a = u\,\Phi(u)",
    "GELU (tanh)": r"a = \tfrac{1}{2}u\left(1 + \tanh\!\left[\sqrt{2/\pi}\,(u + 0.044715\,u^3)\right]\right)",
    "ReLU": r"a = \max(0, u)",
    "SiLU": r"a = u\,\sigma(u)",
}


# ---------------------------------------------------------------- entry points


def build_diagram(model: nn.Module, trace_model: nn.Module | None = None, trace: bool = True) -> Diagram:
    """The diagram of `model` (a loaded model or a meta-device one). The order of operations is traced on
    `trace_model` (private to this call; a meta twin of the config is built when None), so a shared model
    never gets hooks. `trace=False` uses registration order and names instead (the fallback)."""
    config = model.config
    order = call_order(trace_model if trace_model is not None else meta_twin(config)) if trace else None
    builder = _Builder(model, config, order)
    builder.build()
    notes = list(builder.notes)
    if order is None:
        notes.append("The order of operations comes from module registration order and names "
                     "(a meta-device forward pass could not run for this architecture).")
    return Diagram(
        model_class=type(model).__name__, family=builder.family, dims=builder.dims, blocks=tuple(builder.blocks),
        edges=tuple(builder.edges), stacks=tuple(builder.stacks), features=builder.features,
        order_source="traced forward pass on the meta device" if order is not None else "module registration order",
        notes=tuple(notes))


def diagram_from_config(config: PretrainedConfig) -> Diagram:
    """Config-only mode: the model is built on the meta device (shapes, no weights, no memory)."""
    meta = meta_twin(config)
    return build_diagram(meta, trace_model=meta)


# ---------------------------------------------------------------- Graphviz


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _node(b: Block, selected: str | None, key: str, ordered: set[str]) -> str:
    attrs = {"label": _q(b.label), "fillcolor": _q(_KIND_COLORS.get(b.kind, "#eeeeee")),
             "tooltip": _q(f"{b.title}: {b.params:,} parameters")}
    if b.kind in ("residual", "sum") and b.label in ("+",):
        attrs.update(shape="circle", width="0.3", fixedsize="true", fontsize="14")
    elif b.kind in ("input", "output"):
        attrs.update(shape="ellipse", style='"filled"')
    if b.id in ordered:
        attrs["ordering"] = "out"
    if b.id == selected:
        attrs.update(penwidth="3", color='"#d62728"')
    return f"  {key}{b.id} [" + ", ".join(f"{k}={v}" for k, v in attrs.items()) + "];"


def _diagram_key(diagram: Diagram) -> str:
    """A prefix for node ids that differs between architectures: the browser's d3-graphviz morphs nodes
    that keep their id from one chart to the next, and a box morphing into a circle loses its outline."""
    text = repr((diagram.model_class, diagram.total_params, [(b.kind, b.label) for b in diagram.blocks]))
    return "a" + hashlib.sha1(text.encode()).hexdigest()[:6] + "_"


def to_dot(diagram: Diagram, selected: str | None = None) -> str:
    """A Graphviz DOT string: one cluster per layer stack (drawn once, × N), sub-clusters for attention
    and MLP; the selected block is outlined in red."""
    key = _diagram_key(diagram)
    kind_of = {b.id: b.kind for b in diagram.blocks}
    # Out-edges in declaration order (Q, K, V and gate, up left to right) for the nodes that feed them.
    ordered = {e.src for e in diagram.edges if kind_of.get(e.dst) in ("q", "gate")}
    lines = ["digraph architecture {", '  rankdir=TB; nodesep=0.25; ranksep=0.28; newrank=true;',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, color="#666666", margin="0.12,0.04"];',
             '  edge [fontname="Helvetica", fontsize=8, color="#777777", arrowsize=0.6];']
    for b in diagram.blocks:
        if b.stack is None:
            lines.append(_node(b, selected, key, ordered))
    for s in diagram.stacks:
        lines += [f"  subgraph {s.id}_{key} {{", f"    label={_q(s.label)}; style=\"rounded,dashed\"; color=\"#999999\";",
                  '    fontname="Helvetica"; fontsize=11; labeljust=l;']
        groups: dict[str, list[Block]] = {}
        for b in diagram.blocks:
            if b.stack == s.id:
                if b.group:
                    groups.setdefault(b.group, []).append(b)
                else:
                    lines.append("  " + _node(b, selected, key, ordered))
        for gi, (g, members) in enumerate(groups.items()):
            lines += [f"    subgraph {s.id}_{key}{gi} {{", f"      label={_q(g)}; style=\"rounded\"; color=\"#bbbbbb\"; fontsize=10;"]
            lines += ["    " + _node(b, selected, key, ordered) for b in members]
            lines.append("    }")
        lines.append("  }")
    for e in diagram.edges:
        attrs = [f"label={_q(e.label)}"] if e.label else []
        if e.style != "solid":
            attrs.append(f"style={e.style}")
        lines.append(f"  {key}{e.src} -> {key}{e.dst}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    lines.append("}")
    return "\n".join(lines)
