"""Statistics of every weight of a model, aggregated per matrix and per layer, in bounded memory.

One pass over each parameter in flat chunks of `CHUNK` elements (a 233M-element bf16 embedding is never
copied to float32 whole). Per parameter: count, mean, std (population, ddof=0), min, max, max|w|,
Frobenius (= L2) norm, excess kurtosis (Fisher: a normal distribution gives 0), and the share of
near-zero weights (|w| < `threshold`). Per *kind* (the parameter's path inside its layer, e.g.
`self_attn.q_proj.weight` or `attn.c_attn.weight`) a histogram with bins shared by every layer
(spanning the bulk, mean ± 6 std; the edge bins also count the tails).

The result is compact: arrays [layers, kinds] and one row per parameter (a few hundred rows), never one
row per weight. It is cached on disk under `cache_root() / "weight_stats"`, keyed by the model spec and
a fingerprint of the weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from core.models.dequantize import float_values, quantization_of
from core.models.params import layer_of

CHUNK = 1 << 20  # elements per step: 4 MB of float32, small enough to stay in cache
BINS = 80
NEAR_ZERO = 1e-3
TAIL_SIGMAS = 6.0  # histogram bins span mean ± 6 std; the first and last bins also hold the tails
ENGINE_VERSION = 3  # bump when the statistics change, so old disk caches are ignored
STATS = ("count", "mean", "std", "min", "max", "max_abs", "frobenius", "kurtosis", "near_zero_share")

_LAYER_PREFIX = re.compile(r"^(?:.*?\.)?(?:layers|h|layer|block)\.\d+\.")  # as core.models.params.layer_of


@dataclass
class WeightStats:
    """Everything the Weights and Parameter pages draw, for one model.

    rows:        one dict per parameter: name, layer (int | None), kind, module, shape, dtype, *STATS
    kinds:       per-layer parameter kinds in model order, e.g. ["self_attn.q_proj.weight", ...]
    table:       stat -> float64 [layers, kinds] (NaN where a layer lacks that kind)
    hist_edges:  kind -> [bins + 1] shared edges (outside-layer parameters are kinds of their own)
    hist_counts: kind -> int64 [layers, bins] (one row for an outside-layer parameter)
    """

    rows: list[dict[str, Any]]
    kinds: list[str]
    n_layers: int
    table: dict[str, np.ndarray]
    hist_edges: dict[str, np.ndarray]
    hist_counts: dict[str, np.ndarray]
    threshold: float = NEAR_ZERO
    skipped: list[str] = field(default_factory=list)  # quantized / meta parameters: no float values here
    seconds: float = 0.0
    source: str = "computed"  # "computed" | "disk cache"

    @property
    def matrix_kinds(self) -> list[str]:
        """The 2-D weight kinds of a layer (q_proj, ..., down_proj or c_attn, ..., c_proj)."""
        two_d = {r["kind"] for r in self.rows if r["layer"] is not None and len(r["shape"]) == 2}
        return [k for k in self.kinds if k in two_d]

    def row(self, name: str) -> dict[str, Any]:
        for r in self.rows:
            if r["name"] == name:
                return r
        raise KeyError(f"no parameter named {name!r}")

    def name_of(self, layer: int, kind: str) -> str:
        """The full parameter name of `kind` in `layer` (KeyError when that layer has none)."""
        for r in self.rows:
            if r["layer"] == layer and r["kind"] == kind:
                return r["name"]
        raise KeyError(f"layer {layer} has no {kind!r}")


def module_name(kind: str) -> str:
    """`self_attn.q_proj.weight` -> `self_attn.q_proj` (the module as named in the model)."""
    return kind.rsplit(".", 1)[0] if kind.endswith((".weight", ".bias")) else kind


def short_name(kind: str) -> str:
    """A chart label: `self_attn.q_proj.weight` -> `q_proj`, `mlp.c_proj.weight` -> `mlp.c_proj`."""
    mod = module_name(kind)
    leaf = mod.rsplit(".", 1)[-1]
    label = mod if leaf in ("c_proj", "dense") else leaf
    return label if kind.endswith(".weight") or kind == mod else f"{label}.{kind.rsplit('.', 1)[1]}"


def kind_of(name: str) -> str:
    """The parameter's path inside its layer; outside the layers, its full name."""
    m = _LAYER_PREFIX.match(name)
    return name[m.end():] if m else name


