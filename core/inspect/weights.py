"""Statistics of every weight of a model, aggregated per matrix and per layer, in bounded memory.

One pass over each parameter in flat chunks of `CHUNK` elements (a 233M-element bf16 embedding is never
copied to float32 whole). A bf16 / fp16 parameter is read in its stored dtype: a bincount of its 16-bit
patterns gives every distinct value with its count, and from those every statistic is exact (float64).
A float32 one is read in float32 chunks (moments summed in float64 around a shift). Per parameter:
count, mean, std (population, ddof=0), min, max, max|w|, Frobenius (= L2) norm, excess kurtosis (Fisher:
a normal distribution gives 0), and the share of near-zero weights (|w| < `threshold`). Per *kind* (the
parameter's path inside its layer, e.g. `self_attn.q_proj.weight` or `attn.c_attn.weight`) a histogram
with bins shared by every layer (spanning the bulk, mean ± 6 std; the edge bins also count the tails).

The result is compact: arrays [layers, kinds] and one row per parameter (a few hundred rows), never one
row per weight. It is cached on disk under `cache_root() / "weight_stats"`, keyed by the model spec and
a fingerprint of the weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn

from core.models.dequantize import float_values, int8_scale, quantization_of
from core.models.params import layer_of
from core.runs import atomic_write

CHUNK = 1 << 20  # elements per step: 4 MB of float32, small enough to stay in cache
BINS = 80
NEAR_ZERO = 1e-3
TAIL_SIGMAS = 6.0  # histogram bins span mean ± 6 std; the first and last bins also hold the tails
ENGINE_VERSION = 4  # bump when the statistics change, so old disk caches are ignored
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

    def __init__(self, p: torch.Tensor, scale: torch.Tensor | None = None) -> None:
        self.p, self.scale, self.quant = p, scale, quantization_of(p, scale)
        self.usable = _usable(p) if self.quant is None else p.device.type != "meta"
        self.dtype = f"{self.quant} (dequantized)" if self.quant else str(p.dtype).replace("torch.", "")

    def values(self) -> torch.Tensor:
        return float_values(self.p, self.scale) if self.quant else self.p


def matrix(model: nn.Module, name: str) -> torch.Tensor:
    """One parameter's values by name, dequantized to float32 when the model is 4-bit or 8-bit."""
    values = float_values(model.get_parameter(name), int8_scale(model, name))
    if values is None:
        raise ValueError(f"`{name}` holds no values on this machine (meta device)")
    return values


SAMPLE = 1 << 16  # weights per parameter that place a float32 parameter's histogram bins
CODE_DTYPES = (torch.bfloat16, torch.float16)  # 65,536 possible values: counting bit patterns is exact


