"""Activation patching: run the corrupted prompt with one clean activation put back, and measure how much of
the clean answer comes back.

    diff(run)  = logit[target] - logit[contrast] at the last position
    restored   = (diff(patched) - diff(corrupt)) / (diff(clean) - diff(corrupt))     0 = corrupted, 1 = clean

What is patched (clean activations recorded once, then one patched run per cell):
    resid   the residual stream before layer l (row L: after the last layer) at one position
    heads   one head's slice of the output projection's input, at every position
    mlp     one MLP's output, at every position
The patched runs are batched: batch item b carries its own patch, applied by hooks that edit only row b.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from core.circuits.components import Layout, forward_ids, layout, resolve_token
from core.inspect.lens import residual_stream
from core.models.capture import InputError, run_forward, tokenize_for_model
from core.models.loading import LoadedModel

WHAT = ("resid", "heads", "mlp")
BATCH = 32  # patched runs per forward pass
PRESETS = {
    "Eiffel Tower / Colosseum": ("The Eiffel Tower is in the city of", "The Colosseum is in the city of", " Paris", " Rome"),
    "Names (IOI)": ("When Mary and John went to the store, John gave a drink to",
                    "When Mary and John went to the store, Mary gave a drink to", " Mary", " John"),
    "Big Ben / Statue of Liberty": ("Big Ben is in the city of", "The Statue of Liberty is in the city of",
                                    " London", " New"),
}


@dataclass
class Patch:
    """One patched run: put `value` into batch row b of module `module` (where: 'pre' or 'out'), at `cols`
    of the last dimension (None: all) and `positions` (None: all)."""
    module: str
    where: str
    value: torch.Tensor  # the clean values of the region patched: [seq, n] (all positions) or [n] (one)
    cols: slice | None = None
    position: int | None = None


@dataclass
class Patching:
    what: str
    clean_diff: float
    corrupt_diff: float
    restored: torch.Tensor  # resid [layers + 1, seq]; heads [layers, heads]; mlp [layers, 1]
    tokens_clean: list[str]
    tokens_corrupt: list[str]
    target_id: int
    contrast_id: int
    seconds: float
    runs: int

    def as_dict(self) -> dict:
        return {"what": self.what, "clean_diff": self.clean_diff, "corrupt_diff": self.corrupt_diff,
                "restored": self.restored.tolist()}


def _edit(x: torch.Tensor, b: int, p: Patch) -> None:
    """Write the patch into row b of x [batch, seq, n] in place."""
    cols = p.cols or slice(None)
    value = p.value.to(x.device, x.dtype)
    if p.position is None:
        x[b, :, cols] = value
    else:
        x[b, p.position, cols] = value


@contextmanager
def patched(lm: LoadedModel, patches: list[Patch | None]) -> Iterator[None]:
    """Hooks for a batch whose row b gets patches[b] (None: an unpatched run)."""
    by_module: dict[tuple[str, str], list[tuple[int, Patch]]] = {}
    for b, p in enumerate(patches):
        if p is not None:
            by_module.setdefault((p.module, p.where), []).append((b, p))
    handles = []

    def pre(items):
        def hook(_module, args, kwargs):
            if args:
                x = args[0].clone()
                for b, p in items:
                    _edit(x, b, p)
                return (x, *args[1:]), kwargs
            x = kwargs["hidden_states"].clone()
            for b, p in items:
                _edit(x, b, p)
            return args, {**kwargs, "hidden_states": x}
        return hook

    def out(items):
        def hook(_module, _args, output):
            y = (output[0] if isinstance(output, tuple) else output).clone()
            for b, p in items:
                _edit(y, b, p)
            return (y, *output[1:]) if isinstance(output, tuple) else y
        return hook

    try:
        for (name, where), items in by_module.items():
            module = lm.model.get_submodule(name)
            if where == "pre":
                handles.append(module.register_forward_pre_hook(pre(items), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(out(items)))
        yield
    finally:
        for h in handles:
            h.remove()


def patches_for(lay: Layout, what: str, clean, stream: list[torch.Tensor]) -> tuple[list[Patch], tuple[int, ...]]:
    """The patched runs for `what`, in row-major order of the result grid, and the grid's shape."""
    seq = stream[0].shape[0]
    if what == "resid":
        # Row l < L: the input of block l; row L: the input of the final norm (after the last block).
        targets = [*lay.layers, lay.final_norm]
        return [Patch(name, "pre", stream[l][pos], position=pos)
                for l, name in enumerate(targets) for pos in range(seq)], (lay.n_layers + 1, seq)
    if what == "heads":
        return [Patch(lay.out_proj[l], "pre", clean.module_inputs[lay.out_proj[l]][:, lay.head_slice(h)],
                      cols=lay.head_slice(h))
                for l in range(lay.n_layers) for h in range(lay.n_heads)], (lay.n_layers, lay.n_heads)
    if what == "mlp":
        return [Patch(lay.mlp[l], "out", clean.module_outputs[lay.mlp[l]]) for l in range(lay.n_layers)], \
            (lay.n_layers, 1)
    raise ValueError(f"--what must be one of {', '.join(WHAT)}, got {what!r}")


