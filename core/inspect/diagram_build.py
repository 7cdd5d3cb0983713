"""Building the diagram from the module tree: embeddings, layer stacks, the head; parameter counts
(each Parameter counted once, by the first block that owns it) and the features read from the modules."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Iterable

from torch import nn
from transformers import PretrainedConfig

from core.inspect.architecture import config_dims, detect_family
from core.inspect.diagram_builder_layer import LayerParts
from core.inspect.diagram_model import Block, Edge, Stack
from core.inspect.diagram_text import NORM_FORMULA
from core.inspect.module_tree import (
    Leaf, NORM_CLASS, PARALLEL_TYPES, ROTARY_CLASS, common_prefix, fallback_order, layer_leaves, linear_dims,
    norm_label, numel, out_features, own_params, find_stacks, norm_type,
)
from core.inspect.rope import rope_theta


class Builder(LayerParts):
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
            for _, p in own_params(m):
                owner = self.owner.get(id(p))
                if owner is None:
                    self.owner[id(p)] = block_id
                    new += numel(p)
                elif owner != block_id:
                    tied = owner
        return new, tied

    def add(self, kind: str, label: str, title: str, names: Iterable[str] = (), *, stack: Stack | None = None,
            prefix: str = "", group: str | None = None, io: str = "", formula: str = "", explanation: str = "") -> str:
        block_id = self._new_id()
        names = tuple(names)
        mods = [self.model.get_submodule(prefix + n) for n in names]
        shapes = tuple((f"{prefix}{n}.{pn}", tuple(p.shape)) for n, m in zip(names, mods) for pn, p in own_params(m))
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
            if ROTARY_CLASS.search(type(m).__name__):
                return name
        return None

    # -- top level

    def build(self) -> None:
        stacks = find_stacks(self.model)
        stack_paths = [s for s, _ in stacks]
        items: list[tuple[float, str, Any]] = []
        registration = list(self.model.named_modules())
        for i, (name, m) in enumerate(registration):
            if not name or not own_params(m) or any(name.startswith(s + ".") for s in stack_paths):
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
                    head or not NORM_CLASS.search(type(payload[1]).__name__)):
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
            elif NORM_CLASS.search(type(payload[1]).__name__):
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
        mine = {id(p) for _, p in own_params(module)}
        used = {id(p) for n, m in registration if n in self.order and m is not module for _, p in own_params(m)}
        return mine <= used

    def _unclaimed(self, module: nn.Module) -> bool:
        return any(id(p) not in self.owner for _, p in own_params(module))

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
        block = self.add("final_norm" if passed_stack else "norm", norm_label(name.rsplit(".", 1)[-1], kind),
                         f"{where} norm · {name}", [name], io=f"[seq, {self.dims['hidden_size']}] → same",
                         formula=NORM_FORMULA[kind],
                         explanation=("normalises the last hidden state before the output head"
                                      if passed_stack else "normalises the summed embeddings before layer 0"))
        self.edge(stream, block)
        return block

    def _head(self, names: list[str], stream: str | None) -> None:
        if not names:
            return
        vocab = self.dims["vocab_size"]
        mods = [self.model.get_submodule(n) for n in names]
        dims = linear_dims(mods[-1]) or linear_dims(mods[0])
        tied_before = {id(p): self.owner.get(id(p)) for m in mods for _, p in own_params(m)}
        is_tied = any(tied_before.values())
        label = names[0] if len(names) == 1 else common_prefix(names) + " (head)"
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
                        or self.dims["model_type"] in PARALLEL_TYPES)
        stack = Stack(id=f"cluster_{len(self.stacks)}", label=f"× {n} {role} layers  ({path}.0 … {path}.{n - 1})",
                      path=path, n_layers=n, parallel=parallel)
        self.stacks.append(stack)
        layer, prefix = layers[0], f"{path}.0."
        leaves = layer_leaves(layer)
        if self.order is not None:
            for i, lf in enumerate(leaves):
                lf.order = self._pos(prefix + lf.rel, i)
        else:
            fallback_order(leaves)
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

    def _plan(self, units: list[tuple[str, ...]], leaves: list[Leaf]) -> list[tuple[tuple[str, ...], list[Leaf], list[tuple[Leaf, str]]]]:
        """[(sublayer unit, norms before it, [(norm after it, 'post' | 'sandwich')])] in order."""
        plan: list[tuple[tuple[str, ...], list[Leaf], list[tuple[Leaf, str]]]] = []
        pending: list[Leaf] = []
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

    def _norm_placement(self, i: int, units: list[tuple[str, ...]], leaves: list[Leaf]) -> str:
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
    def _nested(norm_unit: tuple[str, ...], sub_unit: tuple[str, ...], leaves: list[Leaf]) -> bool:
        """BERT's attention.output.LayerNorm sits next to attention.output.dense: part of that sublayer."""
        parent = norm_unit[1].rpartition(".")[0]
        return bool(parent) and any(lf.unit == sub_unit and lf.rel.startswith(parent + ".") for lf in leaves)

    def _count_other_layers(self, layers: nn.ModuleList, path: str, keyed: dict[tuple[str, ...], str], stack: Stack) -> None:
        """Layers after 0 repeat layer 0's boxes; their parameters are added to the matching box."""
        by_id = {b.id: i for i, b in enumerate(self.blocks)}
        extra: dict[str, int] = {}
        for layer in list(layers)[1:]:
            for lf in layer_leaves(layer):
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
            q_out = out_features(heads_q.shapes[0])
            k_out = out_features(heads_k.shapes[0])
            if q_out % hd == 0 and k_out % hd == 0:
                f["heads"], f["kv_heads"] = q_out // hd, k_out // hd
        f["head_dim"] = hd
        f["gqa_group"] = (f["heads"] // f["kv_heads"]) if f["heads"] and f["kv_heads"] else None
        head = next((b for b in self.blocks if b.kind == "lm_head"), None)
        f["tied_lm_head"] = bool(head and head.tied_to)
        f["parallel_attention_mlp"] = any(s.parallel for s in self.stacks)
        f.pop("rope_block", None)