def _sample(p: torch.Tensor, size: int = SAMPLE) -> torch.Tensor:
    """An evenly strided sample of about `size` weights, in float64 (the whole tensor when smaller)."""
    flat = p.detach().reshape(-1)
    return flat[:: max(1, flat.numel() // size)].double()


def _sample_moments(p: torch.Tensor, size: int = SAMPLE) -> tuple[float, float]:
    """Mean and std of an evenly strided sample of about `size` weights: only to place histogram bins."""
    sample = _sample(p, size)
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


# ---- 16-bit weights: one bincount of the bit patterns per chunk, everything else exact from the counts


def value_counts(p: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(values float64 [k], counts int64 [k]) of the distinct values of a bf16 / fp16 tensor, in one
    pass: a bincount of the raw 16-bit patterns per chunk (bit pattern -> value is exact). Non-finite
    patterns are dropped (a trained weight has none)."""
    counts = torch.zeros(1 << 16, dtype=torch.int64, device=p.device)
    for chunk in _chunks(p):
        # uint16 -> int32 is one op on the CPU; CUDA lacks uint16 casts, so mask the sign-extended int16.
        bits = (chunk.view(torch.uint16).to(torch.int32) if p.device.type == "cpu"
                else chunk.view(torch.int16).to(torch.int32) & 0xFFFF)
        counts += torch.bincount(bits, minlength=1 << 16)
    counts = counts.cpu()
    present = torch.nonzero(counts).squeeze(1)
    values = present.to(torch.int32).to(torch.uint16).view(p.dtype).double()
    keep = torch.isfinite(values)
    return values[keep].numpy(), counts[present][keep].numpy()


def _stats_of_counts(values: np.ndarray, counts: np.ndarray, threshold: float) -> dict[str, float]:
    """The statistics of a multiset given as distinct values and their counts, in float64."""
    n = int(counts.sum())
    w = counts.astype(np.float64)
    mean = float(w @ values) / n
    d = values - mean
    d2 = d * d
    m2, m4 = float(w @ d2) / n, float(w @ (d2 * d2)) / n
    lo, hi = float(values.min()), float(values.max())
    return {"count": n, "mean": mean, "std": math.sqrt(m2), "min": lo, "max": hi,
            "max_abs": max(abs(lo), abs(hi)), "frobenius": math.sqrt(float(w @ (values * values))),
            "kurtosis": m4 / (m2 * m2) - 3.0 if m2 > 0 else math.nan,
            "near_zero_share": int(counts[np.abs(values) < threshold].sum()) / n}


def _rebin(values: np.ndarray, counts: np.ndarray, edges: tuple[float, float, int]) -> np.ndarray:
    """Counts per bin of [lo, hi] in `bins` equal bins (the edge bins also hold the tails), as histc bins."""
    lo, hi, bins = edges
    idx = np.floor((np.clip(values, lo, hi) - lo) * (bins / (hi - lo))).astype(np.int64)
    return np.bincount(np.clip(idx, 0, bins - 1), weights=counts, minlength=bins).round().astype(np.int64)


# ---- other float weights (float32, dequantized 4-/8-bit): one pass of float32 chunks


def _float_pass(p: torch.Tensor, edges: tuple[float, float, int] | None,
                threshold: float) -> tuple[dict[str, float], np.ndarray | None]:
    """Moments summed around a shift close to the mean (the first chunk's mean), so that tensors far from
    zero with a tiny spread (norm weights) keep their precision; chunk sums add up in float64. The
    histogram bins by index (as torch.histc) with one bincount per chunk."""
    n = p.numel()
    shift = float(next(_chunks(p)).float().mean())
    s1 = s2 = s3 = s4 = 0.0
    near = 0
    lo, hi = math.inf, -math.inf
    hist = torch.zeros(edges[2], dtype=torch.int64) if edges else None
    for chunk in _chunks(p):
        x = chunk.float()
        a, b = torch.aminmax(x)
        lo, hi = min(lo, float(a)), max(hi, float(b))
        d = x - shift
        d2 = d * d
        s1 += float(d.sum())
        s2 += float(d2.sum())
        s3 += float(torch.dot(d2, d))
        s4 += float(torch.dot(d2, d2))
        near += int(torch.count_nonzero(x.abs() < threshold))
        if hist is not None:
            e0, e1, bins = edges
            idx = ((x.clamp(e0, e1) - e0) * (bins / (e1 - e0))).to(torch.int32).clamp_(0, bins - 1)
            hist += torch.bincount(idx, minlength=bins).cpu()
    mu = s1 / n  # mean of d; central moments from the raw moments of d
    e2, e3, e4 = s2 / n, s3 / n, s4 / n
    m2 = max(e2 - mu * mu, 0.0)
    m4 = e4 - 4 * mu * e3 + 6 * mu * mu * e2 - 3 * mu ** 4
    sum_sq = s2 + 2 * shift * s1 + n * shift * shift  # sum of w^2 = sum of (d + shift)^2
    stats = {"count": n, "mean": shift + mu, "std": math.sqrt(m2), "min": lo, "max": hi,
             "max_abs": max(abs(lo), abs(hi)), "frobenius": math.sqrt(max(sum_sq, 0.0)),
             "kurtosis": m4 / (m2 * m2) - 3.0 if m2 > 0 and m2 * m2 > 0 else math.nan,
             "near_zero_share": near / n}
    return stats, (hist.numpy() if hist is not None else None)


def tensor_stats(p: torch.Tensor, edges: tuple[float, float, int] | None = None, threshold: float = NEAR_ZERO,
                 value_range: tuple[float, float] | None = None) -> tuple[dict[str, float], np.ndarray | None]:
    """Statistics of one tensor (any shape, any float dtype) and its histogram over `edges`
    = (lo, hi, bins), in one pass of CHUNK elements. A bf16 / fp16 tensor is counted by bit pattern
    (`value_counts`: exact, in its stored dtype); any other is read in float32 chunks (`_float_pass`).
    `value_range` is accepted for older callers and unused (min and max come from the same pass)."""
    if p.dtype in CODE_DTYPES:
        values, counts = value_counts(p)
        return _stats_of_counts(values, counts, threshold), (_rebin(values, counts, edges) if edges else None)
    return _float_pass(p, edges, threshold)


# ---------------------------------------------------------------- the whole model


@torch.no_grad()
def compute_weight_stats(model: nn.Module, bins: int = BINS, threshold: float = NEAR_ZERO,
                         progress: Callable[[int, int], None] | None = None) -> WeightStats:
    """One pass over each parameter (tied parameters once). The histogram bins are shared by all layers
    of a kind, so they are fixed before the histograms are counted: a 16-bit parameter is counted by
    value in its pass (exact statistics; the histogram is a re-binning of those counts, no second pass);
    a float32 one places its bins from a strided sample and then makes its one pass.
    `progress(done, total)` is called after each parameter."""
    with one_thread():
        return _compute(model, bins, threshold, progress or (lambda done, total: None))


def _compute(model: nn.Module, bins: int, threshold: float, progress: Callable[[int, int], None]) -> WeightStats:
    start = time.perf_counter()
    # int8_scale: an 8-bit layer that has run keeps its scales on the module, not the weight (issue 20)
    params = [(name, _Values(p, int8_scale(model, name))) for name, p in model.named_parameters()]
    skipped = [name for name, p in params if not p.usable]
    params = [(name, p) for name, p in params if p.usable]
    counted: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # 16-bit parameter -> its distinct values, counts
    exact: dict[str, dict[str, float]] = {}
    scans: dict[str, list] = {}  # kind -> [min, max, [means], [stds]] over its layers: the bins
    for name, p in params:
        w = p.values()
        if w.dtype in CODE_DTYPES:
            counted[name] = value_counts(w)
            s = exact[name] = _stats_of_counts(*counted[name], threshold)
            lo, hi, mean, std = s["min"], s["max"], s["mean"], s["std"]
            progress(len(counted), len(params))
        else:
            sample = _sample(w)
            lo, hi, mean, std = float(sample.min()), float(sample.max()), float(sample.mean()), float(sample.std(unbiased=False))
        scan = scans.setdefault(kind_of(name), [math.inf, -math.inf, [], []])
        scan[0], scan[1] = min(scan[0], lo), max(scan[1], hi)
        scan[2].append(mean)
        scan[3].append(std)
    hist_edges = {k: np.linspace(*hist_range(*scan), bins + 1) for k, scan in scans.items()}

    layers = sorted({layer_of(name) for name, _ in params} - {None})
    layer_pos = {layer: i for i, layer in enumerate(layers)}
    kinds = list(dict.fromkeys(kind_of(name) for name, _ in params if layer_of(name) is not None))
    kind_pos = {k: i for i, k in enumerate(kinds)}
    table = {s: np.full((len(layers), len(kinds)), np.nan) for s in STATS}
    hist_counts = {k: np.zeros((len(layers) if k in kind_pos else 1, bins), dtype=np.int64) for k in hist_edges}
    rows = []
    done = len(counted)
    for name, p in params:
        k, layer = kind_of(name), layer_of(name)
        edges = (float(hist_edges[k][0]), float(hist_edges[k][-1]), bins)
        if name in counted:
            stats, hist = exact[name], _rebin(*counted.pop(name), edges)
            shape = list(p.p.shape)
        else:  # a quantized weight is dequantized a second time here (one at a time, never all at once)
            w = p.values()
            stats, hist = _float_pass(w, edges, threshold)
            shape = list(w.shape)
            done += 1
            progress(done, len(params))
        rows.append({"name": name, "layer": layer, "kind": k, "module": module_name(k),
                     "shape": shape, "dtype": p.dtype, **stats})
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
    # safetensors, not .npz: numpy parses an .npz header with Python's parser (ast), which CPython 3.11 does not
    # make safe for two threads at once, and this runs in the background survey while Streamlit compiles pages
    # ("SystemError: AST constructor recursion depth mismatch"). json writes a NaN kurtosis as NaN and reads it.
    from safetensors.numpy import save

    meta = {"rows": stats.rows, "kinds": stats.kinds, "n_layers": stats.n_layers, "threshold": stats.threshold,
            "skipped": stats.skipped, "hist_kinds": list(stats.hist_edges), "seconds": stats.seconds}
    arrays = {f"table/{s}": np.ascontiguousarray(a) for s, a in stats.table.items()}
    for i, k in enumerate(stats.hist_edges):  # kinds contain dots and slashes: index them
        arrays[f"edges/{i}"] = np.ascontiguousarray(stats.hist_edges[k])
        arrays[f"counts/{i}"] = np.ascontiguousarray(stats.hist_counts[k])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, save(arrays, metadata={"meta": json.dumps(meta)}))  # a reader never sees half a file


def _load(path: Path) -> WeightStats:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as z:
        meta = json.loads(z.metadata()["meta"])
        table = {s: z.get_tensor(f"table/{s}") for s in STATS}
        edges = {k: z.get_tensor(f"edges/{i}") for i, k in enumerate(meta["hist_kinds"])}
        counts = {k: z.get_tensor(f"counts/{i}") for i, k in enumerate(meta["hist_kinds"])}
    return WeightStats(rows=meta["rows"], kinds=meta["kinds"], n_layers=meta["n_layers"], table=table,
                       hist_edges=edges, hist_counts=counts, threshold=meta["threshold"],
                       skipped=meta["skipped"], seconds=meta["seconds"], source="disk cache")


def cache_file(model: nn.Module, model_key: str, bins: int = BINS, threshold: float = NEAR_ZERO,
               root: Path | None = None) -> Path:
    if root is None:
        from core.models.loading import cache_root

        root = cache_root() / "weight_stats"
    return root / _safe(model_key) / f"{fingerprint(model)}-b{bins}-t{threshold:g}.safetensors"


def weight_stats(model: nn.Module, model_key: str | None = None, bins: int = BINS,
                 threshold: float = NEAR_ZERO, cache_dir: Path | None = None,
                 progress: Callable[[int, int], None] | None = None) -> WeightStats:
    """`compute_weight_stats`, through a disk cache when `model_key` (a ModelSpec.key) is given."""
    if model_key is None:
        return compute_weight_stats(model, bins, threshold, progress)
    start = time.perf_counter()
    path = cache_file(model, model_key, bins, threshold, cache_dir)
    if path.is_file():
        try:
            stats = _load(path)
            stats.seconds = time.perf_counter() - start
            return stats
        except (OSError, ValueError, KeyError, SafetensorError):  # a damaged or older file: recompute below
            pass
    stats = compute_weight_stats(model, bins, threshold, progress)
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