def prompt_ids(lm: LoadedModel, clean: str, corrupt: str, max_tokens: int) -> tuple[list[int], list[int]]:
    """Both prompts' ids; InputError when their token counts differ (patching is position by position)."""
    a, _ = tokenize_for_model(lm, clean, max_tokens)
    b, _ = tokenize_for_model(lm, corrupt, max_tokens)
    if len(a) != len(b):
        raise InputError(f"The clean prompt has {len(a)} tokens and the corrupted one {len(b)}: patching swaps "
                         "activations position by position, so both need the same number of tokens. Change a "
                         "word or two until the counts match.")
    return a, b


def logit_diff(logits: torch.Tensor, target: int, contrast: int) -> torch.Tensor:
    """[batch] logit[target] - logit[contrast] from last-position logits [batch, vocab]."""
    return logits[:, target] - logits[:, contrast]


def activation_patching(lm: LoadedModel, clean: str, corrupt: str, target: str | int, contrast: str | int,
                        what: str = "heads", batch_size: int = BATCH, max_tokens: int = 512,
                        progress: Callable[[int, int], None] | None = None) -> Patching:
    """Restored fraction of the logit difference for every cell of `what` (see the module docstring)."""
    if what not in WHAT:
        raise ValueError(f"--what must be one of {', '.join(WHAT)}, got {what!r}")
    lay = layout(lm)
    t, c = resolve_token(lm, target), resolve_token(lm, contrast)
    if t is None or c is None:
        raise InputError("Patching needs a target answer and a contrast answer.")
    if t == c:
        raise InputError("The contrast answer is the target answer (the same token): their logit difference "
                         "is 0 in every run. Choose two different answers.")
    ids_clean, ids_corrupt = prompt_ids(lm, clean, corrupt, max_tokens)
    start = time.perf_counter()
    hooks = (*lay.out_proj, *lay.mlp, lay.final_norm)
    cap_clean = run_forward(lm, clean, max_tokens=max_tokens, attentions=False, hook_modules=hooks)
    cap_corrupt = run_forward(lm, corrupt, max_tokens=max_tokens, attentions=False, hidden_states=False)
    clean_diff = float(cap_clean.logits[-1, t] - cap_clean.logits[-1, c])
    corrupt_diff = float(cap_corrupt.logits[-1, t] - cap_corrupt.logits[-1, c])
    if abs(clean_diff - corrupt_diff) < 1e-6:
        raise InputError(f"Both prompts give the same logit difference ({clean_diff:.3f}): there is nothing to "
                         "restore. Choose prompts (or answers) that the model tells apart.")
    patches, shape = patches_for(lay, what, cap_clean, residual_stream(lm.model, cap_clean))
    diffs = []
    for i in range(0, len(patches), batch_size):
        chunk = patches[i:i + batch_size]
        ids = torch.tensor([ids_corrupt] * len(chunk))
        with patched(lm, chunk):
            logits, _ = forward_ids(lm, ids)
        diffs.append(logit_diff(logits, t, c))
        if progress:
            progress(i + len(chunk), len(patches))
    restored = (torch.cat(diffs) - corrupt_diff) / (clean_diff - corrupt_diff)
    return Patching(what, clean_diff, corrupt_diff, restored.reshape(shape), cap_clean.tokens, cap_corrupt.tokens,
                    t, c, time.perf_counter() - start, len(patches))
