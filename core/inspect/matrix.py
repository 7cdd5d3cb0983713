"""One weight matrix up close: its singular values (the spectrum, effective and stable rank) and a pooled
heatmap small enough to draw. Both work on any 2-D weight, dequantized first by `core.inspect.weights.matrix`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from core.inspect.weights import CHUNK, one_thread


@dataclass
class Spectrum:
    singular_values: np.ndarray  # [min(rows, cols)], descending
    effective_rank: float  # exp(entropy of sigma / sum sigma), Roy & Vetterli 2007
    stable_rank: float  # ||W||_F^2 / sigma_max^2
    method: str


def effective_rank(singular_values: torch.Tensor | np.ndarray) -> float:
    """exp(H(p)) with p = sigma / sum(sigma): r for r equal singular values, 1 for rank one."""
    s = torch.as_tensor(np.asarray(singular_values), dtype=torch.float64).clamp_min(0)
    total = float(s.sum())
    if total == 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def spectrum(weight: torch.Tensor, max_direct: int = 32_000_000) -> Spectrum:
    """Singular values of a 2-D weight [rows, cols].

    Up to `max_direct` elements (a 49152 x 576 embedding: 0.4 s): `torch.linalg.svdvals` on a float32
    copy. Bigger (a 151936 x 1536 embedding, whose float32 copy alone is 0.9 GB): the
    eigenvalues of the small Gram matrix W^T W (or W W^T), accumulated in float64 over row chunks, so
    memory stays at [min, min]; singular values far below sigma_max * 1e-7 lose relative precision.
    """
    if weight.dim() != 2:
        raise ValueError(f"a spectrum needs a 2-D matrix, got shape {tuple(weight.shape)}")
    w = weight.detach()
    if w.numel() <= max_direct:
        s = torch.linalg.svdvals(w.float().cpu()).double()
        method = "torch.linalg.svdvals (float32)"
    else:
        if w.shape[0] < w.shape[1]:
            w = w.T
        gram = torch.zeros(w.shape[1], w.shape[1], dtype=torch.float64)
        step = max(1, CHUNK // w.shape[1])
        for i in range(0, w.shape[0], step):
            block = w[i:i + step].to(device="cpu", dtype=torch.float64)
            gram += block.T @ block
        s = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0)
        method = "eigenvalues of the Gram matrix (float64, row chunks)"
    s_max = float(s[0]) if s.numel() else 0.0
    return Spectrum(singular_values=s.numpy(), effective_rank=effective_rank(s),
                    stable_rank=float((s * s).sum()) / (s_max * s_max) if s_max else 0.0, method=method)


def pooled_shape(rows: int, cols: int, max_cells: int = 20_000, max_aspect: float = 4.0) -> tuple[int, int]:
    """Output size for `pool_matrix`: at most `max_cells` cells, aspect ratio kept up to `max_aspect`
    (a 49152 x 576 embedding becomes 285 x 70, not a 1307 x 15 sliver)."""
    if rows * cols <= max_cells:
        return rows, cols
    aspect = min(max(rows / cols, 1 / max_aspect), max_aspect)
    out_r = max(1, min(rows, round(math.sqrt(max_cells * aspect))))
    out_c = max(1, min(cols, max_cells // out_r))
    out_r = max(1, min(rows, max_cells // out_c))
    return out_r, out_c


@torch.no_grad()
def pool_matrix(weight: torch.Tensor, max_cells: int = 20_000, mode: str = "mean") -> np.ndarray:
    """A [rows, cols] weight pooled to at most `max_cells` cells, block by block (adaptive pooling:
    block edges at floor/ceil of i * rows / out_rows). mode "mean" keeps the sign; "absmax" shows the
    largest |w| of each block. Rows are converted to float32 one output row at a time."""
    if weight.dim() != 2:
        raise ValueError(f"a heatmap needs a 2-D matrix, got shape {tuple(weight.shape)}")
    if mode not in ("mean", "absmax"):
        raise ValueError(f"unknown pooling mode {mode!r}")
    rows, cols = weight.shape
    out_r, out_c = pooled_shape(rows, cols, max_cells)
    out = np.empty((out_r, out_c), dtype=np.float32)
    w = weight.detach()
    with one_thread():
        _pool_rows(w, out, mode)
    return out


def _pool_rows(w: torch.Tensor, out: np.ndarray, mode: str) -> None:
    (rows, _), (out_r, out_c) = w.shape, out.shape
    for i in range(out_r):
        r0, r1 = (i * rows) // out_r, -((-(i + 1) * rows) // out_r)
        block = w[r0:r1].float().cpu().unsqueeze(0)  # [1, block_rows, cols]
        if mode == "mean":
            out[i] = F.adaptive_avg_pool1d(block, out_c)[0].mean(0).numpy()
        else:
            out[i] = F.adaptive_max_pool1d(block.abs(), out_c)[0].amax(0).numpy()
