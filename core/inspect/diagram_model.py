"""The diagram's data: blocks (one box each), edges, layer stacks, and the whole Diagram."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.inspect.architecture import Family


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
