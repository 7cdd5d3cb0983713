"""Rendering a Diagram as Graphviz DOT: colours per kind of block, clusters per layer stack."""

from __future__ import annotations

import hashlib

from core.inspect.diagram_model import Block, Diagram


KIND_COLORS = {
    "input": "#eeeeee", "output": "#eeeeee", "embedding": "#d6e9f8", "positions": "#d6e9f8",
    "segments": "#d6e9f8", "rope": "#fde2c8", "norm": "#fff3b0", "final_norm": "#fff3b0",
    "q": "#e3d7f5", "k": "#e3d7f5", "v": "#e3d7f5", "qkv": "#e3d7f5", "attention": "#cdb8ee", "o": "#e3d7f5",
    "residual": "#ffffff", "sum": "#ffffff", "gate": "#d3f0d3", "up": "#d3f0d3", "act": "#b9e6b9",
    "down": "#d3f0d3", "mlp": "#d3f0d3", "lm_head": "#f8d4d4", "other": "#eeeeee",
}


# ---------------------------------------------------------------- Graphviz


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _node(b: Block, selected: str | None, key: str, ordered: set[str]) -> str:
    attrs = {"label": _q(b.label), "fillcolor": _q(KIND_COLORS.get(b.kind, "#eeeeee")),
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
