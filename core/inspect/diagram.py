"""The block diagram of a transformer, read from its real module tree (never drawn by hand).

`build_diagram(model)` walks `model.named_modules()`: layer stacks are the ModuleLists whose layers
hold an attention module; inside layer 0 every module that owns parameters gets a role from its class
(LayerNorm vs RMSNorm, Linear vs Conv1D) and its name (q_proj / c_attn / gate_proj / c_fc ...).
The order of operations comes from a forward pass of a weightless twin on the meta device, traced
with forward-pre-hooks, because registration order lies (Llama registers its norms after the MLP).
`to_dot` renders the result for Graphviz.

One concern per file:
  diagram_model.py          the data: Block, Edge, Stack, Diagram
  module_tree.py            reading the module tree: stacks, call order, roles inside a layer
  diagram_build.py          building the graph and counting parameters (the top level)
  diagram_builder_layer.py  building the graph inside one layer (attention, MLP, norms)
  diagram_text.py           the formulas each kind of block carries
  diagram_dot.py            rendering as Graphviz DOT
"""

from __future__ import annotations

from torch import nn
from transformers import PretrainedConfig

from core.inspect.diagram_build import Builder
from core.inspect.diagram_dot import to_dot
from core.inspect.diagram_model import Block, Diagram, Edge, Stack
from core.inspect.module_tree import call_order, find_stacks, meta_twin, norm_type

__all__ = ["Block", "Diagram", "Edge", "Stack", "build_diagram", "call_order", "diagram_from_config",
           "find_stacks", "meta_twin", "norm_type", "to_dot"]


def build_diagram(model: nn.Module, trace_model: nn.Module | None = None, trace: bool = True) -> Diagram:
    """The diagram of `model` (a loaded model or a meta-device one). The order of operations is traced on
    `trace_model` (private to this call; a meta twin of the config is built when None), so a shared model
    never gets hooks. `trace=False` uses registration order and names instead (the fallback)."""
    config = model.config
    order = call_order(trace_model if trace_model is not None else meta_twin(config)) if trace else None
    builder = Builder(model, config, order)
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