# ---------------------------------------------------------------- one parameter in chunks


@contextmanager
def one_thread() -> Iterator[None]:
    """Run hundreds of small ops on one intra-op thread. With other processes on the cores, every
    OpenMP barrier waits for a descheduled thread: on 2 busy cores, 2 threads took 35 s where 1 took 4.
    The setting is per calling thread (an OpenMP ICV), so other sessions' forward passes keep theirs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _chunks(p: torch.Tensor, chunk: int | None = None) -> Iterator[torch.Tensor]:
    flat = p.detach().reshape(-1)  # a view for contiguous parameters
    chunk = chunk or CHUNK
    for start in range(0, flat.numel(), chunk):
        yield flat[start:start + chunk]


def _usable(p: torch.Tensor) -> bool:
    return p.is_floating_point() and p.device.type != "meta" and p.numel() > 0


class _Values:
    """A parameter's float values on demand; dtype 'nf4 (dequantized)' for a bitsandbytes weight."""

    def __init__(self, p: torch.Tensor) -> None:
        self.p, self.quant = p, quantization_of(p)
        self.usable = _usable(p) if self.quant is None else p.device.type != "meta"
        self.dtype = f"{self.quant} (dequantized)" if self.quant else str(p.dtype).replace("torch.", "")

    def values(self) -> torch.Tensor:
        return float_values(self.p) if self.quant else self.p


def matrix(model: nn.Module, name: str) -> torch.Tensor:
    """One parameter's values by name, dequantized to float32 when the model is 4-bit or 8-bit."""
    values = float_values(model.get_parameter(name))
    if values is None:
        raise ValueError(f"`{name}` holds no values on this machine (meta device)")
    return values


def _range(p: torch.Tensor) -> tuple[float, float]:
    lo, hi = math.inf, -math.inf
    for x in _chunks(p):
        a, b = torch.aminmax(x)
        lo, hi = min(lo, float(a)), max(hi, float(b))
    return lo, hi


