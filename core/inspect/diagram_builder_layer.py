"""Building the diagram, inside one layer: norms, residual adds, attention and the MLP."""

from __future__ import annotations

from torch import nn

from core.inspect.diagram_model import Stack
from core.inspect.diagram_text import ACT_FORMULA, ATTN_FORMULA, NORM_FORMULA, NORM_TEXT, PROJ_FORMULA
from core.inspect.module_tree import (
    ACT_CLASS, CROSS, Leaf, act_name, common_prefix, linear_dims, norm_label, own_params, norm_type,
)
from core.inspect.rope import rope_theta


class LayerParts:
    """The inside of one layer: norms, residual adds, attention (Q, K, V, heads, RoPE, O) and the MLP.

    A mixin of the diagram builder (`diagram_build._Builder`): it uses the builder's `add`, `edge`,
    `blocks`, `features`, `config` and `dims`."""

    def _layer_norm_block(self, lf: Leaf, placement: str, stack: Stack, prefix: str, role: str,
                          keyed: dict[tuple[str, ...], str]) -> str:
        kind = norm_type(lf.module)
        bid = self.add("norm", norm_label(lf.rel, kind), f"{role} layer × {stack.n_layers} · {lf.rel} ({kind}, {placement}-norm)",
                       [lf.rel], stack=stack, prefix=prefix, io=f"[seq, {self.dims['hidden_size']}] → same",
                       formula=NORM_FORMULA[kind], explanation=NORM_TEXT[placement].format(kind=kind))
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

    def _heads(self, roles: dict[str, Leaf]) -> tuple[int | None, int | None, int | None]:
        """Query heads, KV heads and head size, read from the projection shapes where possible."""
        d = self.dims
        head_dim = d["head_dim"]
        heads, kv = d["heads"], d["kv_heads"]
        if head_dim and "q" in roles and "k" in roles:
            q_dims, k_dims = linear_dims(roles["q"].module), linear_dims(roles["k"].module)
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

    def _attention(self, unit: tuple[str, ...], leaves: list[Leaf], layer: nn.Module, stack: Stack, prefix: str,
                   h: str, encoder_out: str | None, keyed: dict[tuple[str, ...], str]) -> str:
        group = unit[1]
        cross = bool(CROSS.search(group) or CROSS.search(type(layer.get_submodule(group)).__name__))
        roles: dict[str, Leaf] = {}
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
            dims = linear_dims(lf.module)
            bias = getattr(lf.module, "bias", None) is not None
            kind_name = type(lf.module).__name__
            label = f"{lf.rel.rsplit('.', 1)[-1]}\n{kind_name} {dims[0]} → {dims[1]}" if dims else lf.rel
            bid = self.add(role, label, f"layer × {n} · {lf.rel}", [lf.rel], stack=stack, prefix=prefix, group=cluster,
                           io=f"[seq, {dims[0]}] → [seq, {dims[1]}]" if dims else "",
                           formula=PROJ_FORMULA[role].format(b=f" + b_{{{symbol}}}" if bias else ""),
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
            dims = linear_dims(lf.module)
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
                           group=cluster, io=f"[seq, {hidden}] → [seq, {hidden}]", formula=ATTN_FORMULA,
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
            formula=ATTN_FORMULA + (r"\ (+\,\text{relative position bias})" if rel_bias else ""),
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

    def _activation(self, layer: nn.Module, leaves: list[Leaf]) -> tuple[str | None, str]:
        """The activation module inside the MLP (by class), or the config's activation name."""
        parents = {lf.rel.rpartition(".")[0] for lf in leaves}
        for name, m in layer.named_modules():
            if name and not own_params(m) and ACT_CLASS.search(type(m).__name__) and name.rpartition(".")[0] in parents:
                return name, act_name(type(m).__name__)
        return None, act_name(str(self.dims.get("activation") or ""))

    def _mlp(self, leaves: list[Leaf], layer: nn.Module, stack: Stack, prefix: str, h: str,
             keyed: dict[tuple[str, ...], str]) -> str:
        roles: dict[str, Leaf] = {}
        for lf in leaves:
            roles.setdefault(lf.role, lf)
        n = stack.n_layers
        act_module, act = self._activation(layer, leaves)
        cluster = "MLP"
        hidden = self.dims["hidden_size"]
        gated = {"gate", "up", "down"} <= set(roles) or {"gate_up", "down"} <= set(roles)
        plain = {"up", "down"} <= set(roles) and "gate" not in roles and "gate_up" not in roles
        if "moe" in roles or not (gated or plain) or set(roles) - {"gate", "up", "down", "gate_up"}:
            parent = common_prefix([lf.rel for lf in leaves]) if len(leaves) > 1 else leaves[0].rel.rpartition(".")[0]
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
            dims = linear_dims(lf.module)
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
                          formula=ACT_FORMULA.get(act, rf"a = \mathrm{{{act}}}(u)"),
                          explanation="the non-linearity, applied to every unit independently")
        down = proj("down", f"projects the {inter} units back to the {hidden}-wide residual stream",
                    r"y = a\,W_2 + b_2" if getattr(roles["down"].module, "bias", None) is not None else r"y = a\,W_2")
        self.edge(h, up)
        self.edge(up, act_id)
        self.edge(act_id, down)
        return down

    # -- layers 1..n-1 and the summary