def _sample_moments(p: torch.Tensor, size: int = 1 << 16) -> tuple[float, float]:
    """Mean and std of an evenly strided sample of about `size` weights: only to place histogram bins."""
    flat = p.detach().reshape(-1)
    sample = flat[:: max(1, flat.numel() // size)].float()
    return float(sample.mean()), float(sample.std(unbiased=False))


def hist_range(lo: float, hi: float, means: list[float], stds: list[float],
               sigmas: float = TAIL_SIGMAS) -> tuple[float, float]:
    """Bin range for one kind across its layers: the bulk (mean ± `sigmas` std of every layer) within
    [lo, hi], so a few outliers at 30 std do not squeeze the bulk into three bins; weights beyond the
    range are counted in the first or last bin. Symmetric around 0 for signed weights."""
    spread = sigmas * max(stds)
    a, b = max(lo, min(means) - spread), min(hi, max(means) + spread)
    if a < 0 < b:
        m = max(-a, b)
        return -m, m
    if a >= b:  # a constant parameter (a norm weight still at its init of 1)
        return a - 0.5, a + 0.5
    return a, b


def tensor_stats(p: torch.Tensor, edges: tuple[float, float, int] | None = None, threshold: float = NEAR_ZERO,
                 value_range: tuple[float, float] | None = None) -> tuple[dict[str, float], np.ndarray | None]:
    """Statistics of one tensor (any shape, any float dtype) and its histogram over `edges`
    = (lo, hi, bins), computed in float32 chunks of CHUNK elements. `value_range` = (min, max) when
    already known (saves a pass).

    Moments are summed around a shift close to the mean (the first chunk's mean) so that tensors far
    from zero with a tiny spread (norm weights) keep their precision; chunk sums add up in float64.
    """
    n = p.numel()
    shift = float(next(_chunks(p)).float().mean())
    s1 = s2 = s3 = s4 = 0.0
    near = 0
    lo, hi = value_range if value_range is not None else _range(p)
    hist = torch.zeros(edges[2], dtype=torch.float64) if edges else None
    for chunk in _chunks(p):
        x = chunk.float()
        d = x - shift
        d2 = d * d
        s1 += float(d.sum())
        s2 += float(d2.sum())
        s3 += float(torch.dot(d2, d))
        s4 += float(torch.dot(d2, d2))
        near += int(torch.count_nonzero(x.abs() < threshold))
        if hist is not None:
            # Clamped, so the edge bins also count the tails and the counts add up to the number of weights.
            inside = x.clamp(edges[0], edges[1])
            hist += torch.histc(inside, bins=edges[2], min=edges[0], max=edges[1]).to(torch.float64).cpu()
    mu = s1 / n  # mean of d; central moments from the raw moments of d
    e2, e3, e4 = s2 / n, s3 / n, s4 / n
    m2 = max(e2 - mu * mu, 0.0)
    m4 = e4 - 4 * mu * e3 + 6 * mu * mu * e2 - 3 * mu ** 4
    sum_sq = s2 + 2 * shift * s1 + n * shift * shift  # sum of w^2 = sum of (d + shift)^2
    stats = {
        "count": n,
        "mean": shift + mu,
        "std": math.sqrt(m2),
        "min": lo,
        "max": hi,
        "max_abs": max(abs(lo), abs(hi)),
        "frobenius": math.sqrt(max(sum_sq, 0.0)),
        "kurtosis": m4 / (m2 * m2) - 3.0 if m2 > 0 and m2 * m2 > 0 else math.nan,
        "near_zero_share": near / n,
    }
    return stats, (hist.round().to(torch.int64).numpy() if hist is not None else None)


# ---------------------------------------------------------------- the whole model


@torch.no_grad()
def compute_weight_stats(model: nn.Module, bins: int = BINS, threshold: float = NEAR_ZERO) -> WeightStats:
    """Two passes: a cheap min/max and sampled spread per parameter (to fix the histogram bins shared
    by all layers of a kind), then `tensor_stats` on each parameter, layer by layer. Tied parameters
    are visited once."""
    with one_thread():
        return _compute(model, bins, threshold)


def _compute(model: nn.Module, bins: int, threshold: float) -> WeightStats:
    start = time.perf_counter()
    # A quantized weight is dequantized to float32 (twice: for the bins, then the statistics; one at a time).
    params = [(name, _Values(p)) for name, p in model.named_parameters()]
    skipped = [name for name, p in params if not p.usable]
    params = [(name, p) for name, p in params if p.usable]
    ranges, scans = {}, {}  # kind -> (min, max, [means], [stds]) over its layers
    for name, p in params:
        lo, hi = ranges[name] = _range(p.values())
        mean, std = _sample_moments(p.values())
        old = scans.setdefault(kind_of(name), [math.inf, -math.inf, [], []])
        old[0], old[1] = min(old[0], lo), max(old[1], hi)
        old[2].append(mean)
        old[3].append(std)
    hist_edges = {k: np.linspace(*hist_range(*scan), bins + 1) for k, scan in scans.items()}

    layers = sorted({layer_of(name) for name, _ in params} - {None})
    layer_pos = {layer: i for i, layer in enumerate(layers)}
    kinds = list(dict.fromkeys(kind_of(name) for name, _ in params if layer_of(name) is not None))
    kind_pos = {k: i for i, k in enumerate(kinds)}
    table = {s: np.full((len(layers), len(kinds)), np.nan) for s in STATS}
    hist_counts = {k: np.zeros((len(layers) if k in kind_pos else 1, bins), dtype=np.int64) for k in hist_edges}
    rows = []
    for name, p in params:
        k, layer = kind_of(name), layer_of(name)
        lo, hi = hist_edges[k][0], hist_edges[k][-1]
        w = p.values()
        stats, hist = tensor_stats(w, (float(lo), float(hi), bins), threshold, ranges[name])
        rows.append({"name": name, "layer": layer, "kind": k, "module": module_name(k),
                     "shape": list(w.shape), "dtype": p.dtype, **stats})
        if layer is not None and k in kind_pos:
            for s in STATS:
                table[s][layer_pos[layer], kind_pos[k]] = stats[s]
            hist_counts[k][layer_pos[layer]] = hist
        else:
            hist_counts[k][0] = hist
    return WeightStats(rows=rows, kinds=kinds, n_layers=len(layers), table=table, hist_edges=hist_edges,
                       hist_counts=hist_counts, threshold=threshold, skipped=skipped,
                       seconds=time.perf_counter() - start)


# ---------------------------------------------------------------- disk cache


def fingerprint(model: nn.Module) -> str:
    """Names, shapes, dtypes and a few values of every parameter: cheap, and a different seed, dtype
    or checkpoint gives a different key."""
    h = hashlib.sha1(f"v{ENGINE_VERSION}".encode())
    for name, p in model.named_parameters():
        h.update(f"{name}|{tuple(p.shape)}|{p.dtype}".encode())
        if _usable(p):
            flat = p.detach().reshape(-1)
            probe = torch.cat([flat[:64], flat[flat.numel() // 2:flat.numel() // 2 + 64], flat[-64:]])
            h.update(probe.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")[:120] or "model"


def _save(stats: WeightStats, path: Path) -> None:
    # json writes a NaN kurtosis (constant norm weights) as NaN, and reads it back.
    meta = {"rows": stats.rows, "kinds": stats.kinds, "n_layers": stats.n_layers, "threshold": stats.threshold,
            "skipped": stats.skipped, "hist_kinds": list(stats.hist_edges), "seconds": stats.seconds}
    arrays = {f"table/{s}": a for s, a in stats.table.items()}
    for i, k in enumerate(stats.hist_edges):  # kinds contain dots and slashes: index them
        arrays[f"edges/{i}"] = stats.hist_edges[k]
        arrays[f"counts/{i}"] = stats.hist_counts[k]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    with open(tmp, "wb") as f:  # an open file: np.savez would append .npz to a bare path
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def _load(path: Path) -> WeightStats:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        table = {s: z[f"table/{s}"] for s in STATS}
        edges = {k: z[f"edges/{i}"] for i, k in enumerate(meta["hist_kinds"])}
        counts = {k: z[f"counts/{i}"] for i, k in enumerate(meta["hist_kinds"])}
    return WeightStats(rows=meta["rows"], kinds=meta["kinds"], n_layers=meta["n_layers"], table=table,
                       hist_edges=edges, hist_counts=counts, threshold=meta["threshold"],
                       skipped=meta["skipped"], seconds=meta["seconds"], source="disk cache")


def cache_file(model: nn.Module, model_key: str, bins: int = BINS, threshold: float = NEAR_ZERO,
               root: Path | None = None) -> Path:
    if root is None:
        from core.models.loading import cache_root

        root = cache_root() / "weight_stats"
    return root / _safe(model_key) / f"{fingerprint(model)}-b{bins}-t{threshold:g}.npz"


def weight_stats(model: nn.Module, model_key: str | None = None, bins: int = BINS,
                 threshold: float = NEAR_ZERO, cache_dir: Path | None = None) -> WeightStats:
    """`compute_weight_stats`, through a disk cache when `model_key` (a ModelSpec.key) is given."""
    if model_key is None:
        return compute_weight_stats(model, bins, threshold)
    start = time.perf_counter()
    path = cache_file(model, model_key, bins, threshold, cache_dir)
    if path.is_file():
        try:
            stats = _load(path)
            stats.seconds = time.perf_counter() - start
            return stats
        except (OSError, ValueError, KeyError):  # a damaged or older file: recompute below
            pass
    stats = compute_weight_stats(model, bins, threshold)
    try:
        _save(stats, path)
    except OSError:  # a read-only cache folder only costs the next start its speed
        pass
    return stats


# ---------------------------------------------------------------- the CLI's JSON


def _clean(value: Any) -> Any:
    """JSON has no NaN (the kurtosis of a constant norm weight): None instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _stat_dict(row: dict[str, Any]) -> dict[str, Any]:
    return {"shape": row["shape"], "dtype": row["dtype"], **{s: _clean(row[s]) for s in STATS}}


def report(stats: WeightStats, layer: int | None = None, matrix: str | None = None,
           all_parameters: bool = False, histograms: bool = False) -> dict[str, Any]:
    """{"layers": {"0": {"self_attn.q_proj": {frobenius, mean, std, ...}}}, "outside_layers": {...}}.

    Layer matrices are keyed by their module name as in the model; with `all_parameters`, biases and
    norm weights too, keyed by their parameter name inside the layer (`input_layernorm.weight`).
    Raises ValueError for a layer or matrix the model does not have."""
    layers = sorted({r["layer"] for r in stats.rows if r["layer"] is not None})
    if layer is not None and layer not in layers:
        raise ValueError(f"layer {layer} does not exist: this model has layers 0 to {len(layers) - 1}"
                         if layers else f"layer {layer} does not exist: this model has no numbered layers")
    matrices = {module_name(k) for k in stats.matrix_kinds}
    if matrix is not None and matrix not in matrices and matrix not in stats.kinds:
        raise ValueError(f"no matrix {matrix!r} in the layers; choose one of {', '.join(sorted(matrices))}")

    def key(row: dict[str, Any]) -> str | None:
        is_matrix = row["kind"] in stats.matrix_kinds
        if not (is_matrix or all_parameters):
            return None
        return row["module"] if is_matrix else row["kind"]

    out_layers: dict[str, dict[str, Any]] = {}
    outside: dict[str, Any] = {}
    for r in stats.rows:
        if r["layer"] is None:
            if layer is None and matrix is None:
                outside[r["name"]] = _stat_dict(r)
            continue
        k = key(r)
        if k is None or (layer is not None and r["layer"] != layer) or (matrix is not None and matrix not in (k, r["kind"])):
            continue
        out_layers.setdefault(str(r["layer"]), {})[k] = _stat_dict(r)
    result: dict[str, Any] = {
        "n_layers": stats.n_layers,
        "matrix_kinds": [module_name(k) for k in stats.matrix_kinds],
        "near_zero_threshold": stats.threshold,
        "notes": {"std": "population (ddof=0)", "kurtosis": "excess (Fisher): 0 for a normal distribution",
                  "frobenius": "sqrt(sum w^2), the L2 norm of the flattened matrix",
                  "near_zero_share": f"share of weights with |w| < {stats.threshold:g}"},
        "layers": out_layers,
        "outside_layers": outside,
        "skipped": stats.skipped,
        "seconds": round(stats.seconds, 3),
        "source": stats.source,
    }
    if histograms:
        wanted = {r["kind"] for r in stats.rows if r["layer"] is not None and key(r) is not None
                  and (matrix is None or matrix in (key(r), r["kind"]))}
        pos = [layers.index(layer)] if layer is not None else list(range(len(layers)))
        result["histograms"] = {module_name(k) if k in stats.matrix_kinds else k: {
            "edges": stats.hist_edges[k].tolist(),
            "counts": {str(layers[i]): stats.hist_counts[k][i].tolist() for i in pos}} for k in wanted}
    return result
